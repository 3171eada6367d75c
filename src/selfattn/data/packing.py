"""Packing sentence pairs into rows of fixed source/target capacity (issue #14 §3).

Legend: r rows, m source positions, n target positions.

First-fit-decreasing: pairs sorted by (target length, source length) descending — ties broken by index, or at
random from a generator — then each pair goes into the first row where both its source and its target still
fit; each pair lands in exactly one row, and the packing is a pure function of the lengths (and the generator).

Segment-id convention (shared with the models: ``Transformer(..., segment_ids=(src_seg, tgt_seg))``): the pairs
of a row get ids 1, 2, ... in row order on both sides, laid out contiguously from position 0; 0 marks padding.
Query i may attend key j only when their ids are equal, so a real token never sees padding or another pair;
positions restart at 0 in every segment (:func:`segment_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..task import IGNORE, Batch, TaskVocab

__all__ = ["pack_first_fit", "packed_seq2seq_batch", "padding_fraction", "segment_layout", "segment_mask",
           "segment_positions"]


def _check_lengths(lengths: Sequence[tuple[int, int]], src_capacity: int, tgt_capacity: int) -> None:
    if src_capacity < 1 or tgt_capacity < 1:
        raise ValueError(f"expected positive capacities, got {src_capacity}, {tgt_capacity}")
    for i, (s, t) in enumerate(lengths):
        if not (0 < s <= src_capacity and 0 < t <= tgt_capacity):
            raise ValueError(
                f"pair {i}: expected lengths in 1..{src_capacity} / 1..{tgt_capacity}, got {s} / {t}"
            )


def pack_first_fit(
    lengths: Sequence[tuple[int, int]], src_capacity: int, tgt_capacity: int, *,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Rows of pair indices; each row's summed source/target lengths stay within the capacities.

    ``lengths``: (source length, target length) per pair. ``generator``: breaks ties between pairs of equal
    lengths at random (so two seeds give different row mates); None breaks them by index.
    """
    _check_lengths(lengths, src_capacity, tgt_capacity)
    n = len(lengths)
    if n == 0:
        return []
    tie = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    order = sorted(range(n), key=lambda i: (-lengths[i][1], -lengths[i][0], tie[i]))
    rem_s = np.zeros(n, dtype=np.int64)  # per row: source positions still free
    rem_t = np.zeros(n, dtype=np.int64)  # per row: target positions still free
    row_of = np.empty(n, dtype=np.int64)
    min_s, min_t = min(s for s, _ in lengths), min(t for _, t in lengths)
    rows = start = 0  # rows [0, start) are closed: not even the shortest pair fits there any more
    for i in order:
        s, t = lengths[i]
        fits = (rem_s[start:rows] >= s) & (rem_t[start:rows] >= t)  # (open rows,)
        j = start + int(fits.argmax()) if fits.any() else rows
        if j == rows:
            rem_s[j], rem_t[j] = src_capacity, tgt_capacity
            rows += 1
        rem_s[j] -= s
        rem_t[j] -= t
        row_of[i] = j
        while start < rows and (rem_s[start] < min_s or rem_t[start] < min_t):
            start += 1
    out: list[list[int]] = [[] for _ in range(rows)]
    for i in order:  # within a row: the order the pairs went in
        out[int(row_of[i])].append(i)
    return out


def segment_layout(seg_lengths: Sequence[int], capacity: int) -> tuple[Tensor, Tensor]:
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


def segment_positions(seg: Tensor) -> Tensor:
    """Positions restarting at 0 wherever the id changes along the last dim: (b, n) ids -> (b, n) positions.

    Equal to :func:`segment_layout`'s positions for its real tokens (segments are contiguous); padding (a run of
    0s) counts from 0 too, harmlessly.
    """
    if seg.dim() != 2:
        raise ValueError(f"expected segment ids shaped (B, N), got {tuple(seg.shape)}")
    idx = torch.arange(seg.shape[1], device=seg.device).expand_as(seg)  # (b, n)
    new = torch.ones_like(seg, dtype=torch.bool)  # (b, n) True where a segment starts
    new[:, 1:] = seg[:, 1:] != seg[:, :-1]
    start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (b, n) start of own segment
    return idx - start


