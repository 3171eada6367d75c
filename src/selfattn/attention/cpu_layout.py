"""Running the fused C kernel (``csrc/flash_cpu.c``) of backends "cpu_bf16" and "cpu_f32": lay out the operands
and call its forward or backward.

Zero padding to the kernel's blocks and the "pair" layout its products read (pairs of W = 2 values for bf16,
W = 1 for float32); key padding as per-key bytes; segment ids as int32 rows; any other boolean or float mask as
bytes or a float32 bias read in place at its own strides (a broadcast dimension is never copied out).

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim (d2, e2 padded to
32; n_pad, m_pad to the blocks). Mask convention: boolean True = may attend; a float mask is added to the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernel
from .kernel_abi import Kernel
from .kernel_masks import general_mask, int32_segments
from .structure import window_sides

_UNLIMITED = 1 << 40  # a window side of None
_LOG2E = 1.4426950408889634


def round_up(x: int, to: int) -> int:
    return -(-x // to) * to


VARIANT = {torch.bfloat16: "bf16", torch.float32: "f32"}
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
    variant = VARIANT[q.dtype]
    qb, kb = cpu_kernel.block_sizes(variant)
    return _Plan(variant, cpu_kernel.kernel(variant), _WIDTH[variant], qb, kb, round_up(q.shape[2], qb),
                 round_up(k.shape[2], kb), round_up(q.shape[3], 32), round_up(v.shape[3], 32))


def _padding_bytes(kpm: Tensor | None, m: int, m_pad: int, kb: int) -> tuple[Tensor | None, Tensor | None]:
    """(b|1, m) bytes 1 = may attend, and (b|1, m_pad/kb) bytes 1 = the whole key block may be."""
    if kpm is None:
        return None, None
    allowed = F.pad(kpm.to(torch.uint8), (0, m_pad - m)).contiguous()  # (b|1, m_pad), 0 past m
    whole = allowed.view(allowed.shape[0], m_pad // kb, kb).amin(dim=-1).contiguous()  # (b|1, m_pad/kb)
    return allowed, whole


def _segment_rows(ids: Tensor, rows: int) -> Tensor:
    """(b, len) integer ids -> (b, rows) int32, the padding repeating the last id (padding rows and keys are
    masked by their position; repeating keeps each block's id range, so block skipping, tight)."""
    b, length = ids.shape
    return torch.cat([ids, ids[:, -1:].expand(b, rows - length)], dim=1).to(torch.int32).contiguous()


def _segments(segment_ids: tuple[Tensor, Tensor] | None, n_pad: int, m_pad: int) -> tuple[Tensor | None, ...]:
    """(q_seg (b, n_pad), k_seg (b, m_pad)) int32 for the kernel, or (None, None)."""
    if segment_ids is None:
        return None, None
    q_seg, k_seg = int32_segments(segment_ids)
    return _segment_rows(q_seg, n_pad), _segment_rows(k_seg, m_pad)


def _window_sides(causal: bool, window: tuple[int | None, int | None] | None) -> tuple[int, int]:
    left, right = window_sides(causal, window)
    return (_UNLIMITED if left is None else left), (_UNLIMITED if right is None else right)


def _slopes(slopes: Tensor | None) -> Tensor | None:
    return None if slopes is None else slopes.detach().to(torch.float32).contiguous()  # (h,)


def cpu_fused_forward(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None,
                     scale: float, causal: bool, window: tuple[int | None, int | None] | None,
                     segment_ids: tuple[Tensor, Tensor] | None = None,
                     mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Run the C forward. kpm: (b|1, m) bool, True = may attend; slopes: (h,) ALiBi or None; segment_ids:
    (q_seg (b, n), k_seg (b, m)) integer or None; mask: a general boolean or float mask (not key padding)
    broadcastable to (b, h, n, m), or None.
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
    qseg, kseg = _segments(segment_ids, p.n_pad, p.m_pad)  # (b, n_pad), (b, m_pad) int32 or None
    gm = general_mask(mask, m)
    out = torch.empty(b, h, p.n_pad, p.e2, dtype=q.dtype)
    lse = torch.empty(b, h, p.n_pad, dtype=torch.float32)
    left, right = _window_sides(causal, window)
    p.kernel.forward(q=qp, kp=kp, vp=vp, kpm=allowed, kpm_bstride=_batch_stride(allowed, p.m_pad), kpm_all=whole,
                     slopes=slopes, qseg=qseg, kseg=kseg, **gm._asdict(), out=out, lse=lse, b=b, h=h, g=g, n=n,
                     m=m, n_pad=p.n_pad, m_pad=p.m_pad, d=p.d2, e=p.e2, scale=scale, left=left, right=right,
                     nthreads=torch.get_num_threads())
    return out[:, :, :n, :e], lse[:, :, :n]  # (b, h, n, e), (b, h, n)


def cpu_fused_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, kpm: Tensor | None,
                      slopes: Tensor | None, scale: float, causal: bool,
                      window: tuple[int | None, int | None] | None,
                      segment_ids: tuple[Tensor, Tensor] | None = None,
                      mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
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
    qseg, kseg = _segments(segment_ids, p.n_pad, p.m_pad)  # (b, n_pad), (b, m_pad) int32 or None
    gm = general_mask(mask, m)
    dq = torch.zeros(b, h, p.n_pad, p.d2)
    dk, dv = torch.empty(b, g, p.m_pad, p.d2), torch.empty(b, g, p.m_pad, p.e2)
    left, right = _window_sides(causal, window)
    p.kernel.backward(q=qp, qt=qt, kp=kp, kvp=kvp, vtp=vtp, dout=dop, dot=dot, lse2=lse2, delta=delta, kpm=allowed,
                      kpm_bstride=_batch_stride(allowed, p.m_pad), kpm_all=whole, slopes=slopes, qseg=qseg,
                      kseg=kseg, **gm._asdict(), dq=dq, dk=dk, dv=dv, b=b, h=h, g=g, n=n, m=m, n_pad=p.n_pad,
                      m_pad=p.m_pad, d=p.d2, e=p.e2, scale=scale, left=left, right=right,
                      nthreads=torch.get_num_threads())
    return dq[:, :, :n, :d], dk[:, :, :m, :d], dv[:, :, :m, :e]


def _batch_stride(allowed: Tensor | None, m_pad: int) -> int:
    return 0 if allowed is None or allowed.shape[0] == 1 else m_pad


__all__ = ["VARIANT", "cpu_fused_backward", "cpu_fused_forward", "round_up"]
