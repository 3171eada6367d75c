"""Shared checks of backend "triton" against the math backend in float64 (no Triton import here).

Used by ``triton_interp_cases.py`` (interpreter, CPU) and ``test_triton.py`` (CUDA, when present).
Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask convention: True = may attend; causal and windows bottom-right aligned.

Tolerances are derived, as in test_attention.py: the float64 reference's own change when its
inputs are rounded to the tested dtype, plus one output rounding and a sqrt(reduction length)
growth of accumulation error in that dtype. Gradients: see ``grad_bound`` — their sums cancel,
so the size of their terms is measured by the absolute-value gradients (``abs_grads``).
"""

from __future__ import annotations

import math

import torch

import selfattn
from selfattn.attention.math_backend import math_attention, repeat_kv


def make(b, h, g, n, m, d, e, seed, device="cpu"):
    """Random float64 q, k, v and an upstream gradient dO, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)  # (b, h, n, d)
    k = torch.randn(b, g, m, d, generator=gen, dtype=torch.float64)  # (b, g, m, d)
    v = torch.randn(b, g, m, e, generator=gen, dtype=torch.float64)  # (b, g, m, e)
    do = torch.randn(b, h, n, e, generator=gen, dtype=torch.float64)  # (b, h, n, e)
    return tuple(t.to(device) for t in (q, k, v, do))


def run(backend, q, k, v, do, kwargs):
    """Output and (dq, dk, dv) of one backend, in the inputs' dtype."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if backend == "math":
        out, _ = math_attention(*leaves, **kwargs)
    else:
        out = selfattn.attention(*leaves, backend=backend, **kwargs)
    out.backward(do)
    return out.detach(), [t.grad for t in leaves]


def bound(ref: torch.Tensor, ref_rounded: torch.Tensor, dtype, terms: int) -> float:
    """Output: rounding of the inputs + one output rounding + sqrt(terms) accumulation growth."""
    eps = torch.finfo(dtype).eps
    return (ref - ref_rounded).abs().max().item() + ref.abs().max().item() * eps * (2 + math.sqrt(terms))


def grad_bound(ref: torch.Tensor, ref_rounded: torch.Tensor, dtype, terms: int, magnitude: float) -> float:
    """Gradients: rounding of the inputs (and dO) + one rounding of the stored gradient, + three
    ``dtype`` roundings inside the kernel, each at most eps·|A||B| = eps·``magnitude`` (P or dS cast
    for the second dot, O inside delta = rowsum(dO·O), the score tile), + accumulation in float32
    (the kernel's tl.dot accumulator) over ``terms`` summands of size ``magnitude``."""
    eps, eps32 = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    return ((ref - ref_rounded).abs().max().item() + eps * (ref.abs().max().item() + 3 * magnitude)
            + eps32 * (2 + math.sqrt(terms)) * magnitude)


def check(dtype, b, h, g, n, m, d, e, kwargs, seed=0, device="cpu"):
    """Backend "triton" in ``dtype`` against the math backend in float64: output and gradients."""
    q, k, v, do = make(b, h, g, n, m, d, e, seed, device)
    kwargs = {key: val.to(device) if torch.is_tensor(val) else val for key, val in kwargs.items()}
    ref, ref_grads = run("math", q, k, v, do, kwargs)  # float64 reference
    low = [t.to(dtype) for t in (q, k, v, do)]
    ref_r, ref_r_grads = run("math", *(t.double() for t in low), kwargs)  # reference of rounded inputs
    out, grads = run("triton", *low, kwargs)
    assert out.dtype == dtype and not out.isnan().any()
    err = (out.double() - ref).abs().max().item()
    assert err <= bound(ref, ref_r, dtype, m + d), f"output error {err:.3g}"
    terms = n * (h // g) + m + d + e
    for name, gr, rg, rrg, mag in zip("qkv", grads, ref_grads, ref_r_grads, abs_grads(q, k, v, do, kwargs)):
        assert gr.dtype == dtype and not gr.isnan().any(), name
        gerr = (gr.double() - rg).abs().max().item()
        assert gerr <= grad_bound(rg, rrg, dtype, terms, mag.max().item()), f"d{name} error {gerr:.3g}"


def abs_grads(q, k, v, do, kwargs):
    """The gradient sums with every term replaced by its absolute value (float64): the |A||B|
    magnitude of the classic rounding bound (Higham, 2002), needed because dS = P (dP - delta)
    cancels (e.g. with one key, dq = 0 exactly but its terms do not vanish)."""
    b, h, n, _ = q.shape
    g = k.shape[1]
    out, p = math_attention(q, k, v, return_weights=True, **kwargs)  # (b, h, n, e), (b, h, n, m)
    ka, va = repeat_kv(k.abs(), h // g), repeat_kv(v.abs(), h // g)  # (b, h, m, d), (b, h, m, e)
    dsa = p * (do.abs() @ va.transpose(-2, -1) + (do.abs() * out.abs()).sum(-1, keepdim=True))
    scale = kwargs.get("scale", q.shape[-1] ** -0.5)
    fold = lambda t: t.reshape(b, g, h // g, *t.shape[2:]).sum(2)
    dq = scale * dsa @ ka  # (b, h, n, d)
    dk = fold(scale * dsa.transpose(-2, -1) @ q.abs())  # (b, g, m, d)
    dv = fold(p.transpose(-2, -1) @ do.abs())  # (b, g, m, e)
    return dq, dk, dv


def pad_mask(b, m, seed, p_keep=0.7):
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.rand(b, 1, 1, m, generator=gen) < p_keep  # (b, 1, 1, m), True = may attend
