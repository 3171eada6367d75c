"""The registry decides once per call signature: the cached decision equals the uncached walk over
many kinds of calls, depends on the signature only (never on tensor values), is forgotten whenever
the registry changes, and a backend that turns out unavailable at run time hands "auto" to the next.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import selfattn
from selfattn.attention import BACKENDS, Backend, math_attention
from selfattn.attention.registry import BackendUnavailable
from selfattn.attention.spec import validate_call


def _call_kinds():
    """(q, k, v, kwargs) over dtypes, lengths around every backend's thresholds, masks and flags."""
    lengths = [(1, 1), (1, 128), (7, 7), (63, 64), (64, 64), (200, 333), (1024, 1024), (2048, 2048)]
    for (n, m), dtype, mask_kind, flags in itertools.product(
            lengths, (torch.float32, torch.bfloat16, torch.float64, torch.float16),
            ("none", "padding", "general", "float"),
            ({}, {"causal": True}, {"window": (16, 0)}, {"alibi": True}, {"grad": True}, {"return_weights": True},
             {"dropout_p": 0.1})):
        q, k = torch.empty(1, 4, n, 64, dtype=dtype), torch.empty(1, 2, m, 64, dtype=dtype)
        mask = {"none": None, "padding": torch.ones(1, 1, 1, m, dtype=torch.bool),
                "general": torch.ones(n, m, dtype=torch.bool), "float": torch.zeros(n, m)}[mask_kind]
        kw = dict(flags)
        if kw.pop("alibi", False):
            kw["alibi_slopes"] = torch.ones(4)
        if kw.pop("grad", False):
            q = q.requires_grad_()
        yield q, k, k, dict(mask=mask, **kw)


def _validate(q, k, v, kw):
    full = dict(mask=None, causal=False, scale=None, dropout_p=0.0, window=None, alibi_slopes=None,
                return_weights=False)
    return validate_call(q, k, v, **{**full, **kw})


def test_cached_decision_equals_the_uncached_walk_over_many_call_kinds():
    BACKENDS.forget_decisions()
    kinds, signatures, chosen = 0, set(), set()
    for q, k, v, kw in _call_kinds():
        call = _validate(q, k, v, kw)
        fresh = BACKENDS.explain(call, "auto").chosen
        misses = BACKENDS.misses
        assert BACKENDS.decide(call, "auto") == fresh, (call, fresh)
        assert BACKENDS.misses == misses + (call not in signatures)  # decided once per signature
        hits = BACKENDS.hits
        assert BACKENDS.decide(call, "auto") == fresh and BACKENDS.hits == hits + 1
        kinds, chosen = kinds + 1, chosen | {fresh}
        signatures.add(call)
    assert kinds == 8 * 4 * 4 * 7 and len(signatures) > 700 and {"math", "torch", "flash"} <= chosen


def test_the_decision_depends_on_the_signature_only():
    """Values never enter the decision: the cache keys hold no tensors, and one signature with zeros,
    random values, NaN or inf is decided once."""
    BACKENDS.forget_decisions()
    shape = (1, 8, 1, 64), (1, 8, 128, 64)
    fills = [torch.zeros, torch.randn, lambda *s: torch.full(s, float("nan")), lambda *s: torch.full(s, float("inf"))]
    misses = BACKENDS.misses
    for fill in fills:
        q, k = fill(*shape[0]), fill(*shape[1])
        selfattn.attention(q, k, k, causal=True)
    assert BACKENDS.misses == misses + 1 and len(BACKENDS._decisions) == 1
    (call, backend), = BACKENDS._decisions
    assert backend == "auto" and not any(isinstance(getattr(call, f), torch.Tensor) for f in call.__dataclass_fields__)


def _spy(calls):
    def fn(q, k, v, **kw):
        calls.append(q.shape)
        return math_attention(q, k, v, **kw)
    return fn


def test_decisions_are_forgotten_when_the_registry_changes():
    q = torch.randn(1, 2, 5, 8)
    before = selfattn.explain_backend(q, q, q).chosen
    assert selfattn.attention(q, q, q) is not None
    calls = []
    names = set(BACKENDS)
    with BACKENDS.temporarily(add=(Backend("spy-dispatch", _spy(calls), lambda call: None, priority=10**6),)):
        selfattn.attention(q, q, q)
        assert calls == [q.shape] and BACKENDS.decide(_validate(q, q, q, {}), "auto") == "spy-dispatch"
    assert set(BACKENDS) == names and BACKENDS.decide(_validate(q, q, q, {}), "auto") == before
    with pytest.raises(RuntimeError, match="boom"), BACKENDS.temporarily(remove=("math",)):
        assert "math" not in BACKENDS
        raise RuntimeError("boom")
    assert set(BACKENDS) == names  # restored after an exception too


def test_explicit_backend_errors_stay_clear_when_cached():
    q = torch.randn(1, 2, 5, 8)
    for _ in range(2):
        with pytest.raises(ValueError, match="backend 'flash' cannot serve this call: .*weights"):
            selfattn.attention(q, q, q, backend="flash", return_weights=True)
        with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
            selfattn.attention(q, q, q, backend="nope")


def test_a_backend_unavailable_at_run_time_hands_auto_to_the_next():
    state = {"broken": None}

    def flaky(q, k, v, **kw):
        state["broken"] = "its library failed to load (test)"
        raise BackendUnavailable(state["broken"])

    flaky_backend = Backend("flaky", flaky, lambda call: state["broken"], priority=10**6)
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    with BACKENDS.temporarily(add=(flaky_backend,)):
        out = selfattn.attention(q, q, q, causal=True)
        torch.testing.assert_close(out, selfattn.attention(q, q, q, causal=True, backend="math"), rtol=1e-12,
                                   atol=1e-12)
        assert selfattn.explain_backend(q, q, q).reasons["flaky"] == state["broken"]
        with pytest.raises(BackendUnavailable):
            state["broken"] = None
            selfattn.attention(q, q, q, backend="flaky")  # named explicitly: the error, no silent switch


def test_a_single_causal_query_is_decided_as_not_causal():
    """Bottom-right causal lets one query attend every key: the call (and every backend's choice) is not causal;
    with a window the rule still limits the keys, so the call stays causal."""
    q, k = torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 6, 8)
    kw = dict(mask=None, scale=None, dropout_p=0.0, alibi_slopes=None, return_weights=False)
    assert not validate_call(q, k, k, causal=True, window=None, **kw).causal
    assert validate_call(q, k, k, causal=True, window=(2, 0), **kw).causal
    assert validate_call(torch.zeros(2, 4, 2, 8), k, k, causal=True, window=None, **kw).causal
