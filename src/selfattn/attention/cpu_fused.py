"""Backends "cpu_bf16" and "cpu_f32": fused exact attention in one C kernel on x86 CPUs with AVX-512.

The kernel (``csrc/flash_cpu.c``) is FlashAttention's forward (online softmax, Dao et al. 2022) and
FlashAttention-2's backward, recomputing each score block from the saved log-sum-exp: O(N) memory
forward and backward, key blocks that causal/window hide are skipped, and masks are never n x m
tensors. "cpu_bf16" runs the q·kᵀ and p·v products on the AVX-512 BF16 dot-product units (bf16
products, float32 sums); "cpu_f32" on float32 FMAs. Softmax statistics and accumulators are float32
in both. This module lays out the operands: zero padding to the kernel's blocks and the "pair"
layout its products read (pairs of W = 2 values for bf16, W = 1 for float32).

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask convention: boolean True = may attend; only key padding (B|1, 1, 1, Nk) besides ``causal``
(bottom-right aligned: query i may attend key j when j <= i + m - n), ``window`` and ALiBi slopes
(computed in the kernel, never an n x m bias). A row that may attend no key gets 0. A +inf/NaN
logit (q·k overflowing float32) makes its row NaN in the kernel; calls with a NaN/inf in q, k or v
go to backend "math" (the rule in :mod:`selfattn.attention.math_backend`), the kernel's dense
products would let 0 · NaN of a masked key reach other rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernel
from .guards import all_finite, empty_result, is_empty
from .kernel_abi import Kernel
from .math_backend import math_attention
from .registry import BackendUnavailable
from .spec import AttentionCall, key_padding_kernel_declines, key_padding_rows, window_sides

_UNLIMITED = 1 << 40  # a window side of None
_LOG2E = 1.4426950408889634


def _round_up(x: int, to: int) -> int:
    return -(-x // to) * to


_VARIANT = {torch.bfloat16: "bf16", torch.float32: "f32"}
_WIDTH = {"bf16": 2, "f32": 1}  # values per pair the kernel's products read


def _row_pairs(x: Tensor, w: int) -> Tensor:
    """(b, g, rows, cols) -> pairs of w consecutive rows interleaved (a contiguous copy):
    (b, g, rows/w, cols, w), t[..., i, c, s] = x[..., w i + s, c]."""
    b, g, rows, cols = x.shape
    return x.view(b, g, rows // w, w, cols).transpose(3, 4).contiguous()  # (b, g, rows/w, cols, w)


def _tiled_pairs(x: Tensor, block: int, w: int) -> Tensor:
    """(b, g, rows, cols) -> per block of ``block`` rows, that block's pair layout along columns:
    (b, g, rows/block, cols/w, block, w), t[..., J, c, i, s] = x[..., block J + i, w c + s]."""
    b, g, rows, cols = x.shape
    t = x.view(b, g, rows // block, block, cols // w, w)  # (b, g, J, i, c, s)
    return t.permute(0, 1, 2, 4, 3, 5).contiguous()  # (b, g, J, c, i, s)


def _padded(x: Tensor, rows: int, cols: int) -> Tensor:
    """Copy of (b, g, r, c) zero-padded to (b, g, rows, cols)."""
    return F.pad(x, (0, cols - x.shape[3], 0, rows - x.shape[2])).contiguous()


@dataclass(frozen=True)
class _Plan:
    """What forward and backward both need: the kernel build, its blocks and the padded sizes."""

    variant: str  # "bf16" | "f32"
    kernel: Kernel  # the loaded build, called by keyword (kernel_abi checks every argument)
    w: int  # values per pair
    qb: int  # query rows per block
    kb: int  # keys per block
    n_pad: int  # lengths padded to the blocks, head dims to the 32-column tiles
    m_pad: int
    d2: int
    e2: int


def _plan(q: Tensor, k: Tensor, v: Tensor) -> _Plan:
    variant = _VARIANT[q.dtype]
    qb, kb = cpu_kernel.block_sizes(variant)
    return _Plan(variant, cpu_kernel.kernel(variant), _WIDTH[variant], qb, kb, _round_up(q.shape[2], qb),
                 _round_up(k.shape[2], kb), _round_up(q.shape[3], 32), _round_up(v.shape[3], 32))


def _padding_bytes(kpm: Tensor | None, m: int, m_pad: int, kb: int) -> tuple[Tensor | None, Tensor | None]:
    """(b|1, m) bytes 1 = may attend, and (b|1, m_pad/kb) bytes 1 = the whole key block may be."""
    if kpm is None:
        return None, None
    allowed = F.pad(kpm.to(torch.uint8), (0, m_pad - m)).contiguous()  # (b|1, m_pad), 0 past m
    whole = allowed.view(allowed.shape[0], m_pad // kb, kb).amin(dim=-1).contiguous()  # (b|1, m_pad/kb)
    return allowed, whole


def _window_sides(causal: bool, window: tuple[int | None, int | None] | None) -> tuple[int, int]:
    left, right = window_sides(causal, window)
    return (_UNLIMITED if left is None else left), (_UNLIMITED if right is None else right)


def _slopes(slopes: Tensor | None) -> Tensor | None:
    return None if slopes is None else slopes.detach().to(torch.float32).contiguous()  # (h,)


def cpu_fused_forward(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None,
                     scale: float, causal: bool, window: tuple[int | None, int | None] | None) -> tuple[Tensor, Tensor]:
    """Run the C forward. kpm: (b|1, m) bool, True = may attend; slopes: (h,) ALiBi or None.
    Returns out (b, h, n, e) in q's dtype and lse (b, h, n) float32, natural log of the scaled (and
    ALiBi-biased) scores, +inf for rows that see nothing."""
    p = _plan(q, k, v)
    b, h, n, _ = q.shape
    g, m, e = k.shape[1], k.shape[2], v.shape[3]
    qp = _padded(q, p.n_pad, p.d2)  # (b, h, n_pad, d2)
    kp = _tiled_pairs(_padded(k, p.m_pad, p.d2), p.kb, p.w)  # (b, g, m_pad/kb, d2/w, kb, w)
    vp = _row_pairs(_padded(v, p.m_pad, p.e2), p.w)  # (b, g, m_pad/w, e2, w)
    allowed, whole = _padding_bytes(kpm, m, p.m_pad, p.kb)
    slopes = _slopes(slopes)
    out = torch.empty(b, h, p.n_pad, p.e2, dtype=q.dtype)
    lse = torch.empty(b, h, p.n_pad, dtype=torch.float32)
    left, right = _window_sides(causal, window)
    p.kernel.forward(q=qp, kp=kp, vp=vp, kpm=allowed, kpm_bstride=_batch_stride(allowed, p.m_pad), kpm_all=whole,
                     slopes=slopes, out=out, lse=lse, b=b, h=h, g=g, n=n, m=m, n_pad=p.n_pad, m_pad=p.m_pad,
                     d=p.d2, e=p.e2, scale=scale, left=left, right=right, nthreads=torch.get_num_threads())
    return out[:, :, :n, :e], lse[:, :, :n]  # (b, h, n, e), (b, h, n)


def cpu_fused_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, kpm: Tensor | None,
                      slopes: Tensor | None, scale: float, causal: bool,
                      window: tuple[int | None, int | None] | None) -> tuple[Tensor, Tensor, Tensor]:
    """Run the C backward. Returns float32 (dq (b, h, n, d), dk (b, g, m, d), dv (b, g, m, e))."""
    p = _plan(q, k, v)
    b, h, n, d = q.shape
    g, m, e = k.shape[1], k.shape[2], v.shape[3]
    qp = _padded(q, p.n_pad, p.d2)  # (b, h, n_pad, d2)
    dop = _padded(dout.to(q.dtype), p.n_pad, p.e2)  # (b, h, n_pad, e2)
    kpad, vpad = _padded(k, p.m_pad, p.d2), _padded(v, p.m_pad, p.e2)  # (b, g, m_pad, d2|e2)
    kp = _tiled_pairs(kpad, p.kb, p.w)  # (b, g, m_pad/kb, d2/w, kb, w)
    kvp = _row_pairs(kpad, p.w)  # (b, g, m_pad/w, d2, w)
    vtp = _tiled_pairs(vpad, p.kb, p.w)  # (b, g, m_pad/kb, e2/w, kb, w)
    qt, dot = _tiled_pairs(qp, p.qb, 1), _tiled_pairs(dop, p.qb, 1)  # (b, h, n_pad/qb, d2|e2, qb, 1)
    delta = (dout.float() * out.float()).sum(-1)  # (b, h, n): rowsum(dO * O)
    delta = F.pad(delta, (0, p.n_pad - n)).contiguous()
    lse2 = F.pad(lse * _LOG2E, (0, p.n_pad - n), value=float("inf")).contiguous()  # padded rows see nothing
    allowed, whole = _padding_bytes(kpm, m, p.m_pad, p.kb)
    slopes = _slopes(slopes)
    dq = torch.zeros(b, h, p.n_pad, p.d2)
    dk, dv = torch.empty(b, g, p.m_pad, p.d2), torch.empty(b, g, p.m_pad, p.e2)
    left, right = _window_sides(causal, window)
    p.kernel.backward(q=qp, qt=qt, kp=kp, kvp=kvp, vtp=vtp, dout=dop, dot=dot, lse2=lse2, delta=delta, kpm=allowed,
                      kpm_bstride=_batch_stride(allowed, p.m_pad), kpm_all=whole, slopes=slopes, dq=dq, dk=dk,
                      dv=dv, b=b, h=h, g=g, n=n, m=m, n_pad=p.n_pad, m_pad=p.m_pad, d=p.d2, e=p.e2, scale=scale,
                      left=left, right=right, nthreads=torch.get_num_threads())
    return dq[:, :, :n, :d], dk[:, :, :m, :d], dv[:, :, :m, :e]


def _batch_stride(allowed: Tensor | None, m_pad: int) -> int:
    return 0 if allowed is None or allowed.shape[0] == 1 else m_pad


# The kernel as PyTorch custom operators (torch.library): torch.compile and torch.export keep them as
# single nodes, the fake implementations give their output shapes without running C, and autograd
# is registered on the forward op. Window sides arrive resolved (causal folded in); -1 = unlimited.
def _window(left: int, right: int) -> tuple[int | None, int | None]:
    return (None if left < 0 else left), (None if right < 0 else right)


@torch.library.custom_op("selfattn::cpu_fused_fwd", mutates_args=(), device_types="cpu")
def cpu_fused_fwd_op(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None, scale: float,
                     left: int, right: int) -> tuple[Tensor, Tensor]:
    """out (b, h, n, e) in q's dtype and lse (b, h, n) float32 of :func:`cpu_fused_forward`."""
    return cpu_fused_forward(q, k, v, kpm, slopes, scale, False, _window(left, right))


