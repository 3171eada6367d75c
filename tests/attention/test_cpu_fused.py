"""Backends "cpu_bf16" and "cpu_f32" (the C kernel) against an independent float64 reference.

The reference (test_flash.reference_probs) is written from the definition and shares no code with
the kernel. Inputs are rounded to the tested dtype first, so the reference on the same values is
exact; for bfloat16 the tolerances are the kernel's rounding bounds, derived below element by
element; for float32 they are test_flash's (a few ulps per accumulated term). Mask convention:
True = may attend; causal bottom-right aligned. Skipped where the CPU lacks the instructions
(AVX-512 BF16 / AVX-512F) or there is no C compiler.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from references import reference_probs
from references import rounding_tolerance as _tolerance

import selfattn
from selfattn.attention import cpu_kernel
from selfattn.attention.cpu_fused import AUTO_MIN_QUERIES, cpu_bf16_attention, cpu_bf16_supports, cpu_f32_attention
from selfattn.attention.spec import validate_call

UNAVAILABLE = {v: cpu_kernel.unavailable_reason(v) for v in ("bf16", "f32")}  # never compiles
needs_kernel = pytest.mark.skipif(UNAVAILABLE["bf16"] is not None, reason=str(UNAVAILABLE["bf16"]))
needs_f32 = pytest.mark.skipif(UNAVAILABLE["f32"] is not None, reason=str(UNAVAILABLE["f32"]))
U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
SLACK = 1.05  # float32 sums and the exp polynomial (~1e-6 relative) on top of the bf16 roundings


def _inputs(b, h, g, n, m, d, e, seed, pad_keys, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen).to(dtype)
    k = torch.randn(b, g, m, d, generator=gen).to(dtype)
    v = torch.randn(b, g, m, e, generator=gen).to(dtype)
    do = torch.randn(b, h, n, e, generator=gen).to(dtype)
    pad = (torch.rand(b, 1, 1, m, generator=gen) > 0.3) if pad_keys else None
    return q, k, v, do, pad


def check_against_reference(q, k, v, do, *, pad=None, causal=False, window=None, scale=None, slopes=None):
    """Compare output and gradients with the float64 reference within the derived bounds.

    Output o = Σ p v / Σ p: the kernel rounds p to bf16 before p·v (error ≤ u·(P|V|)) and rounds o
    (u·|o|). Backward: P is recomputed in float32 and rounded (u) before dV = Pᵀ dO; dS = P (dP − Δ)
    inherits Δ = Σ dO·O's error from the rounded o (≤ u·Σ|dO|(P|V| + |o|) = u·Δabs) and is rounded (u)
    before dQ = dS K·scale and dK = dSᵀ Q·scale; each gradient is rounded to bf16 at the end (u).
    """
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, _ = cpu_bf16_attention(qg, kg, vg, mask=pad, causal=causal, window=window, scale=scale,
                                alibi_slopes=slopes)
    dq, dk, dv = torch.autograd.grad(out, (qg, kg, vg), do)

    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    p, vr = reference_probs(q64, k64, v64, pad=pad, causal=causal, window=window, scale=scale,
                            slopes=slopes)
    ref = p @ vr  # (b, h, n, e)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    p, vr, ref = p.detach(), vr.detach(), ref.detach()
    r = q.shape[1] // k.shape[1]
    sc = q.shape[-1] ** -0.5 if scale is None else scale

    def per_kv_head(x):  # (b, h, ...) summed over the query heads sharing a kv head -> (b, g, ...)
        return x.view(x.shape[0], -1, r, *x.shape[2:]).sum(2)

    pv_abs = p @ vr.abs()  # (b, h, n, e)
    out_bound = U * (pv_abs + ref.abs())
    dp = do.double() @ vr.transpose(-2, -1)  # (b, h, n, m)
    delta = (do.double() * ref).sum(-1, keepdim=True)  # (b, h, n, 1)
    delta_abs = (do.double().abs() * (pv_abs + ref.abs())).sum(-1, keepdim=True)
    ds = p * (dp - delta) * sc  # (b, h, n, m)
    ds_err = sc * p * U * delta_abs + U * ds.abs()
    k_rep = k.double().abs().repeat_interleave(r, 1)  # (b, h, m, d)
    bounds = {
        "out": (out, ref, out_bound),
        "dq": (dq, rq, ds_err @ k_rep + U * rq.abs()),
        "dk": (dk, rk, per_kv_head(ds_err.transpose(-2, -1) @ q.double().abs()) + U * rk.abs()),
        "dv": (dv, rv, per_kv_head(U * p.transpose(-2, -1) @ do.double().abs()) + U * rv.abs()),
    }
    for name, (got, want, bound) in bounds.items():
        assert got.dtype == torch.bfloat16 and got.shape == want.shape, name
        assert torch.isfinite(got).all(), name
        excess = (got.double() - want).abs() - SLACK * bound - 1e-30
        assert excess.max() <= 0, f"{name}: worst excess {excess.max().item():.3g} over the bound"


shapes = st.fixed_dictionaries({
    "b": st.integers(1, 2), "g": st.integers(1, 2), "r": st.sampled_from([1, 3]),
    "n": st.integers(1, 150), "m": st.integers(1, 150), "d": st.sampled_from([16, 40, 64]),
    "e": st.sampled_from([8, 64, 80]), "seed": st.integers(0, 2**16), "causal": st.booleans(),
    "pad": st.booleans(), "window": st.sampled_from([None, (5, 3), (40, None), (None, 0), (0, 0)]),
    "scale": st.sampled_from([None, 0.3]), "alibi": st.booleans(),
})


@needs_kernel
@settings(max_examples=30, deadline=None)
@given(c=shapes)
def test_matches_reference_within_rounding_bounds(c):
    q, k, v, do, pad = _inputs(c["b"], c["g"] * c["r"], c["g"], c["n"], c["m"], c["d"], c["e"],
                               c["seed"], c["pad"])
    slopes = 2.0 ** -torch.arange(1, q.shape[1] + 1, dtype=torch.float32) if c["alibi"] else None
    check_against_reference(q, k, v, do, pad=pad, causal=c["causal"], window=c["window"],
                            scale=c["scale"], slopes=slopes)


def check_f32_against_reference(q, k, v, do, *, pad=None, causal=False, window=None, scale=None,
                                slopes=None):
    """float32: within test_flash's bound (a few ulps per term of the longest sum), like "flash"."""
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, _ = cpu_f32_attention(qg, kg, vg, mask=pad, causal=causal, window=window, scale=scale,
                               alibi_slopes=slopes)
    grads = torch.autograd.grad(out, (qg, kg, vg), do)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    p, vr = reference_probs(q64, k64, v64, pad=pad, causal=causal, window=window, scale=scale,
                            slopes=slopes)
    ref = p @ vr
    refs = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    n, m, d = q.shape[2], k.shape[2], q.shape[3]
    tol = _tolerance(torch.float32, m, d)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.detach(), atol=tol, rtol=tol)
    gtol = tol * (1 + n / max(1, m)) * 4  # gradients sum over up to n*m products
    for name, a, r in zip("qkv", grads, refs):
        torch.testing.assert_close(a.double(), r, atol=gtol, rtol=gtol, msg=f"grad {name}")


