"""selfattn.attention against an independent float64 reference, gradcheck, and the error messages.

The reference below builds the allowed-key matrix with Python loops straight from the definitions
(bottom-right causal, windows, masks) and uses torch.softmax on float64 rows — nothing shared with
the library code except torch itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import selfattn
from selfattn.attention import BACKENDS

CPU_BACKENDS = ["math", "torch", "batched"]


def reference(q, k, v, *, mask=None, causal=False, scale=None, window=None, alibi_slopes=None):
    """Attention by definition, float64, loops for the structure. Returns (out, weights)."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, n, d = q.shape
    g, m = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    allowed = torch.ones(b, h, n, m, dtype=torch.bool)
    bias = torch.zeros(b, h, n, m, dtype=torch.float64)
    if mask is not None:
        mb = mask.expand(b, h, n, m) if mask.dim() == 4 else mask.expand(b, h, n, m)
        if mask.dtype == torch.bool:
            allowed &= mb
        else:
            bias += mb.double()
    for i in range(n):
        pos = i + (m - n)
        for j in range(m):
            if causal and j > pos:
                allowed[:, :, i, j] = False
            if window is not None:
                left, right = window
                if left is not None and j < pos - left:
                    allowed[:, :, i, j] = False
                if right is not None and j > pos + right:
                    allowed[:, :, i, j] = False
            if alibi_slopes is not None:
                bias[:, :, i, j] -= alibi_slopes.double() * abs(pos - j)
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    weights = torch.zeros(b, h, n, m, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // g)  # query head hi reads kv head hi // group
            s = q[bi, hi] @ k[bi, kv].T * scale + bias[bi, hi]  # (n, m)
            s = s.masked_fill(~allowed[bi, hi], float("-inf"))
            for i in range(n):
                if torch.isfinite(s[i]).any():
                    weights[bi, hi, i] = torch.softmax(s[i], dim=-1)
            out[bi, hi] = weights[bi, hi] @ v[bi, kv]
    return out, weights


def make_qkv(b=2, h=4, g=2, n=5, m=7, d=8, e=6, dtype=torch.float64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen, dtype=dtype)
    k = torch.randn(b, g, m, d, generator=gen, dtype=dtype)
    v = torch.randn(b, g, m, e, generator=gen, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def mask_cases(b=2, h=4, n=5, m=7):
    gen = torch.Generator().manual_seed(1)
    full = torch.rand(b, h, n, m, generator=gen) > 0.4
    full[0, 1, 2] = False  # a fully masked row
    pad = torch.ones(b, 1, 1, m, dtype=torch.bool)
    pad[-1, ..., -3:] = False  # key padding
    bias = torch.randn(b, 1, n, m, generator=gen, dtype=torch.float64)
    bias[-1, 0, min(3, n - 1)] = float("-inf")  # a row forbidden by the bias alone
    return {
        "none": dict(),
        "bool-full": dict(mask=full),
        "key-padding": dict(mask=pad),
        "float-bias": dict(mask=bias),
        "causal": dict(causal=True),
        "causal+padding": dict(mask=pad, causal=True),
        "causal+bias": dict(mask=bias, causal=True),
        "window": dict(window=(2, 1)),
        "causal+window": dict(causal=True, window=(2, None)),
        "alibi": dict(alibi_slopes=selfattn.positional.alibi_slopes(h).double()),
        "scale": dict(scale=0.3, causal=True),
    }


SHAPES = {
    "mha n<m": dict(h=4, g=4, n=5, m=7),
    "gqa n>m": dict(h=4, g=2, n=7, m=5),  # causal: the first two queries see no key
    "mqa n=m": dict(h=4, g=1, n=6, m=6),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", mask_cases())
def test_matches_float64_reference(backend, shape, case):
    s = SHAPES[shape]
    q, k, v = make_qkv(h=s["h"], g=s["g"], n=s["n"], m=s["m"])
    kwargs = mask_cases(h=s["h"], n=s["n"], m=s["m"])[case]
    out = selfattn.attention(q, k, v, backend=backend, **kwargs)
    ref, ref_w = reference(q, k, v, **kwargs)
    assert not out.isnan().any()
    # float64 throughout: differences are rounding only (a few ulps times the reduction length).
    tol = 64 * torch.finfo(torch.float64).eps * s["m"]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    if BACKENDS[backend].supports is not None and backend == "math":
        _, w = selfattn.attention(q, k, v, backend=backend, return_weights=True, **kwargs)
        torch.testing.assert_close(w, ref_w, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["bool-full", "float-bias", "causal+padding", "causal+window", "alibi"])
def test_gradcheck_float64(backend, case):
    q, k, v = make_qkv(b=1, h=4, g=2, n=4, m=5, d=3, e=2, requires_grad=True)
    kwargs = mask_cases(b=1, h=4, n=4, m=5)[case]
    fn = lambda q, k, v: selfattn.attention(q, k, v, backend=backend, **kwargs)
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fully_masked_rows_give_zero_and_finite_grads(backend):
    q, k, v = make_qkv(n=4, m=4, requires_grad=True)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = False  # query 1 of batch 0 may attend nothing
    out = selfattn.attention(q, k, v, mask=mask, backend=backend)
    assert torch.equal(out[0, :, 1], torch.zeros_like(out[0, :, 1]))
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[0, :, 1], torch.zeros_like(q.grad[0, :, 1]))
    # And SDPA itself would have produced NaN there: the guard is doing real work.
    raw = torch.nn.functional.scaled_dot_product_attention(
        q.detach(), k.detach().repeat_interleave(2, 1), v.detach().repeat_interleave(2, 1), attn_mask=mask
    )
    assert raw[0, :, 1].isnan().all() or torch.equal(raw[0, :, 1], torch.zeros_like(raw[0, :, 1]))


def test_math_weights_zero_on_dead_rows_and_rows_sum_to_one():
    q, k, v = make_qkv(n=7, m=5)
    _, w = selfattn.attention(q, k, v, causal=True, backend="math", return_weights=True)
    # bottom-right causal with n=7 > m=5: queries 0, 1 see no key
    assert torch.equal(w[:, :, :2], torch.zeros_like(w[:, :, :2]))
    torch.testing.assert_close(w[:, :, 2:].sum(-1), torch.ones_like(w[:, :, 2:].sum(-1)))


def _err(dtype, backend, q, k, v, kwargs, ref):
    out = selfattn.attention(q.to(dtype), k.to(dtype), v.to(dtype), backend=backend, **kwargs)
    return (out.double() - ref).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["none", "causal+padding", "float-bias", "window"])
def test_backends_agree_low_precision(dtype, case):
    """Tolerance derived from the inputs' rounding: the error of the float64 reference run on
    inputs rounded to ``dtype`` with outputs rounded once more, times a small factor for
    reordered accumulation. Every backend must stay within it."""
    q, k, v = make_qkv(b=2, h=4, g=2, n=33, m=47, d=32, e=32, seed=3)
    kwargs = mask_cases(h=4, n=33, m=47)[case]
    if "mask" in kwargs and kwargs["mask"].dtype == torch.float64:
        kwargs["mask"] = kwargs["mask"].float()
    ref, _ = reference(q, k, v, **kwargs)
    q32, k32, v32 = (t.to(dtype) for t in (q, k, v))
    ref_rounded, _ = reference(q32, k32, v32, **kwargs)
    eps = torch.finfo(dtype).eps
    # inputs rounding + one output rounding + accumulation over d and m terms in dtype
    bound = (ref - ref_rounded).abs().max().item() + ref.abs().max().item() * eps * (2 + math.sqrt(47 + 32))
    for backend in CPU_BACKENDS:
        assert _err(dtype, backend, q, k, v, kwargs, ref) <= bound, backend


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2), g=st.integers(1, 3), groups=st.integers(1, 3), n=st.integers(1, 9),
    m=st.integers(1, 9), d=st.sampled_from([1, 4, 8]), causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "bool", "float", "padding"]), seed=st.integers(0, 2**16),
)
def test_property_backends_equal_reference(b, g, groups, n, m, d, causal, mask_kind, seed):
    h = g * groups
    q, k, v = make_qkv(b=b, h=h, g=g, n=n, m=m, d=d, e=d, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(b, 1, n, m, generator=gen) > 0.5
    elif mask_kind == "padding":
        mask = torch.rand(b, 1, 1, m, generator=gen) > 0.3
    elif mask_kind == "float":
        mask = torch.randn(1, h, n, m, generator=gen, dtype=torch.float64)
    ref, ref_w = reference(q, k, v, mask=mask, causal=causal)
    tol = 64 * torch.finfo(torch.float64).eps * m
    for backend in CPU_BACKENDS:
        out = selfattn.attention(q, k, v, mask=mask, causal=causal, backend=backend)
        assert out.shape == (b, h, n, d)
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    _, w = selfattn.attention(q, k, v, mask=mask, causal=causal, backend="math", return_weights=True)
    torch.testing.assert_close(w, ref_w, rtol=tol, atol=tol)


def test_dropout_is_applied_in_training_and_scaled():
    q, k, v = make_qkv(b=1, h=1, g=1, n=64, m=64, d=8, e=8, dtype=torch.float32)
    torch.manual_seed(0)
    out = selfattn.attention(q, k, v, dropout_p=0.5, backend="math")
    ref = selfattn.attention(q, k, v, backend="math")
    assert not torch.allclose(out, ref)
    # inverted dropout keeps the expectation: average of many draws approaches the undropped output
    mean = torch.stack([selfattn.attention(q, k, v, dropout_p=0.5, backend="math") for _ in range(200)]).mean(0)
    assert (mean - ref).abs().mean() < 0.1 * ref.abs().mean() + 0.05


def test_explain_backend_reasons():
    q, k, v = make_qkv(dtype=torch.float32)
    choice = selfattn.explain_backend(q, k, v, return_weights=True)
    assert choice.chosen == "math"
    assert "weights" in choice.reasons["torch"]
    assert selfattn.explain_backend(q, k, v).chosen != "math"
    assert "backend:" in str(choice)


def test_auto_equals_named_backend():
    q, k, v = make_qkv(dtype=torch.float32)
    chosen = selfattn.explain_backend(q, k, v, causal=True).chosen
    torch.testing.assert_close(
        selfattn.attention(q, k, v, causal=True), selfattn.attention(q, k, v, causal=True, backend=chosen)
    )


ERRORS = [
    (lambda q, k, v: selfattn.attention(q[0], k, v), "rank 4"),
    (lambda q, k, v: selfattn.attention(q, k[:1], v[:1]), "batch sizes differ"),
    (lambda q, k, v: selfattn.attention(q, k[..., :3], v), "head dim of k"),
    (lambda q, k, v: selfattn.attention(q, k.float(), v), "one dtype"),
    (lambda q, k, v: selfattn.attention(q[:, :3], k, v), "multiple of key/value heads"),
    (lambda q, k, v: selfattn.attention(q, k, v[:, :, :3]), "k and v must agree"),
    (lambda q, k, v: selfattn.attention(q, k, v, mask=torch.ones(3, 3, dtype=torch.bool)), "does not broadcast"),
    (lambda q, k, v: selfattn.attention(q, k, v, mask=torch.ones(3, 1, 5, 7, dtype=torch.bool)),
     "does not broadcast"),  # batch 3 against 2
    (lambda q, k, v: selfattn.attention(q, k, v, mask=torch.ones(1, 2, 1, 1, 7, dtype=torch.bool)),
     "does not broadcast"),  # rank 5
    (lambda q, k, v: selfattn.attention(q, k, v, mask=torch.ones(2, 4, 5, 1, dtype=torch.bool)[:, :2]),
     "does not broadcast"),  # 2 heads against 4
    (lambda q, k, v: selfattn.attention(q, k, v, mask=torch.ones(5, 7, dtype=torch.int64)), "boolean"),
    (lambda q, k, v: selfattn.attention(q, k, v, dropout_p=1.0), "dropout_p"),
    (lambda q, k, v: selfattn.attention(q, k, v, dropout_p=-0.1), "dropout_p"),
    (lambda q, k, v: selfattn.attention(q, k, v, backend="nope"), "unknown attention backend"),
    (lambda q, k, v: selfattn.attention(q, k, v, backend="torch", return_weights=True), "cannot serve"),
    (lambda q, k, v: selfattn.attention(q, k, v, scale=-1.0), "scale"),
    (lambda q, k, v: selfattn.attention(q, k, v, window=(-1, 2)), "window"),
    (lambda q, k, v: selfattn.attention(q, k, v, alibi_slopes=torch.ones(3)), "alibi_slopes"),
]


@pytest.mark.parametrize("fn,message", ERRORS, ids=[m for _, m in ERRORS])
def test_errors_name_expected_and_given(fn, message):
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=message):
        fn(q, k, v)


