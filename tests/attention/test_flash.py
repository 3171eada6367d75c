"""Backend "flash" against an independent float64 reference: outputs and gradients, O(N) memory.

The reference is written here from the definition (explicit n x m scores in float64, every mask
built from positions), not the math backend, so the two share no code. Mask convention:
True = may attend; causal bottom-right aligned.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from references import reference_probs
from references import rounding_tolerance as _tolerance

import selfattn
from selfattn.attention.flash import FlashConfig, flash_attention


def reference(q, k, v, **kw):
    """float64 softmax attention; rows with no allowed key give 0."""
    p, v = reference_probs(q, k, v, **kw)
    return p @ v


def _case(draw_dtype, b, h, g, n, m, d, e, seed, with_pad):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen, dtype=draw_dtype)
    k = torch.randn(b, g, m, d, generator=gen, dtype=draw_dtype)
    v = torch.randn(b, g, m, e, generator=gen, dtype=draw_dtype)
    pad = (torch.rand(b, 1, 1, m, generator=gen) > 0.3) if with_pad else None
    return q, k, v, pad


shapes = st.fixed_dictionaries({
    "b": st.integers(1, 2), "g": st.integers(1, 2), "r": st.sampled_from([1, 2]),
    "n": st.integers(1, 19), "m": st.integers(1, 19), "d": st.sampled_from([4, 8]),
    "e": st.sampled_from([3, 8]), "seed": st.integers(0, 2**16),
    "causal": st.booleans(), "pad": st.booleans(),
    "window": st.sampled_from([None, (2, 1), (3, None), (None, 0), (0, 0)]),
    "alibi": st.booleans(), "bq": st.sampled_from([3, 4, 8]), "bk": st.sampled_from([2, 5, 16]),
})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=25, deadline=None)
@given(c=shapes)
def test_flash_matches_reference_outputs_and_gradients(dtype, c):
    h = c["g"] * c["r"]
    q, k, v, pad = _case(dtype, c["b"], h, c["g"], c["n"], c["m"], c["d"], c["e"], c["seed"], c["pad"])
    slopes = torch.rand(h, dtype=dtype) * 0.5 if c["alibi"] else None
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    cfg = FlashConfig(block_q=c["bq"], block_k=c["bk"])
    out, _ = flash_attention(q, k, v, mask=pad, causal=c["causal"], window=c["window"],
                             alibi_slopes=slopes, config=cfg)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference(q64, k64, v64, pad=pad, causal=c["causal"], window=c["window"], slopes=slopes)
    tol = _tolerance(dtype, c["m"], c["d"])
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    go = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, (q, k, v), go.to(dtype))
    refs = torch.autograd.grad(ref, (q64, k64, v64), go)
    for name, a, r in zip("qkv", grads, refs):
        assert torch.isfinite(a).all(), name
        # gradients sum over up to n*m products: the bound grows with both lengths
        gtol = tol * (1 + c["n"] / max(1, c["m"])) * 4
        torch.testing.assert_close(a.double(), r, atol=gtol, rtol=gtol, msg=f"grad {name}")


def test_fully_masked_rows_are_zero_with_zero_gradients():
    q = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 9, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 9, 4, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(1, 1, 1, 9, dtype=torch.bool)  # no key may be attended
    out, _ = flash_attention(q, k, v, mask=pad, causal=True, config=FlashConfig(4, 4))
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.equal(t.grad, torch.zeros_like(t.grad))
    # causal with Nq > Nk: the first Nq - Nk queries see no key (bottom-right alignment)
    out, _ = flash_attention(q[:, :, :6], k[:, :, :3], v[:, :, :3], causal=True)
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    torch.testing.assert_close(out, reference(q[:, :, :6], k[:, :, :3], v[:, :, :3], causal=True))


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(1, 2, 10, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(1, 2, 10, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    pad = torch.tensor([True] * 8 + [False] * 2).view(1, 1, 1, 10)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)

    def f(q, k, v):
        return flash_attention(q, k, v, mask=pad, causal=True, window=(4, None), alibi_slopes=slopes,
                               scale=0.7, config=FlashConfig(3, 4))[0]

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_bfloat16_within_rounding_of_reference():
    q, k, v, pad = _case(torch.float32, 1, 4, 2, 70, 90, 16, 16, 3, True)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out, _ = flash_attention(qb, kb, vb, mask=pad, causal=True, config=FlashConfig(16, 32))
    ref = reference(qb, kb, vb, pad=pad, causal=True)  # exact on the rounded inputs
    eps = torch.finfo(torch.bfloat16).eps  # only the final rounding of the output is bf16
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=2 * eps * ref.abs().max().item(), rtol=2 * eps)


def test_saves_no_n_by_m_tensor_for_backward():
    """The autograd graph holds only O(N) tensors: q, k, v, output, log-sum-exp, masks."""
    n = m = 256
    q = torch.randn(1, 2, n, 8, requires_grad=True)
    k = torch.randn(1, 2, m, 8, requires_grad=True)
    v = torch.randn(1, 2, m, 8, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = flash_attention(q, k, v, causal=True, mask=torch.ones(1, 1, 1, m, dtype=torch.bool),
                                 config=FlashConfig(32, 32))
    assert sizes, "the hook saw nothing: the test would not detect anything"
    assert max(sizes) < n * m, f"a saved tensor has {max(sizes)} >= n*m = {n * m} elements"
    # the math backend's graph, by contrast, does save the (b, h, n, m) weights
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selfattn.attention(q, k, v, causal=True, backend="math")
    assert max(sizes) >= n * m


def test_declines_what_it_cannot_do():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="flash"):
        selfattn.attention(q, q, q, dropout_p=0.1, backend="flash")
    with pytest.raises(ValueError, match="weights"):
        selfattn.attention(q, q, q, return_weights=True, backend="flash")
    with pytest.raises(ValueError, match="additive mask requires a gradient"):
        selfattn.attention(q, q, q, mask=torch.zeros(8, 8, requires_grad=True), backend="flash")


def test_block_skipping_makes_windows_cheap():
    """A window hides most key blocks: count the score blocks the forward actually forms."""
    fl = importlib.import_module("selfattn.attention.flash")  # selfattn.attention is the function

    calls = []
    orig = fl._scores

    def counting(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    q = torch.randn(1, 1, 256, 4)
    fl._scores = counting
    try:
        flash_attention(q, q, q, config=FlashConfig(32, 32))
        full = len(calls)
        calls.clear()
        flash_attention(q, q, q, causal=True, config=FlashConfig(32, 32))
        causal = len(calls)
        calls.clear()
        flash_attention(q, q, q, causal=True, window=(31, 0), config=FlashConfig(32, 32))
        windowed = len(calls)
    finally:
        fl._scores = orig
    assert full == 64 and causal == 8 * 9 // 2 and windowed == 8 + 7
    assert math.isclose(causal / full, 36 / 64)
