"""Backends "cpu_bf16" and "cpu_f32": fused exact attention in one C kernel on x86 CPUs with AVX-512.

The kernel (``csrc/flash_cpu.c``, laid out and called by :mod:`.cpu_layout`) is FlashAttention's forward
(online softmax, Dao et al. 2022) and FlashAttention-2's backward, recomputing each score block from the saved
log-sum-exp: O(N) memory forward and backward beyond the mask itself. "cpu_bf16" runs the q·kᵀ and p·v products
on the AVX-512 BF16 dot-product units (bf16 products, float32 sums); "cpu_f32" on float32 FMAs. Softmax
statistics and accumulators are float32 in both. This module registers the kernel as PyTorch custom operators
and holds the backends' entry points, what they serve and when "auto" picks them.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask convention: boolean True = may attend. Served without an n x m tensor: key padding (B|1, 1, 1, Nk),
segment ids (``q_seg (b, n)``, ``k_seg (b, m)``: query i may attend key j only when their ids are equal),
``causal`` (bottom-right aligned: query i may attend key j when j <= i + m - n), ``window`` and ALiBi slopes.
Any other boolean mask or additive float mask broadcastable to (B, H, Nq, Nk) is read in place at its own
strides. Block pairs that causal/window, the segments or a mask rule out entirely are skipped. A float mask
gets no gradient (calls that want one go elsewhere). A row that may attend no key gets 0. A +inf/NaN logit
(q·k overflowing float32) makes its row NaN in the kernel; calls with a NaN/inf in q, k, v or a float mask go
to backend "math" (the rule in :mod:`selfattn.attention.math_backend`): the kernel's dense products would let
0 · NaN of a masked key reach other rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import cpu_kernel
from .cpu_layout import VARIANT, cpu_fused_backward, cpu_fused_forward, round_up
from .guards import all_finite, bias_is_finite, empty_result, is_empty
from .kernel_masks import is_key_padding
from .math_backend import math_attention
from .registry import BackendUnavailable
from .spec import AttentionCall, fused_kernel_declines, key_padding_rows
from .structure import window_sides


# The kernel as PyTorch custom operators (torch.library): torch.compile and torch.export keep them as
# single nodes, the fake implementations give their output shapes without running C, and autograd
# is registered on the forward op. Window sides arrive resolved (causal folded in); -1 = unlimited.
# q_seg/k_seg: segment ids (both or neither); mask: a general mask (not key padding), or None.
def _window(left: int, right: int) -> tuple[int | None, int | None]:
    return (None if left < 0 else left), (None if right < 0 else right)


def _pair(q_seg: Tensor | None, k_seg: Tensor | None) -> tuple[Tensor, Tensor] | None:
    return None if q_seg is None or k_seg is None else (q_seg, k_seg)


@torch.library.custom_op("selfattn::cpu_fused_fwd", mutates_args=(), device_types="cpu")
def cpu_fused_fwd_op(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None,
                     q_seg: Tensor | None, k_seg: Tensor | None, mask: Tensor | None, scale: float, left: int,
                     right: int) -> tuple[Tensor, Tensor]:
    """out (b, h, n, e) in q's dtype and lse (b, h, n) float32 of :func:`cpu_fused_forward`."""
    return cpu_fused_forward(q, k, v, kpm, slopes, scale, False, _window(left, right), _pair(q_seg, k_seg), mask)


@cpu_fused_fwd_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None, q_seg: Tensor | None,
      k_seg: Tensor | None, mask: Tensor | None, scale: float, left: int, right: int) -> tuple[Tensor, Tensor]:
    (b, h, n, _), e = q.shape, v.shape[3]
    n_pad, e2 = round_up(n, cpu_kernel.BLOCKS[0]), round_up(e, 32)  # the real op returns views of these
    out = q.new_empty(b, h, n_pad, e2)[:, :, :n, :e]  # (b, h, n, e)
    return out, q.new_empty(b, h, n_pad, dtype=torch.float32)[:, :, :n]  # (b, h, n)


@torch.library.custom_op("selfattn::cpu_fused_bwd", mutates_args=(), device_types="cpu")
def cpu_fused_bwd_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, kpm: Tensor | None,
                     slopes: Tensor | None, q_seg: Tensor | None, k_seg: Tensor | None, mask: Tensor | None,
                     scale: float, left: int, right: int) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv in the inputs' dtypes of :func:`cpu_fused_backward`."""
    dq, dk, dv = cpu_fused_backward(q, k, v, out, lse, dout, kpm, slopes, scale, False, _window(left, right),
                                    _pair(q_seg, k_seg), mask)
    return dq.to(q.dtype).contiguous(), dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous()


