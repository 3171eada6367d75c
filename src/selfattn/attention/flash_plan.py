"""The block geometry of backend "flash": which (query block, key block) pairs it computes and the masked
scores of one pair.

Legend: b batch, h query heads, g kv heads (h = g * r), r query heads per kv head, n queries, m keys;
i/j index query/key blocks, bq/bk their sizes.

Mask convention: boolean True = may attend; a floating mask is an additive bias (-inf forbids).
Segment ids ``(q_seg (b, n), k_seg (b, m))``: query i of row b may attend key j only when
``q_seg[b, i] == k_seg[b, j]``. ``causal`` and ``window`` are bottom-right aligned (query i sits at key
position ``i + m - n``).

A pair of blocks is skipped when no query of the block may attend any key of it:

* causal / window: the key range ``[lo, hi)`` of a query block (:func:`key_range`);
* segment ids: per block min/max of the ids of each batch row; the pair is skipped when no batch row's
  ranges overlap (ids need not be sorted for correctness; packed rows, whose ids are non-decreasing,
  are where the ranges are tight and the skipping pays);
* a boolean mask: the pair is skipped when the mask allows nothing in it (one pass over the mask per
  call, at the mask's own broadcast shape).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .structure import window_sides


def key_range(i0: int, i1: int, n: int, m: int, causal: bool,
              window: tuple[int | None, int | None] | None) -> tuple[int, int]:
    """Keys [lo, hi) that some query in rows [i0, i1) may attend (causal/window, bottom-right)."""
    left, right = window_sides(causal, window)
    p0, p1 = i0 + m - n, i1 - 1 + m - n  # key positions of the first and last query
    lo = 0 if left is None else max(0, p0 - left)
    hi = m if right is None else min(m, p1 + right + 1)
    return lo, max(lo, hi)


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


@dataclass(frozen=True)
class Tile:
    """Query rows [i0, i1) x key columns [j0, j1)."""

    i0: int
    i1: int
    j0: int
    j1: int


@dataclass(frozen=True)
class Plan:
    """What every block of one call shares. mask: (b|1, g|1, r|1, n, m) view (bool, True = may attend, or a
    float bias in the compute dtype); q_seg (b, n), k_seg (b, m); slopes (1, g, r, 1, 1); live[qi][kj]:
    whether that pair of blocks may attend anything (segments and boolean mask), None = all."""

    n: int
    m: int
    scale: float
    causal: bool
    window: tuple[int | None, int | None] | None
    block_q: int
    block_k: int
    mask: Tensor | None = None
    q_seg: Tensor | None = None
    k_seg: Tensor | None = None
    slopes: Tensor | None = None
    live: list[list[bool]] | None = None

    def tiles(self, qi: int, i0: int, i1: int) -> list[Tile]:
        """The key tiles query block ``qi`` computes: its key range cut at the key-block grid, minus
        the blocks its segments or the boolean mask rule out."""
        lo, hi = key_range(i0, i1, self.n, self.m, self.causal, self.window)
        out = []
        for kj, (j0, j1) in enumerate(blocks(self.m, self.block_k)):
            c0, c1 = max(j0, lo), min(j1, hi)
            if c0 < c1 and (self.live is None or self.live[qi][kj]):
                out.append(Tile(i0, i1, c0, c1))
        return out


def _mask5(mask: Tensor, g: int, r: int, n: int, m: int) -> Tensor:
    """A mask broadcastable to (b, h, n, m) as a (b|1, g|1, r|1, n, m) view (no copy)."""
    full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, h|1, n|1, m|1)
    heads = full.shape[1]
    lead, rows, cols = full.shape[0], full.shape[2], full.shape[3]
    five = (full.view(lead, g, r, rows, cols) if heads > 1  # (b|1, g, r, n|1, m|1): a split is a view
            else full.unsqueeze(1))  # (b|1, 1, 1, n|1, m|1)
    return five.expand(*five.shape[:3], n, m)


def _mask_live(mask: Tensor, n: int, m: int, bq: int, bk: int) -> Tensor:
    """(nqb, nkb) boolean: the block pair holds an allowed pair, from a boolean mask at its own shape."""
    full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, h|1, n|1, m|1)
    if full.shape[2] == 1:
        rows = full.any(dim=(0, 1, 2)).expand(len(blocks(n, bq)), full.shape[3])  # (nqb, m|1)
    else:
        rows = torch.stack([full[:, :, i0:i1].any(dim=(0, 1, 2)) for i0, i1 in blocks(n, bq)])  # (nqb, m|1)
    rows = rows.expand(rows.shape[0], m)  # (nqb, m)
    pad = -m % bk
    rows = torch.nn.functional.pad(rows, (0, pad))  # (nqb, nkb * bk), padding is not allowed
    return rows.view(rows.shape[0], -1, bk).any(dim=-1)  # (nqb, nkb)


def _segment_live(q_seg: Tensor, k_seg: Tensor, bq: int, bk: int) -> Tensor:
    """(nqb, nkb) boolean: in some batch row the id ranges [min, max] of the two blocks overlap."""
    def ranges(x: Tensor, size: int) -> tuple[Tensor, Tensor]:  # (b, nblocks) each
        lo = torch.stack([x[:, a:z].amin(dim=1) for a, z in blocks(x.shape[1], size)], dim=1)
        hi = torch.stack([x[:, a:z].amax(dim=1) for a, z in blocks(x.shape[1], size)], dim=1)
        return lo, hi

    (q_lo, q_hi), (k_lo, k_hi) = ranges(q_seg, bq), ranges(k_seg, bk)
    overlap = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])  # (b, nqb, nkb)
    return overlap.any(dim=0)


def make_plan(*, n: int, m: int, g: int, r: int, scale: float, causal: bool,
              window: tuple[int | None, int | None] | None, block_q: int, block_k: int, mask: Tensor | None,
              segment_ids: tuple[Tensor, Tensor] | None, slopes: Tensor | None, dtype: torch.dtype,
              skip: bool) -> Plan:
    """The plan of one call (``skip``: build the live table, one host read; off while tracing)."""
    live = None
    if skip and n and m:
        table = None
        if segment_ids is not None:
            table = _segment_live(segment_ids[0], segment_ids[1], block_q, block_k)
        if mask is not None and mask.dtype == torch.bool:
            ml = _mask_live(mask, n, m, block_q, block_k)
            table = ml if table is None else table & ml
        live = None if table is None else table.tolist()
    m5 = None
    if mask is not None:
        m5 = _mask5(mask if mask.dtype == torch.bool else mask.to(dtype), g, r, n, m)
    q_seg, k_seg = (None, None) if segment_ids is None else segment_ids
    return Plan(n, m, scale, causal, window, block_q, block_k, m5, q_seg, k_seg, slopes, live)


def scores(qb: Tensor, kb: Tensor, plan: Plan, t: Tile) -> Tensor:
    """Masked scores of one tile, (b, g, r, bq, bk) in the compute dtype, -inf where forbidden.

    qb: (b, g, r*bq, d) query block; kb: (b, g, bk, d) key block.
    """
    b, g, _, _ = qb.shape
    bq, bk = t.i1 - t.i0, t.j1 - t.j0
    s = torch.matmul(qb, kb.transpose(-2, -1)).view(b, g, -1, bq, bk)  # (b, g, r, bq, bk)
    s.mul_(plan.scale)
    n, m = plan.n, plan.m
    if plan.slopes is not None:  # ALiBi: -slope * |pos_i - j|
        pos = torch.arange(t.i0, t.i1, device=s.device, dtype=s.dtype).unsqueeze(1) + (m - n)  # (bq, 1)
        j = torch.arange(t.j0, t.j1, device=s.device, dtype=s.dtype).unsqueeze(0)  # (1, bk)
        s.sub_(plan.slopes * (pos - j).abs())
    if plan.mask is not None:
        mb = plan.mask[:, :, :, t.i0:t.i1, t.j0:t.j1]  # (b|1, g|1, r|1, bq, bk)
        if mb.dtype == torch.bool:
            s.masked_fill_(~mb, float("-inf"))
        else:
            s.add_(mb)
    if plan.q_seg is not None and plan.k_seg is not None:
        same = plan.q_seg[:, t.i0:t.i1, None] == plan.k_seg[:, None, t.j0:t.j1]  # (b, bq, bk)
        s.masked_fill_(~same.view(b, 1, 1, bq, bk), float("-inf"))
    bad = _block_forbidden(t, n, m, plan.causal, plan.window, s.device)  # (bq, bk) or None
    if bad is not None:
        s.masked_fill_(bad, float("-inf"))
    return s


def _block_forbidden(t: Tile, n: int, m: int, causal: bool, window: tuple[int | None, int | None] | None,
                     device: torch.device | str) -> Tensor | None:
    """(bq, bk) boolean, True = may NOT attend, or None when causal/window allow every pair of the tile."""
    left, right = window_sides(causal, window)
    p0, p1 = t.i0 + m - n, t.i1 - 1 + m - n
    if (left is None or t.j0 >= p1 - left) and (right is None or t.j1 - 1 <= p0 + right):
        return None
    # the pattern depends only on the tile's diagonal offset: cached across tiles and calls
    return _forbidden_pattern(p0 - t.j0, t.i1 - t.i0, t.j1 - t.j0, left, right, str(device))


@functools.lru_cache(maxsize=64)
def _forbidden_pattern(offset: int, bq: int, bk: int, left: int | None, right: int | None, device: str) -> Tensor:
    pos = torch.arange(bq, device=device).unsqueeze(1) + offset  # (bq, 1) key position - j0
    j = torch.arange(bk, device=device).unsqueeze(0)  # (1, bk)
    bad = torch.zeros(bq, bk, dtype=torch.bool, device=device)
    if left is not None:
        bad |= j < pos - left
    if right is not None:
        bad |= j > pos + right
    return bad
