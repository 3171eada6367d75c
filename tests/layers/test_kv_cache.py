"""KVCache: in-place buffers equal concatenation, and the remembered max |x| bounds never hide a NaN.

References: the cache's contents are compared with torch.cat / index_select of the same rows (what the cache
did before it had buffers); decoding with it is compared with the uncached forward elsewhere
(tests/generation). The guard bounds are compared with a fresh min/max pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from selfattn.attention import attention, guards
from selfattn.layers.attention import MultiHeadAttention
from selfattn.layers.kv_cache import MIN_CAPACITY, KVCache


def _steps(b: int = 6, g: int = 2, d: int = 4, steps: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        n = 3 if i == 0 else 1  # a prompt, then one position a step
        yield torch.randn(b, g, n, d, generator=gen, dtype=torch.float64), \
            torch.randn(b, g, n, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("reorder", [False, True])
def test_buffers_equal_concatenation_through_growth_and_reorders(reorder):
    """40 steps (the buffer grows past MIN_CAPACITY twice) with a row selection every step that also shrinks
    the batch (inputs leaving beam search): the views equal cat/index_select of the same rows exactly."""
    gen = torch.Generator().manual_seed(1)
    cache, ref_k, ref_v = KVCache(), None, None
    with torch.no_grad():
        for k, v in _steps():
            if ref_k is not None and k.shape[0] != ref_k.shape[0]:
                k, v = k[: ref_k.shape[0]], v[: ref_k.shape[0]]
            got_k, got_v = cache.append(k, v)
            ref_k = k if ref_k is None else torch.cat([ref_k, k], dim=2)
            ref_v = v if ref_v is None else torch.cat([ref_v, v], dim=2)
            assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
            if reorder:
                b = ref_k.shape[0]
                index = torch.randint(0, b, (max(1, b - int(torch.rand(1, generator=gen) < 0.1)),), generator=gen)
                cache.reorder(index)
                ref_k, ref_v = ref_k.index_select(0, index), ref_v.index_select(0, index)
                assert torch.equal(cache.k, ref_k) and torch.equal(cache.v, ref_v)
    assert cache._bufs is not None and cache._bufs[0].shape[2] > MIN_CAPACITY  # the in-place path ran and grew
    assert cache.length == ref_k.shape[2] == 42


def test_with_gradients_the_cache_concatenates_and_backward_works():
    """In grad mode no buffer is written in place (a saved k would change under backward): gradients flow."""
    mha = MultiHeadAttention(8, 2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    cache = KVCache()
    outs = [mha(x[:, i : i + 1], cache=cache, causal=True)[0] for i in range(5)]
    assert cache._bufs is None
    full = mha(x, causal=True)[0]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-12, atol=1e-12)
    torch.cat(outs, dim=1).sum().backward()
    g_cached = x.grad.clone()
    x.grad = None
    full.sum().backward()
    torch.testing.assert_close(g_cached, x.grad, rtol=1e-12, atol=1e-12)


def test_a_nan_appended_to_the_cache_reaches_attention_per_the_rule():
    """The remembered bound is NaN after a NaN row: the next call is not served by the fast path on a stale
    'finite' answer. The output equals the reference on the same tensors (NaN exactly in the rows that
    attend the NaN key's value)."""
    gen = torch.Generator().manual_seed(0)
    cache = KVCache()
    q = torch.randn(2, 2, 1, 4, generator=gen)
    with torch.no_grad():
        cache.append(torch.randn(2, 2, 3, 4, generator=gen), torch.randn(2, 2, 3, 4, generator=gen))
        v_new = torch.randn(2, 2, 1, 4, generator=gen)
        v_new[1, 0, 0, 2] = math.nan
        k, v = cache.append(torch.randn(2, 2, 1, 4, generator=gen), v_new)
        assert math.isnan(guards.known_max_abs(v) if guards.can_remember(v) else guards.max_abs(v))
        for backend in ("torch", "batched", "math"):
            out = attention(q, k, v, backend=backend)
            ref = attention(q, k.clone(), v.clone(), backend="math")
            torch.testing.assert_close(out, ref, equal_nan=True)
            assert torch.isnan(out[1, 0, 0, 2]) and torch.isfinite(out[0]).all() and torch.isfinite(out[1, 1]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed", "large"])
@pytest.mark.parametrize("special", [None, "nan", "inf", "-inf", "nan_and_inf"])
def test_max_abs_is_the_float64_max_of_abs(dtype, layout, special):
    """The measuring pass against brute force (float64 |x|.max()): every dtype and layout, NaN wins over an
    infinity wherever it sits, -inf counts as inf; an empty tensor is 0."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(*((300, 1100) if layout == "large" else (9, 40)), generator=gen, dtype=torch.float64) * 50
    t = {"strided": lambda x: x[:, ::3], "transposed": lambda x: x.t()}.get(layout, lambda x: x)(base.to(dtype))
    put = {"nan": [math.nan], "inf": [math.inf], "-inf": [-math.inf], "nan_and_inf": [math.inf, math.nan]}
    for j, value in enumerate(put.get(special, [])):  # NaN placed after the inf, near the end of the data
        t[-1 - j, -2] = value
    want = t.double().abs().max().item()
    got = guards.max_abs(t, exact=True)
    assert (math.isnan(got) and math.isnan(want)) or got == want
    assert guards.max_abs(t[:0]) == 0.0


def test_remembered_bound_goes_stale_on_an_in_place_write():
    t = torch.randn(64, 128)
    guards.remember_max_abs(t, guards.max_abs(t))
    assert guards.known_max_abs(t) == guards.max_abs(t, exact=True)
    t[3, 5] = math.inf
    assert guards.known_max_abs(t) is None  # the version counter moved: the bound is not used
    assert not guards.all_finite(t)
    u = t.clone()
    del t
    assert guards.known_max_abs(u) is None  # a new tensor (maybe at a reused id) has no bound


def test_a_decoding_step_measures_only_the_new_rows(monkeypatch):
    """The guards' min/max pass sees one step's rows, never the whole cached history or the encoder's
    cross-attention keys again: the point of remembering (decoding spent ~14% of its time re-measuring)."""
    mha_self, mha_cross = MultiHeadAttention(64, 4), MultiHeadAttention(64, 4)
    b, src_len = 16, 30
    memory = torch.randn(b, src_len, 64)
    self_cache, cross_cache = KVCache(), KVCache()
    measured: list[tuple[int, ...]] = []
    real = guards._measure
    monkeypatch.setattr(guards, "_measure", lambda t: measured.append(tuple(t.shape)) or real(t))
    with torch.no_grad():
        for step in range(12):
            measured.clear()
            x = torch.randn(b, 1, 64)
            y, _ = mha_self(x, cache=self_cache, causal=True)
            mha_cross(y, memory, cache=cross_cache)
            seen = [s for s in measured if math.prod(s) >= 4096]  # smaller tensors are measured every time
            if step > 0:
                assert all(s[2] == 1 for s in seen), f"step {step} re-measured {seen}"
    assert self_cache.length == 12 and cross_cache.length == src_len


def test_the_output_check_is_skipped_only_where_a_remembered_bound_proves_it_finite():
    """torch backend: the sum over the output is skipped for a boolean/no mask when v's remembered bound is
    below half its dtype's max (a convex combination of v's rows cannot overflow); never for an additive bias,
    an unknown bound or values near the top of the range."""
    from selfattn.attention.torch_backend import _surely_finite

    v = torch.randn(8, 4, 64, 16)
    assert not _surely_finite(v, None, None)  # nothing remembered
    guards.remember_max_abs(v, guards.max_abs(v))
    pad = torch.ones(8, 1, 1, 64, dtype=torch.bool)
    assert _surely_finite(v, None, None) and _surely_finite(v, pad, None)
    assert not _surely_finite(v, torch.zeros(8, 1, 1, 64), None)  # an additive bias can overflow the logits
    assert not _surely_finite(v, None, torch.ones(4))  # ALiBi is an additive bias too
    huge = torch.full((8, 4, 64, 16), torch.finfo(torch.float32).max * 0.75)
    guards.remember_max_abs(huge, guards.max_abs(huge))
    assert not _surely_finite(huge, None, None)
    out = attention(torch.randn(8, 4, 1, 16), torch.randn(8, 4, 64, 16), huge, mask=pad, backend="torch")
    torch.testing.assert_close(out, huge[:, :, :1], rtol=1e-6, atol=0)  # the mean of equal rows is that row
