"""Masks and segment ids as the fused kernels (the C kernel, Triton) read them: no n x m tensor is built.

Mask convention: boolean True = may attend; a floating mask is added to the scores (-inf = may not attend).
Key padding (B|1, 1, 1, Nk) is each kernel's own per-key row; any other mask broadcastable to (B, H, Nq, Nk) is
passed in place at its own strides (a broadcast dimension at stride 0, never copied out; keys contiguous).
Segment ids (``q_seg (b, n)``, ``k_seg (b, m)``: query i may attend key j only when their ids are equal) are
passed as int32; only equality matters, so ids outside int32 are renumbered rather than truncated.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .spec import is_key_padding


class GeneralMask(NamedTuple):
    """A general mask as a kernel reads it: bytes (1 = may attend) or a float32 bias, and its strides."""

    mask: Tensor | None  # (b|1, h|1, n|1, m) uint8, compact
    bias: Tensor | None  # (b|1, h|1, n|1, m) float32, compact
    msb: int  # strides of batch, head, query; 0 where the mask broadcasts
    msh: int
    msn: int


NO_MASK = GeneralMask(None, None, 0, 0, 0)


def general_mask(mask: Tensor | None, m: int) -> GeneralMask:
    """A boolean or floating mask broadcastable to (b, h, n, m) as a kernel reads it: dimensions of size 1,
    or expanded with stride 0, are read at stride 0 (never copied out); keys contiguous. Key padding or None:
    :data:`NO_MASK`."""
    if mask is None or is_key_padding(mask):
        return NO_MASK
    x = mask.detach().reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, h|1, n|1, m|1)
    x = x[tuple(slice(0, 1) if x.stride(i) == 0 else slice(None) for i in range(4))]  # expanded dims: size 1
    x = x.expand(*x.shape[:3], m)  # a mask broadcast along keys is read contiguously: (b|1, h|1, n|1, m)
    x = x.contiguous() if x.dtype == torch.bool else x.to(torch.float32).contiguous()
    msb, msh, msn = (x.stride(i) if x.shape[i] > 1 else 0 for i in range(3))
    if x.dtype == torch.bool:
        return GeneralMask(x.view(torch.uint8), None, msb, msh, msn)
    return GeneralMask(None, x, msb, msh, msn)


def int32_segments(segment_ids: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(q_seg (b, n), k_seg (b, m)) as int32, renumbered (``torch.unique``) when an id is outside int32."""
    q_seg, k_seg = segment_ids
    both = torch.cat([q_seg.reshape(-1), k_seg.reshape(-1)])
    lo, hi = torch.aminmax(both.long())
    if int(lo) < -(2**31) or int(hi) >= 2**31:
        _, ranks = torch.unique(both, return_inverse=True)
        q_seg, k_seg = ranks[: q_seg.numel()].view(q_seg.shape), ranks[q_seg.numel():].view(k_seg.shape)
    return q_seg.to(torch.int32).contiguous(), k_seg.to(torch.int32).contiguous()


__all__ = ["NO_MASK", "GeneralMask", "general_mask", "int32_segments", "is_key_padding"]
