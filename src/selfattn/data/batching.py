"""Batches by token count with length bucketing, and padding with masks.

Legend: b batch, m source length, n target length.

The paper batches "sentence pairs together by approximate sequence length. Each training batch contained a
set of sentence pairs containing approximately 25000 source tokens and 25000 target tokens" (§5.1).
:func:`token_batches` does that: pairs sorted by length (ties broken at random, so batches differ between
seeds), then cut greedily so that each side's **padded** size ``b * max length`` stays within
``max_tokens`` (padded size is what costs memory and time). Every pair lands in exactly one batch; the
batch order is shuffled. Masks are boolean with **True = real token** (may be attended).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def token_batches(src_lens: Sequence[int], tgt_lens: Sequence[int], max_tokens: int, *,
                  generator: torch.Generator | None = None, shuffle: bool = True,
                  max_sentences: int = 0) -> list[list[int]]:
    """Index lists of pairs, each batch with ``b * max(src len) <= max_tokens`` and the same for targets.

    ``max_sentences`` (0 = no limit) caps b as well. A single pair longer than ``max_tokens`` is a
    ValueError (filter such pairs first). With ``shuffle`` the ties inside a length and the batch order
    are random (from ``generator``); without it batches go from short to long.
    """
    if len(src_lens) != len(tgt_lens):
        raise ValueError(f"src_lens and tgt_lens must have equal length, got {len(src_lens)} and {len(tgt_lens)}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if max_sentences < 0:
        raise ValueError(f"max_sentences must be >= 0, got {max_sentences}")
    n = len(src_lens)
    src_l = torch.as_tensor(list(src_lens), dtype=torch.long)
    tgt_l = torch.as_tensor(list(tgt_lens), dtype=torch.long)
    too_long = ((src_l > max_tokens) | (tgt_l > max_tokens)).nonzero().flatten()
    if len(too_long):
        i = int(too_long[0])
        raise ValueError(f"pair {i} has {int(src_l[i])} source / {int(tgt_l[i])} target tokens, more than "
                         f"max_tokens={max_tokens}; filter long pairs or raise max_tokens")
    if n == 0:
        return []
    tie = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    # sort by (source length, target length, random tie-break): stable sorts from the least key up
    order = tie
    order = order[torch.sort(tgt_l[order], stable=True).indices]
    order = order[torch.sort(src_l[order], stable=True).indices]
    batches: list[list[int]] = []
    cur: list[int] = []
    ms = mt = 0
    for i in order.tolist():
        s, t = int(src_l[i]), int(tgt_l[i])
        ms2, mt2 = max(ms, s), max(mt, t)
        full = max_sentences and len(cur) >= max_sentences
        if cur and (full or (len(cur) + 1) * ms2 > max_tokens or (len(cur) + 1) * mt2 > max_tokens):
            batches.append(cur)
            cur, ms2, mt2 = [], s, t
        cur.append(i)
        ms, mt = ms2, mt2
    batches.append(cur)
    if shuffle:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[p] for p in perm]
    return batches


def pad(seqs: Sequence[Sequence[int]], pad_id: int, *, length: int | None = None) -> tuple[Tensor, Tensor]:
    """(ids (b, L), mask (b, L)) with ``mask`` True at real tokens; L = longest sequence unless given."""
    if not seqs:
        raise ValueError("pad needs at least one sequence, got none")
    longest = max(len(s) for s in seqs)
    L = longest if length is None else length
    if L < longest:
        raise ValueError(f"length {L} is shorter than the longest sequence ({longest})")
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)  # (b, L)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)  # (b, L) True = real token
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def padded_tokens(batch: Sequence[int], lens: Sequence[int]) -> int:
    """b * max length of ``batch`` (indices into ``lens``): the padded size the budget bounds."""
    return len(batch) * max(lens[i] for i in batch) if batch else 0


__all__ = ["pad", "padded_tokens", "token_batches"]