@cpu_fused_fwd_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None, scale: float, left: int,
      right: int) -> tuple[Tensor, Tensor]:
    (b, h, n, _), e = q.shape, v.shape[3]
    n_pad, e2 = _round_up(n, cpu_kernel.BLOCKS[0]), _round_up(e, 32)  # the real op returns views of these
    out = q.new_empty(b, h, n_pad, e2)[:, :, :n, :e]  # (b, h, n, e)
    return out, q.new_empty(b, h, n_pad, dtype=torch.float32)[:, :, :n]  # (b, h, n)


@torch.library.custom_op("selfattn::cpu_fused_bwd", mutates_args=(), device_types="cpu")
def cpu_fused_bwd_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, kpm: Tensor | None,
                     slopes: Tensor | None, scale: float, left: int, right: int) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv in the inputs' dtypes of :func:`cpu_fused_backward`."""
    dq, dk, dv = cpu_fused_backward(q, k, v, out, lse, dout, kpm, slopes, scale, False, _window(left, right))
    return dq.to(q.dtype).contiguous(), dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous()


@cpu_fused_bwd_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, kpm: Tensor | None,
      slopes: Tensor | None, scale: float, left: int, right: int) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, k, v, kpm, slopes, scale, left, right = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kpm, slopes)
    ctx.args = (scale, left, right)


