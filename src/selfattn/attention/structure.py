"""The positional structure of attention shared by every backend: causal and sliding-window masks (one window
rule, bottom-right aligned) and the ALiBi bias.

Legend: n queries, m keys, h heads. Mask convention: boolean **True = may attend**. Query i sits at key position
``i + (m - n)`` (bottom-right alignment, so a cached decoding step needs no special case).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def structural_mask(
    n: int,
    m: int,
    *,
    causal: bool,
    window: tuple[int | None, int | None] | None,
    device: torch.device | str,
) -> Tensor | None:
    """Boolean (n, m) mask, True = may attend, from causal and window (both bottom-right aligned).

    Query i sits at key position ``i + (m - n)``. Causal allows keys ``j <= pos``; a window
    ``(left, right)`` allows ``pos - left <= j <= pos + right`` (None = unlimited on that side).
    Returns None when neither constrains anything.
    """
    if not causal and window is None:
        return None
    window = None if window is None else (window[0], window[1])
    if n * m <= _CACHE_MAX_ELEMENTS:  # every layer of a model asks for the same mask: build it once
        return _cached_structural_mask(n, m, causal, window, str(device))
    return _build_structural_mask(n, m, causal, window, device)


_CACHE_MAX_ELEMENTS = 2**26  # 64 MiB of booleans at most per cached mask (N = 8192)


@functools.lru_cache(maxsize=8)
def _cached_structural_mask(n: int, m: int, causal: bool, window: tuple[int | None, int | None] | None,
                            device: torch.device | str) -> Tensor:
    return _build_structural_mask(n, m, causal, window, device)  # shared: callers never modify it in place


def _build_structural_mask(n: int, m: int, causal: bool, window: tuple[int | None, int | None] | None,
                           device: torch.device | str) -> Tensor:
    pos = torch.arange(n, device=device).unsqueeze(1) + (m - n)  # (n, 1)
    j = torch.arange(m, device=device).unsqueeze(0)  # (1, m)
    allowed = window_allows(j - pos, *window_sides(causal, window))  # (n, m)
    return torch.ones(n, m, dtype=torch.bool, device=device) if allowed is None else allowed


# The window rule, stated once. A query sits at key position ``pos = i + (m - n)`` (bottom-right
# aligned); it may attend key j when ``pos - left <= j <= pos + right``; causal is right = 0.
# Every Python path uses these two helpers (the Triton and C kernels state the same rule in their
# own language, on the (left, right) that window_sides returns).
def window_sides(causal: bool, window: tuple[int | None, int | None] | None) -> tuple[int | None, int | None]:
    """(left, right) keys around each query's key position that it may attend; None = unlimited.

    ``causal`` caps ``right`` at 0 (a window reaching further right is cut, one reaching less stays).
    """
    left, right = window if window is not None else (None, None)
    if causal:
        right = 0 if right is None else min(right, 0)
    return left, right


def window_allows(delta: Tensor, left: int | None, right: int | None) -> Tensor | None:
    """Boolean like ``delta``, True = may attend, for ``delta = j - pos`` (key minus query key position).

    None when both sides are unlimited (every key allowed), so callers skip the mask entirely.
    """
    if left is None:
        return None if right is None else delta <= right
    return delta >= -left if right is None else (delta >= -left) & (delta <= right)


def alibi_bias(slopes: Tensor, n: int, m: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """ALiBi additive bias (Press et al., 2022): ``-slope_h * |pos_i - j|``, shape (1, h, n, m), in
    ``dtype`` (float32 for every input dtype but float64, so scores never hold a bf16-rounded bias).

    Positions are bottom-right aligned like causal masks, so for causal attention this is the
    paper's ``slope * (j - i)``.
    """
    pos = torch.arange(n, device=slopes.device).unsqueeze(1) + (m - n)  # (n, 1)
    j = torch.arange(m, device=slopes.device).unsqueeze(0)  # (1, m)
    dist = (pos - j).abs().to(dtype)  # (n, m)
    return -slopes.to(dtype).view(1, -1, 1, 1) * dist  # (1, h, n, m)