@cpu_fused_bwd_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, kpm: Tensor | None,
      slopes: Tensor | None, q_seg: Tensor | None, k_seg: Tensor | None, mask: Tensor | None, scale: float,
      left: int, right: int) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, k, v, kpm, slopes, q_seg, k_seg, mask, scale, left, right = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kpm, slopes, q_seg, k_seg, mask)
    ctx.args = (scale, left, right)


# lse is an internal statistic: no gradient flows through it
def _backward(ctx: Any, dout: Tensor, _dlse: Tensor | None) -> tuple[Tensor | None, ...]:
    q, k, v, out, lse, kpm, slopes, q_seg, k_seg, mask = ctx.saved_tensors
    dq, dk, dv = cpu_fused_bwd_op(q, k, v, out, lse, dout, kpm, slopes, q_seg, k_seg, mask, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None, None


cpu_fused_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _attention(name: str, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float | None,
               dropout_p: float, window: tuple[int | None, int | None] | None, alibi_slopes: Tensor | None,
               return_weights: bool, segment_ids: tuple[Tensor, Tensor] | None) -> tuple[Tensor, None]:
    if dropout_p > 0 or return_weights:
        raise ValueError(f"{name} supports no dropout and no returned weights; got dropout_p={dropout_p}, "
                         f"return_weights={return_weights}")
    general = None if is_key_padding(mask) else mask  # any other mask the kernel reads in place
    kpm = None if general is not None else key_padding_rows(name, mask, k.shape[2], 0.0, False)  # (b|1, m)
    if is_empty(q, k):
        return empty_result(q, k, v), None
    if not all_finite(q, k, v) or not bias_is_finite(general):  # the NaN/inf rule lives in math_backend
        return math_attention(q, k, v, mask=mask, causal=causal, scale=scale, window=window,
                              alibi_slopes=alibi_slopes, segment_ids=segment_ids)[0], None
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not torch.compiler.is_compiling():  # build (or fail to) before any work; "auto" then falls back
        try:
            cpu_kernel.kernel(VARIANT[q.dtype])
        except cpu_kernel.KernelUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
    slopes = None if alibi_slopes is None else alibi_slopes.detach()  # fixed per head: no gradient
    if not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        # eager and no gradient: the same C forward without the operator's dispatch (measured ~30-45 us a call)
        return cpu_fused_forward(q, k, v, kpm, slopes, scale, bool(causal), window, segment_ids, general)[0], None
    left, right = window_sides(bool(causal), window)
    q_seg, k_seg = (None, None) if segment_ids is None else segment_ids
    out, _ = cpu_fused_fwd_op(q, k, v, kpm, slopes, q_seg, k_seg, None if general is None else general.detach(),
                              scale, -1 if left is None else left, -1 if right is None else right)
    return out, None


def cpu_bf16_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
    segment_ids: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, None]:
    """Exact bfloat16 attention in the C kernel (bf16 dot products); see the module docstring.
    The ALiBi slopes get no gradient here; the registry declines slopes that require one."""
    return _attention("cpu_bf16", q, k, v, mask, causal, scale, dropout_p, window, alibi_slopes,
                      return_weights, segment_ids)


def cpu_f32_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
    segment_ids: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, None]:
    """Exact float32 attention in the C kernel (FMAs); see the module docstring.
    The ALiBi slopes get no gradient here; the registry declines slopes that require one."""
    return _attention("cpu_f32", q, k, v, mask, causal, scale, dropout_p, window, alibi_slopes,
                      return_weights, segment_ids)


def _supports(call: AttentionCall, name: str, dtype: torch.dtype) -> str | None:
    if call.dtype != dtype:
        return f"only for {str(dtype).removeprefix('torch.')} inputs (got {call.dtype})"
    if call.device_type != "cpu":
        return f"only for CPU tensors (got {call.device_type})"
    why = fused_kernel_declines(call, name)
    if why is not None:
        return why
    return cpu_kernel.unavailable_reason(VARIANT[dtype])  # pure: never compiles


def cpu_bf16_supports(call: AttentionCall) -> str | None:
    """Why "cpu_bf16" cannot serve a call, or None."""
    return _supports(call, "cpu_bf16", torch.bfloat16)


def cpu_f32_supports(call: AttentionCall) -> str | None:
    """Why "cpu_f32" cannot serve a call, or None."""
    return _supports(call, "cpu_f32", torch.float32)