# lse is an internal statistic: no gradient flows through it
def _backward(ctx: Any, dout: Tensor, _dlse: Tensor | None) -> tuple[Tensor | None, ...]:
    q, k, v, out, lse, kpm, slopes = ctx.saved_tensors
    dq, dk, dv = cpu_fused_bwd_op(q, k, v, out, lse, dout, kpm, slopes, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


cpu_fused_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _attention(name: str, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float | None,
               dropout_p: float, window: tuple[int | None, int | None] | None, alibi_slopes: Tensor | None,
               return_weights: bool) -> tuple[Tensor, None]:
    kpm = key_padding_rows(name, mask, k.shape[2], dropout_p, return_weights)  # (b|1, m), True = may attend
    if is_empty(q, k):
        return empty_result(q, k, v), None
    if not all_finite(q, k, v):  # the rule for NaN/inf inputs lives in the reference (math_backend)
        return math_attention(q, k, v, mask=mask, causal=causal, scale=scale, window=window,
                              alibi_slopes=alibi_slopes)[0], None
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not torch.compiler.is_compiling():  # build (or fail to) before any work; "auto" then falls back
        try:
            cpu_kernel.kernel(_VARIANT[q.dtype])
        except cpu_kernel.KernelUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
    slopes = None if alibi_slopes is None else alibi_slopes.detach()  # fixed per head: no gradient
    if not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        # eager and no gradient: the same C forward without the operator's dispatch (measured ~30-45 us a call)
        return cpu_fused_forward(q, k, v, kpm, slopes, scale, bool(causal), window)[0], None
    left, right = window_sides(bool(causal), window)
    out, _ = cpu_fused_fwd_op(q, k, v, kpm, slopes, scale, -1 if left is None else left, -1 if right is None else right)
    return out, None


def cpu_bf16_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
) -> tuple[Tensor, None]:
    """Exact bfloat16 attention in the C kernel (bf16 dot products); see the module docstring.
    The ALiBi slopes get no gradient here; the registry declines slopes that require one."""
    return _attention("cpu_bf16", q, k, v, mask, causal, scale, dropout_p, window, alibi_slopes,
                      return_weights)