@needs_f32
@settings(max_examples=20, deadline=None)
@given(c=shapes)
def test_f32_matches_reference(c):
    q, k, v, do, pad = _inputs(c["b"], c["g"] * c["r"], c["g"], c["n"], c["m"], c["d"], c["e"],
                               c["seed"], c["pad"], dtype=torch.float32)
    slopes = 2.0 ** -torch.arange(1, q.shape[1] + 1, dtype=torch.float32) if c["alibi"] else None
    check_f32_against_reference(q, k, v, do, pad=pad, causal=c["causal"], window=c["window"],
                                scale=c["scale"], slopes=slopes)


@needs_kernel
def test_long_causal_gqa_crossing_many_blocks():
    q, k, v, do, _ = _inputs(1, 4, 2, 333, 333, 64, 64, seed=7, pad_keys=False)
    check_against_reference(q, k, v, do, causal=True)
    check_against_reference(q[:, :, :100], k, v, do[:, :, :100], causal=True)  # Nq < Nk: decoding a suffix
    if UNAVAILABLE["f32"] is None:
        q, k, v, do = (t.float() for t in (q, k, v, do))
        check_f32_against_reference(q, k, v, do, causal=True, window=(100, None))


@needs_kernel
def test_fully_masked_rows_give_zero_and_zero_gradients():
    q, k, v, do, _ = _inputs(1, 2, 2, 70, 9, 64, 64, seed=1, pad_keys=False)
    nothing = torch.zeros(1, 1, 1, 9, dtype=torch.bool)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out, _ = cpu_bf16_attention(qg, kg, vg, mask=nothing)
    assert torch.equal(out, torch.zeros_like(out))
    out.backward(do)
    for t in (qg, kg, vg):
        assert torch.equal(t.grad, torch.zeros_like(t.grad))
    # causal with Nq > Nk: the first Nq - Nk queries see no key (bottom-right alignment)
    out, _ = cpu_bf16_attention(q, k, v, causal=True)
    assert torch.equal(out[:, :, :61], torch.zeros_like(out[:, :, :61]))
    check_against_reference(q, k, v, do, causal=True)


