"""Backend "cpu_bf16": fused exact attention in bfloat16 on CPUs with AVX-512 BF16 units.

The forward is one C kernel (``csrc/flash_bf16.c``, FlashAttention's online softmax, Dao et al.
2022): bf16 q·kᵀ and p·v products on the CPU's bf16 dot-product units with float32 sums, float32
softmax statistics and output accumulation, O(N) memory, key blocks that causal/window hide are
skipped. This module lays out its operands: zero padding to the kernel's block sizes and the
"pair" (VNNI) layout its dot products read, key by key pair for v and feature pair for k.

The backward is a second C kernel (FlashAttention-2's): it recomputes each score block from the
saved log-sum-exp, so memory stays O(N) forward and backward.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask convention: boolean True = may attend; only key padding (B|1, 1, 1, Nk) besides ``causal``
(bottom-right aligned: query i may attend key j when j <= i + m - n) and ``window``. A row that may
attend no key gets 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernel
from .flash import _sides
from .spec import AttentionCall, key_padding_kernel_declines

_UNLIMITED = 1 << 40  # a window side of None
_LOG2E = 1.4426950408889634


def _round_up(x: int, to: int) -> int:
    return -(-x // to) * to


def _pairs(x: Tensor, along_rows: bool) -> Tensor:
    """(b, g, rows, cols) -> pair layout the kernel's dot products read (a contiguous copy):
    along rows (b, g, rows/2, cols, 2), t[..., i, c, s] = x[..., 2i + s, c];
    along columns (b, g, cols/2, rows, 2), t[..., c, i, s] = x[..., i, 2c + s]."""
    b, g, rows, cols = x.shape
    if along_rows:
        return x.view(b, g, rows // 2, 2, cols).transpose(3, 4).contiguous()  # (b, g, rows/2, cols, 2)
    return x.view(b, g, rows, cols // 2, 2).transpose(2, 3).contiguous()  # (b, g, cols/2, rows, 2)


def _padded(x: Tensor, rows: int, cols: int) -> Tensor:
    """bf16 copy of (b, g, r, c) zero-padded to (b, g, rows, cols)."""
    return F.pad(x.to(torch.bfloat16), (0, cols - x.shape[3], 0, rows - x.shape[2])).contiguous()


def _sizes(q: Tensor, k: Tensor, v: Tensor, qb: int, kb: int) -> tuple[int, int, int, int]:
    """(n_pad, m_pad, d2, e2): lengths padded to the blocks, head dims to the 32-column tiles."""
    return (_round_up(q.shape[2], qb), _round_up(k.shape[2], kb), _round_up(q.shape[3], 32),
            _round_up(v.shape[3], 32))


def _padding_bytes(kpm: Tensor | None, m: int, m_pad: int, kb: int):
    """(b|1, m) bytes 1 = may attend, and (b|1, m_pad/kb) bytes 1 = the whole key block may be."""
    if kpm is None:
        return None, None
    allowed = F.pad(kpm.to(torch.uint8), (0, m_pad - m)).contiguous()  # (b|1, m_pad), 0 past m
    whole = allowed.view(allowed.shape[0], m_pad // kb, kb).amin(dim=-1).contiguous()  # (b|1, m_pad/kb)
    return allowed, whole


def _window_sides(causal: bool, window) -> tuple[int, int]:
    left, right = _sides(causal, window)
    return (_UNLIMITED if left is None else left), (_UNLIMITED if right is None else right)


def cpu_bf16_forward(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, scale: float,
                     causal: bool, window) -> tuple[Tensor, Tensor]:
    """Run the C forward. kpm: (b|1, m) bool, True = may attend. Returns out (b, h, n, e) bf16 and
    lse (b, h, n) float32, natural log of the scaled scores (+inf for rows that see nothing)."""
    lib = cpu_kernel.kernel()
    qb, kb = cpu_kernel.block_sizes()
    b, h, n, _ = q.shape
    g, m, e = k.shape[1], k.shape[2], v.shape[3]
    n_pad, m_pad, d2, e2 = _sizes(q, k, v, qb, kb)
    qp = _padded(q, n_pad, d2)  # (b, h, n_pad, d2)
    kp = _pairs(_padded(k, m_pad, d2), along_rows=False)  # (b, g, d2/2, m_pad, 2)
    vp = _pairs(_padded(v, m_pad, e2), along_rows=True)  # (b, g, m_pad/2, e2, 2)
    allowed, whole = _padding_bytes(kpm, m, m_pad, kb)
    out = torch.empty(b, h, n_pad, e2, dtype=torch.bfloat16)
    lse = torch.empty(b, h, n_pad, dtype=torch.float32)
    rc = lib.selfattn_flash_fwd_bf16(
        qp.data_ptr(), kp.data_ptr(), vp.data_ptr(), _ptr(allowed), _batch_stride(allowed, m_pad),
        _ptr(whole), out.data_ptr(), lse.data_ptr(), b, h, g, n, m, n_pad, m_pad, d2, e2, scale,
        *_window_sides(causal, window), torch.get_num_threads())
    if rc != 0:
        raise MemoryError("the bf16 attention kernel could not allocate its scratch buffers")
    return out[:, :, :n, :e], lse[:, :, :n]  # (b, h, n, e), (b, h, n)


def cpu_bf16_backward(q, k, v, out, lse, dout, kpm, scale, causal, window):
    """Run the C backward. Returns float32 (dq (b, h, n, d), dk (b, g, m, d), dv (b, g, m, e))."""
    lib = cpu_kernel.kernel()
    qb, kb = cpu_kernel.block_sizes()
    b, h, n, d = q.shape
    g, m, e = k.shape[1], k.shape[2], v.shape[3]
    n_pad, m_pad, d2, e2 = _sizes(q, k, v, qb, kb)
    qp = _padded(q, n_pad, d2)  # (b, h, n_pad, d2)
    dop = _padded(dout, n_pad, e2)  # (b, h, n_pad, e2)
    kpad, vpad = _padded(k, m_pad, d2), _padded(v, m_pad, e2)  # (b, g, m_pad, d2|e2)
    kp, kvp = _pairs(kpad, along_rows=False), _pairs(kpad, along_rows=True)
    vtp = _pairs(vpad, along_rows=False)  # (b, g, e2/2, m_pad, 2)
    qt, dot = qp.transpose(2, 3).contiguous(), dop.transpose(2, 3).contiguous()  # (b, h, d2|e2, n_pad)
    delta = (dout.float() * out.float()).sum(-1)  # (b, h, n): rowsum(dO * O)
    delta = F.pad(delta, (0, n_pad - n)).contiguous()
    lse2 = F.pad(lse * _LOG2E, (0, n_pad - n), value=float("inf")).contiguous()  # padded rows see nothing
    allowed, whole = _padding_bytes(kpm, m, m_pad, kb)
    dq = torch.zeros(b, h, n_pad, d2)
    dk, dv = torch.empty(b, g, m_pad, d2), torch.empty(b, g, m_pad, e2)
    rc = lib.selfattn_flash_bwd_bf16(
        qp.data_ptr(), qt.data_ptr(), kp.data_ptr(), kvp.data_ptr(), vtp.data_ptr(), dop.data_ptr(),
        dot.data_ptr(), lse2.data_ptr(), delta.data_ptr(), _ptr(allowed), _batch_stride(allowed, m_pad),
        _ptr(whole), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), b, h, g, n, m, n_pad, m_pad, d2, e2,
        scale, *_window_sides(causal, window), torch.get_num_threads())
    if rc != 0:
        raise MemoryError("the bf16 attention kernel could not allocate its scratch buffers")
    return dq[:, :, :n, :d], dk[:, :, :m, :d], dv[:, :, :m, :e]


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _batch_stride(allowed: Tensor | None, m_pad: int) -> int:
    return 0 if allowed is None or allowed.shape[0] == 1 else m_pad


class CpuBf16Function(torch.autograd.Function):
    """Fused C forward and backward; saves q, k, v, out and the per-row lse (O(N) memory)."""

    @staticmethod
    def forward(ctx, q, k, v, kpm, scale, causal, window):
        out, lse = cpu_bf16_forward(q, k, v, kpm, scale, causal, window)
        ctx.save_for_backward(q, k, v, out, lse, kpm)
        ctx.args = (scale, causal, window)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, kpm = ctx.saved_tensors
        dq, dk, dv = cpu_bf16_backward(q, k, v, out, lse, dout, kpm, *ctx.args)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def cpu_bf16_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window=None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
) -> tuple[Tensor, None]:
    """Exact bf16 attention through the C kernel; see the module docstring for what it supports."""
    if dropout_p > 0 or return_weights or alibi_slopes is not None or (
            mask is not None and mask.dtype != torch.bool):
        raise ValueError("cpu_bf16 supports no dropout, no returned weights, no ALiBi and only boolean "
                         f"key-padding masks; got dropout_p={dropout_p}, return_weights={return_weights}, "
                         f"alibi={alibi_slopes is not None}")
    kpm = None
    if mask is not None:
        full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, 1, 1, m|1)
        if full.shape[1] != 1 or full.shape[2] != 1:
            raise ValueError(f"cpu_bf16 takes only key-padding masks (B|1, 1, 1, Nk), got mask of "
                             f"shape {tuple(mask.shape)}")
        kpm = full[:, 0, 0, :].expand(full.shape[0], k.shape[2])  # (b|1, m), True = may attend
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return CpuBf16Function.apply(q, k, v, kpm, scale, bool(causal), window), None


def cpu_bf16_supports(call: AttentionCall) -> str | None:
    """Why "cpu_bf16" cannot serve a call, or None."""
    if call.dtype != torch.bfloat16:
        return f"only for bfloat16 inputs (got {call.dtype})"
    if call.device_type != "cpu":
        return f"only for CPU tensors (got {call.device_type})"
    if call.alibi:
        return "ALiBi is not implemented in the bf16 C kernel ('flash' serves it)"
    why = key_padding_kernel_declines(call, "cpu_bf16")
    return why if why is not None else cpu_kernel.kernel_unavailable()


# "auto" and cpu_bf16 (benchmarks/attention.py, 2-core AMD EPYC with AVX-512 BF16, B*H = 8..256,
# D = 64): against SDPA in bf16 the kernel is 1.5-2.1x faster forward and 1.6-2.2x forward+backward
# from 128 queries up, but 0.2-0.4x for 1-32 queries, where a 64-row query block is mostly padding.
AUTO_MIN_QUERIES = 64


def cpu_bf16_auto_declines(call: AttentionCall) -> str | None:
    """Why "auto" should not pick cpu_bf16 although it could serve the call (measured, see above)."""
    why = cpu_bf16_supports(call)
    if why is not None:
        return why
    if call.q_len < AUTO_MIN_QUERIES:
        return (f"{call.q_len} queries fill a fraction of the kernel's {cpu_kernel.block_sizes()[0]}-row "
                f"query block; SDPA is faster below {AUTO_MIN_QUERIES} queries (measured)")
    return None


__all__ = ["AUTO_MIN_QUERIES", "CpuBf16Function", "cpu_bf16_attention", "cpu_bf16_auto_declines",
           "cpu_bf16_backward", "cpu_bf16_forward", "cpu_bf16_supports"]