def cpu_f32_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
) -> tuple[Tensor, None]:
    """Exact float32 attention in the C kernel (FMAs); see the module docstring.
    The ALiBi slopes get no gradient here; the registry declines slopes that require one."""
    return _attention("cpu_f32", q, k, v, mask, causal, scale, dropout_p, window, alibi_slopes,
                      return_weights)


def _supports(call: AttentionCall, name: str, dtype: torch.dtype) -> str | None:
    if call.dtype != dtype:
        return f"only for {str(dtype).removeprefix('torch.')} inputs (got {call.dtype})"
    if call.device_type != "cpu":
        return f"only for CPU tensors (got {call.device_type})"
    why = key_padding_kernel_declines(call, name)
    return why if why is not None else cpu_kernel.unavailable_reason(_VARIANT[dtype])  # pure: never compiles


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
AUTO_MIN_QUERIES = 64
AUTO_F32_PLAIN_FORWARD_MIN_SCORES = 4096 * 4096  # below: SDPA for mask-free float32 forwards


def _short(call: AttentionCall, variant: str) -> str | None:
    if call.q_len < AUTO_MIN_QUERIES:
        return (f"{call.q_len} queries fill a fraction of the kernel's {cpu_kernel.BLOCKS[0]}-row "
                f"query block; SDPA is faster below {AUTO_MIN_QUERIES} queries (measured)")
    return None


def cpu_bf16_auto_declines(call: AttentionCall) -> str | None:
    """Why "auto" should not pick cpu_bf16 although it could serve the call (measured, see above)."""
    return cpu_bf16_supports(call) or _short(call, "bf16")


def cpu_f32_auto_declines(call: AttentionCall) -> str | None:
    """Why "auto" should not pick cpu_f32 although it could serve the call (measured, see above)."""
    why = cpu_f32_supports(call) or _short(call, "f32")
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