def segment_mask(q_seg: Tensor, k_seg: Tensor, causal: bool = False) -> Tensor:
    """Boolean document mask (B, 1, Nq, Nk), True = may attend: same segment id (AND causal if asked).

    Padding (id 0) attends to padding, never to a real token and never seen by one; its outputs are ignored.
    """
    if q_seg.dim() != 2 or k_seg.dim() != 2 or q_seg.shape[0] != k_seg.shape[0]:
        raise ValueError(f"expected (B, Nq) and (B, Nk) segment ids, got {tuple(q_seg.shape)}, {tuple(k_seg.shape)}")
    mask = q_seg[:, None, :, None] == k_seg[:, None, None, :]  # (B, 1, Nq, Nk)
    if causal:
        nq, nk = q_seg.shape[1], k_seg.shape[1]
        mask = mask & torch.ones(nq, nk, dtype=torch.bool, device=q_seg.device).tril()  # (B, 1, Nq, Nk)
    return mask


def packed_seq2seq_batch(rows: Sequence[Sequence[tuple[list[int], list[int]]]], vocab: TaskVocab) -> Batch:
    """A Batch of packed rows: each row a list of (source ids, target ids) pairs laid end to end.

    Per pair exactly what :func:`selfattn.data.tasks.seq2seq_batch` gives it alone — source ``x``,
    ``tgt_in = BOS + y``, ``tgt_out = y + EOS`` — with segment ids k = 1, 2, ... on both sides; padding is
    ``pad_id`` / IGNORE / id 0. The tensors are as wide as the longest row of the batch.
    """
    if vocab.pad_id is None or vocab.bos_id is None or vocab.eos_id is None:
        raise ValueError("packed seq2seq batches need a vocabulary with pad/bos/eos ids, got None among them")
    if not rows or any(not r for r in rows):
        raise ValueError(f"expected non-empty rows of pairs, got row sizes {[len(r) for r in rows]}")
    b = len(rows)
    m = max(sum(len(s) for s, _ in r) for r in rows)
    n = max(sum(len(t) + 1 for _, t in r) for r in rows)
    src = torch.full((b, m), vocab.pad_id, dtype=torch.long)  # (b, m)
    tgt_in = torch.full((b, n), vocab.pad_id, dtype=torch.long)  # (b, n)
    tgt_out = torch.full((b, n), IGNORE, dtype=torch.long)  # (b, n)
    src_seg = torch.zeros((b, m), dtype=torch.long)  # (b, m)
    tgt_seg = torch.zeros((b, n), dtype=torch.long)  # (b, n)
    for i, row in enumerate(rows):
        src_ids: list[int] = []
        tin: list[int] = []
        tout: list[int] = []
        for s, t in row:
            src_ids += s
            tin += [vocab.bos_id, *t]
            tout += [*t, vocab.eos_id]
        src[i, : len(src_ids)] = torch.tensor(src_ids, dtype=torch.long)
        tgt_in[i, : len(tin)] = torch.tensor(tin, dtype=torch.long)
        tgt_out[i, : len(tout)] = torch.tensor(tout, dtype=torch.long)
        src_seg[i] = segment_layout([len(s) for s, _ in row], m)[0]
        tgt_seg[i] = segment_layout([len(t) + 1 for _, t in row], n)[0]
    return Batch(src, tgt_in, tgt_out, src_seg, tgt_seg)


def padding_fraction(widths: Sequence[Sequence[int]]) -> float:
    """Share of the padded positions that are padding, for batches given as their rows' real token counts.

    A batch of rows ``w`` pads every row to ``max(w)``: it occupies ``len(w) * max(w)`` positions and holds
    ``sum(w)`` real tokens (a row is one pair unpacked, or the summed lengths of its pairs packed).
    """
    padded = sum(len(w) * max(w) for w in widths if w)
    real = sum(sum(w) for w in widths)
    return 1.0 - real / padded if padded else 0.0
