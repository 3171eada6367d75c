"""Backend "batched": short sequences with many (batch x head) problems — batched matmuls, float32 softmax.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask: boolean True = may attend, or a floating additive bias. ``causal`` is bottom-right aligned
(query i may attend key j when j <= i + m - n). Rows that may attend no key give output 0 and a zero
gradient (never NaN). Softmax statistics are float32 (float64 for float64 inputs), as in "math".

Why: a training step of a translation model attends 10-60 tokens in b x h = 1,000+ independent problems.
There the fused kernels (SDPA's CPU flash kernel, the C kernel) spend their time on per-problem setup and
partly filled blocks, while three batched matmuls over all problems at once run at matmul speed (this is
also what ``nn.MultiheadAttention``'s training path does). The scores (b, h, n, m) are materialised, so
this is for short sequences only; "auto" uses it below measured sizes (``AUTO_MAX_LEN``).

The forward and backward are written out in one ``autograd.Function`` (the backward recomputes nothing and
keeps only the float32 weights), rather than autograd through masked_fill/amax/exp/div as in "math":

    forward   s = q kᵀ·scale + bias,  p = softmax(s) (dead rows 0),  o = p v
    backward  dv = pᵀ do,  dp = do vᵀ,  ds = p ⊙ (dp − rowsum(p ⊙ dp)),  dq = ds k·scale,  dk = dsᵀ q·scale

On a CPU without bf16 units (AVX2 only) bf16 matmuls are slow (see ``torch_f32.py``), so there bf16/fp16
inputs are multiplied in float32 and the output rounded back; with AVX-512 BF16 or AMX they stay bf16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .cpu_kernel import cpu_has_bf16_units
from .guards import all_finite, bias_is_finite, empty_result, is_empty, logits_may_overflow
from .math_backend import dead_rows_if_any, math_attention, score_bias_and_mask
from .spec import AttentionCall

# The measured policy (benchmarks/results/attention_training_shapes.md: d 32, b*h 256-1024, no mask / causal /
# key padding, AVX-512 BF16 EPYC, 1 thread). Longest sequence (max of queries, keys) "auto" sends here:
# bf16 with gradients: 3-15x faster than SDPA (whose bf16 CPU backward is slow) and 2-8x faster than the C
# kernel up to 32; even with the C kernel at 64; the C kernel 2-3x faster from 128 on.
AUTO_MAX_LEN = {"bf16_backward": 64, "bf16_forward": 32, "f32": 32}
# float32 (SDPA's float32 backward is fast): ahead only at <= 32 with many problems; SDPA wins below.
AUTO_F32_MIN_PROBLEMS = 512


def _compute_dtype(x: Tensor) -> torch.dtype:
    low = x.dtype in (torch.bfloat16, torch.float16)
    if low and x.device.type == "cpu" and not cpu_has_bf16_units():
        return torch.float32
    return x.dtype


class BatchedAttention(torch.autograd.Function):
    """q (b, h, n, d), k (b, h, m, d), v (b, h, m, e) with kv heads already repeated."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, allowed: Tensor | None,
                dead: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
        out, p = _forward(q, k, v, bias, allowed, dead, scale)
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return out, p

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, _d_p: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, None, None, None, None]:
        q, k, v, p = ctx.saved_tensors
        d_out = d_out.to(v.dtype)
        dv = torch.matmul(p.to(v.dtype).transpose(-2, -1), d_out)  # (b, h, m, e)
        dp = torch.matmul(d_out.to(p.dtype), v.to(p.dtype).transpose(-2, -1))  # (b, h, n, m), float32 like s
        ds = p * (dp - (p * dp).sum(dim=-1, keepdim=True))  # softmax backward, float32
        ds = ds.mul_(ctx.scale).to(q.dtype)
        dq = torch.matmul(ds, k)  # (b, h, n, d)
        dk = torch.matmul(ds.transpose(-2, -1), q)  # (b, h, m, d)
        return dq, dk, dv, None, None, None, None