def test_error_message_contents():
    q, k, v = make_qkv()
    with pytest.raises(ValueError) as e:
        selfattn.attention(q, k, v, mask=torch.ones(3, 3, dtype=torch.bool))
    assert "(3, 3)" in str(e.value) and "(2, 4, 5, 7)" in str(e.value)
    with pytest.raises(ValueError) as e:
        selfattn.attention(q[:, :3], k, v)
    assert "Hq=3" in str(e.value) and "Hkv=2" in str(e.value)


def rounding_bound(ref, ref_rounded, dtype, m, d):
    """Error allowed for a low-precision backend: the float64 result's own change when inputs are
    rounded to ``dtype``, plus one output rounding and sqrt(m + d)-growth accumulation in ``dtype``."""
    eps = torch.finfo(dtype).eps
    return (ref - ref_rounded).abs().max().item() + ref.abs().max().item() * eps * (2 + math.sqrt(m + d))


@settings(max_examples=20, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.bfloat16]), g=st.integers(1, 2), groups=st.integers(1, 3),
    n=st.integers(1, 40), m=st.integers(1, 40), d=st.sampled_from([8, 16, 64]), causal=st.booleans(),
    padded=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_low_precision_within_derived_bound(dtype, g, groups, n, m, d, causal, padded, seed):
    h = g * groups
    q, k, v = make_qkv(b=1, h=h, g=g, n=n, m=m, d=d, e=d, seed=seed)
    mask = None
    if padded:
        mask = torch.rand(1, 1, 1, m, generator=torch.Generator().manual_seed(seed)) > 0.3
    ref, _ = reference(q, k, v, mask=mask, causal=causal)
    lo = [t.to(dtype) for t in (q, k, v)]
    ref_rounded, _ = reference(*lo, mask=mask, causal=causal)
    bound = rounding_bound(ref, ref_rounded, dtype, m, d)
    for backend in CPU_BACKENDS:
        out = selfattn.attention(*lo, mask=mask, causal=causal, backend=backend)
        assert out.dtype == dtype and not out.isnan().any()
        assert (out.double() - ref).abs().max().item() <= bound, backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_queries_and_keys(backend):
    q, k, v = make_qkv(n=0, m=4, dtype=torch.float32)
    assert selfattn.attention(q, k, v, backend=backend).shape == (2, 4, 0, 6)
    q, k, v = make_qkv(n=3, m=0, dtype=torch.float32)
    out = selfattn.attention(q, k, v, backend=backend)
    assert torch.equal(out, torch.zeros(2, 4, 3, 6))