@needs_kernel
def test_auto_picks_the_kernel_for_bfloat16_and_says_why_not_for_short_queries():
    q, k, v, _, _ = _inputs(1, 2, 2, AUTO_MIN_QUERIES, AUTO_MIN_QUERIES, 64, 64, seed=0, pad_keys=False)
    assert selfattn.explain_backend(q, k, v, causal=True).chosen == "cpu_bf16"
    assert selfattn.explain_backend(q, k, v, window=(16, 0)).chosen == "cpu_bf16"
    step = selfattn.explain_backend(q[:, :, -1:], k, v, causal=True)  # one decoding step
    assert step.chosen != "cpu_bf16" and "queries" in step.reasons["cpu_bf16"]
    f32 = selfattn.explain_backend(q.float(), k.float(), v.float())
    assert "only for bfloat16" in f32.reasons["cpu_bf16"]
    slopes = torch.tensor([0.5, 0.25])  # ALiBi is computed in the kernel: no n x m bias
    assert selfattn.explain_backend(q, k, v, alibi_slopes=slopes).chosen == "cpu_bf16"
    seg = torch.zeros(1, AUTO_MIN_QUERIES, dtype=torch.long)  # segment ids: native, so the kernel serves them
    assert selfattn.explain_backend(q, k, v, causal=True, segment_ids=(seg, seg)).chosen == "cpu_bf16"
    general = torch.ones(1, 1, AUTO_MIN_QUERIES, AUTO_MIN_QUERIES, dtype=torch.bool)  # served, but measured slower
    for mask in (general, torch.zeros(1, 2, AUTO_MIN_QUERIES, AUTO_MIN_QUERIES)):
        choice = selfattn.explain_backend(q, k, v, mask=mask)
        assert choice.chosen != "cpu_bf16" and "measured slower" in choice.reasons["cpu_bf16"]
        assert cpu_bf16_supports(validate_call(q, k, v, mask=mask, causal=False, scale=None, dropout_p=0.0,
                                               window=None, alibi_slopes=None, return_weights=False)) is None


@needs_f32
def test_auto_policy_for_float32():
    n = 1024
    q = torch.empty(1, 2, n, 64)  # explain_backend only inspects shapes
    plain = selfattn.explain_backend(q, q, q)
    assert plain.chosen == "torch" and "mask-free float32 forward" in plain.reasons["cpu_f32"]
    assert selfattn.explain_backend(q, q, q, causal=True).chosen == "cpu_f32"
    assert selfattn.explain_backend(q.requires_grad_(), q, q).chosen == "cpu_f32"  # with gradients
    pad = torch.ones(1, 1, 1, n, dtype=torch.bool)
    with torch.no_grad():
        assert selfattn.explain_backend(q, q, q, mask=pad).chosen == "cpu_f32"
        big = torch.empty(1, 1, 4096, 64)
        assert selfattn.explain_backend(big, big, big).chosen == "cpu_f32"


def test_unavailable_kernel_is_declined_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFATTN_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="no C compiler 'no-such-cc'"):
        cpu_kernel.build("bf16", cc="no-such-cc")
    for variant, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        if UNAVAILABLE[variant] is not None:  # a CPU without the instructions: auto never picks it
            q = torch.randn(1, 2, 256, 64).to(dtype)
            choice = selfattn.explain_backend(q, q, q, causal=True)
            name = f"cpu_{variant}"
            assert choice.chosen != name and choice.reasons[name] == UNAVAILABLE[variant]


@needs_kernel
def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFATTN_CACHE", str(tmp_path))
    path = cpu_kernel.build("bf16")
    assert path.parent.parent == tmp_path and path.stat().st_size > 0  # <cache>/<configuration>/flash_cpu.so
    mtime = path.stat().st_mtime_ns
    assert cpu_kernel.build("bf16") == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    assert sorted(p.name for p in path.parent.iterdir()) == ["build.lock", path.name]  # no temporary left