def _forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, allowed: Tensor | None, dead: Tensor | None,
             scale: float) -> tuple[Tensor, Tensor]:
    """The forward of :class:`BatchedAttention`: (out (b, h, n, e), float32 weights p (b, h, n, m))."""
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    # scores in float32 from the (exact) float32 products of bf16/fp16 inputs, as the C kernel's dot products:
    # a bf16-rounded q·kᵀ would cost ~1e-2 relative error in the softmax (the "peaked scores")
    s = torch.matmul(q.to(stat), k.to(stat).transpose(-2, -1)).mul_(scale)  # (b, h, n, m)
    if bias is not None:
        s = s.add_(bias.to(stat))
    if allowed is not None:
        s = s.masked_fill_(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)  # (b, h, n, m); a dead row is NaN here ...
    if dead is not None:
        p = p.masked_fill_(dead, 0.0)  # ... and 0 from here on
    return torch.matmul(p.to(v.dtype), v), p  # (b, h, n, e)


def batched_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None,
    return_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Exact attention by batched matmuls. Returns ``(out (b, h, n, e), weights (b, h, n, m) or None)``."""
    if is_empty(q, k):
        return empty_result(q, k, v), None
    if logits_may_overflow(q, k) or not all_finite(v) or not bias_is_finite(mask):
        # a NaN/inf in q or k, overflowing logits, a NaN/inf in v or a NaN/+inf bias: the rule lives in the
        # reference (math_backend); logits_may_overflow is true for every NaN/inf in q or k
        return math_attention(q, k, v, mask=mask, causal=causal, scale=scale, window=window,
                              alibi_slopes=alibi_slopes, return_weights=return_weights)
    b, h, n, d = q.shape
    m = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    groups = h // k.shape[1]
    bias, allowed = score_bias_and_mask(
        n, m, mask=mask, causal=causal, window=window, alibi_slopes=alibi_slopes, device=q.device,
        dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
    )
    dead = dead_rows_if_any(bias, allowed)  # (.., n, 1) or None
    cd = _compute_dtype(q)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    if groups > 1:  # each kv head serves `groups` query heads; the gradient sums back through the expand
        kc = kc[:, :, None].expand(b, k.shape[1], groups, m, d).reshape(b, h, m, d)  # (b, h, m, d)
        vc = vc[:, :, None].expand(b, k.shape[1], groups, m, v.shape[-1]).reshape(b, h, m, v.shape[-1])
    if torch.is_grad_enabled() and any(t.requires_grad for t in (qc, kc, vc)):
        out, p = BatchedAttention.apply(qc, kc, vc, bias, allowed, dead, scale)  # type: ignore[no-untyped-call]
    else:  # no gradient (decoding): the same forward without autograd's bookkeeping (~60 us a call)
        out, p = _forward(qc, kc, vc, bias, allowed, dead, scale)
    return out.to(q.dtype), (p.to(q.dtype) if return_weights else None)


def batched_supports(call: AttentionCall) -> str | None:
    if call.dropout_p > 0:
        return "no dropout on the attention weights (the model default is 0; 'math' and 'torch' serve it)"
    if call.mask_requires_grad:
        return "the additive mask needs a gradient; 'math' computes it"
    if call.alibi_requires_grad:
        return "the ALiBi slopes need a gradient; 'math' computes it"
    return None


def batched_auto_declines(call: AttentionCall) -> str | None:
    why = batched_supports(call)
    if why is not None:
        return why
    if call.device_type != "cpu":
        return "measured on CPUs only; GPU calls go to the fused kernels"
    if call.return_weights:
        return "weights requested: 'math', the reference, returns them (named explicitly, this backend does too)"
    low = call.dtype in (torch.bfloat16, torch.float16) and cpu_has_bf16_units()  # else float32 matmuls
    key = ("bf16_backward" if call.requires_grad else "bf16_forward") if low else "f32"
    longest = max(call.q_len, call.k_len)
    if longest > AUTO_MAX_LEN[key]:
        return (f"{call.q_len} queries x {call.k_len} keys: beyond {AUTO_MAX_LEN[key]} ({key}) the fused kernels "
                "beat materialised (b, h, n, m) scores (measured, benchmarks/attention_training_shapes.py)")
    problems = call.batch * call.q_heads
    if not low and problems < AUTO_F32_MIN_PROBLEMS:
        return (f"float32 matmuls, {problems} (batch x head) problems: SDPA is as fast below "
                f"{AUTO_F32_MIN_PROBLEMS} (measured, benchmarks/attention_training_shapes.py)")
    return None


__all__ = ["AUTO_F32_MIN_PROBLEMS", "AUTO_MAX_LEN", "BatchedAttention", "batched_attention", "batched_auto_declines",
           "batched_supports"]