# "auto" and the kernel (benchmarks/attention.py, 2-core AMD EPYC with AVX-512 BF16, B=1, H=8, D=64;
# benchmarks/results/attention-cpu-*-avx512.md): against SDPA in bf16, cpu_bf16 is 1.1-9x faster
# from N = 512 (1.4-2.3x without a mask, more where SDPA needs one). In float32, cpu_f32 is 1.2-1.4x
# faster causal or with gradients, but 0.92x (N = 512, 1024), 1.03x (2048), 1.13x (4096) forward
# without any mask, where SDPA's own fused kernel serves the call. For 1-32 queries (decoding) the
# kernel is 0.2-0.4x SDPA, a 64-row query block being mostly padding (B*H = 8..256).
# Not settled: on a 2-core Intel Xeon without bf16 units (AVX-512F/VNNI), training shapes (d 32, N 64-256,
# 64-2,048 problems) ran SDPA 1.1-1.8x faster than cpu_f32 forward+backward, where the AMD EPYC had the
# kernel ahead (benchmarks/attention_training_shapes.py); the policy is kept until more machines decide it.
AUTO_MIN_QUERIES = 64
AUTO_F32_PLAIN_FORWARD_MIN_SCORES = 4096 * 4096  # below: SDPA for mask-free float32 forwards


# General masks (benchmarks: 1 thread, B=1, H=8, D=64, a random boolean (1, 1, N, N) mask, every block on a
# mask edge; 2-core Intel Xeon with AMX, other jobs running): the kernel's per-element mask reads cost more than
# SDPA's explicit mask. bf16 ms, kernel vs SDPA: N 512 fwd 24.6 vs 16.1, fwd+bwd 49.3 vs 34.3; N 1024 fwd
# 126 vs 53, fwd+bwd 242 vs 176. float32: N 512 fwd 15.0 vs 26.3, fwd+bwd 45.0 vs 45.9; N 1024 fwd 68 vs 65,
# fwd+bwd 151 vs 213. "auto" leaves general masks to SDPA; the kernel serves them when asked (memory O(N)
# beyond the mask, block pairs a mask rules out skipped).
def _general_mask_declines(call: AttentionCall) -> str | None:
    if call.mask_kind == "float" or (call.mask_kind == "bool" and not call.key_padding_only):
        return ("a general (not key-padding) mask: the kernel's per-element mask reads measured slower than "
                "SDPA's explicit mask (bf16 0.4-0.7x; see cpu_fused.py)")
    return None


def _short(call: AttentionCall, variant: str) -> str | None:
    if call.q_len < AUTO_MIN_QUERIES:
        return (f"{call.q_len} queries fill a fraction of the kernel's {cpu_kernel.BLOCKS[0]}-row "
                f"query block; SDPA is faster below {AUTO_MIN_QUERIES} queries (measured)")
    return None


def cpu_bf16_auto_declines(call: AttentionCall) -> str | None:
    """Why "auto" should not pick cpu_bf16 although it could serve the call (measured, see above)."""
    return cpu_bf16_supports(call) or _short(call, "bf16") or _general_mask_declines(call)


def cpu_f32_auto_declines(call: AttentionCall) -> str | None:
    """Why "auto" should not pick cpu_f32 although it could serve the call (measured, see above)."""
    why = cpu_f32_supports(call) or _short(call, "f32") or _general_mask_declines(call)
    if why is not None:
        return why
    plain = (call.mask_kind == "none" and call.window is None and not call.alibi and not call.causal)
    if plain and not call.requires_grad and call.q_len * call.k_len < AUTO_F32_PLAIN_FORWARD_MIN_SCORES:
        return ("a mask-free float32 forward: SDPA's fused kernel is as fast here (kernel measured 0.92-1.03x "
                f"SDPA below Nq*Nk = {AUTO_F32_PLAIN_FORWARD_MIN_SCORES})")
    return None


__all__ = [
    "AUTO_F32_PLAIN_FORWARD_MIN_SCORES",
    "AUTO_MIN_QUERIES",
    "cpu_bf16_attention",
    "cpu_bf16_auto_declines",
    "cpu_bf16_supports",
    "cpu_f32_attention",
    "cpu_f32_auto_declines",
    "cpu_f32_supports",
    "cpu_fused_backward",
    "cpu_fused_bwd_op",
    "cpu_fused_forward",
    "cpu_fused_fwd_op",
]
