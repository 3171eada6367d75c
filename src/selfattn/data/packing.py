"""Packing sentence pairs into rows of fixed source/target capacity (issue #14 §3, data side only).

First-fit-decreasing: pairs sorted by (target length, source length) descending, index as tie-break, so the
packing is a pure function of the lengths; each pair lands in exactly one row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["pack_first_fit", "segment_layout", "segment_mask"]


def pack_first_fit(
    lengths: Sequence[tuple[int, int]], src_capacity: int, tgt_capacity: int
) -> list[list[int]]:
    """Rows of pair indices; each row's summed source/target lengths stay within the capacities."""
    if src_capacity < 1 or tgt_capacity < 1:
        raise ValueError(f"expected positive capacities, got {src_capacity}, {tgt_capacity}")
    for i, (s, t) in enumerate(lengths):
        if not (0 < s <= src_capacity and 0 < t <= tgt_capacity):
            raise ValueError(
                f"pair {i}: expected lengths in 1..{src_capacity} / 1..{tgt_capacity}, got {s} / {t}"
            )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i][1], -lengths[i][0], i))
    rows: list[list[int]] = []
    used: list[list[int]] = []  # per row: [source used, target used]
    for i in order:
        s, t = lengths[i]
        for r, (us, ut) in enumerate(used):
            if us + s <= src_capacity and ut + t <= tgt_capacity:
                rows[r].append(i)
                used[r] = [us + s, ut + t]
                break
        else:
            rows.append([i])
            used.append([s, t])
    return rows


def segment_layout(seg_lengths: Sequence[int], capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids (1, 2, ...; 0 = padding) and positions restarting per segment, both (capacity,)."""
    if sum(seg_lengths) > capacity:
        raise ValueError(f"expected segments summing to <= {capacity}, got {sum(seg_lengths)}")
    ids = torch.zeros(capacity, dtype=torch.long)
    pos = torch.zeros(capacity, dtype=torch.long)
    start = 0
    for k, n in enumerate(seg_lengths):
        ids[start : start + n] = k + 1
        pos[start : start + n] = torch.arange(n)
        start += n
    return ids, pos


def segment_mask(q_seg: torch.Tensor, k_seg: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Boolean document mask (B, 1, Nq, Nk), True = may attend: same segment id (AND causal if asked).

    Padding (id 0) attends to padding, so no row is fully masked; its outputs are ignored by the loss.
    """
    if q_seg.dim() != 2 or k_seg.dim() != 2 or q_seg.shape[0] != k_seg.shape[0]:
        raise ValueError(f"expected (B, Nq) and (B, Nk) segment ids, got {tuple(q_seg.shape)}, {tuple(k_seg.shape)}")
    mask = q_seg[:, None, :, None] == k_seg[:, None, None, :]  # (B, 1, Nq, Nk)
    if causal:
        nq, nk = q_seg.shape[1], k_seg.shape[1]
        mask = mask & torch.ones(nq, nk, dtype=torch.bool).tril()  # (B, 1, Nq, Nk)
    return mask
