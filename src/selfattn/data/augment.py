"""Data augmentation for small parallel corpora, applied to subword ids of training pairs.

Self-attention is data hungry; on 29k Multi30k pairs these noise the input so the model cannot memorise:

- **word dropout** (Sennrich et al. 2016, WMT16 Edinburgh systems; Iyyer et al. 2015): each source *word*
  (all its pieces) is removed with probability ``word_dropout``;
- **blanking** (Xie et al. 2017, "Data noising as smoothing"): each source word's pieces become ``<unk>``
  with probability ``blank``;
- **SwitchOut-style replacement** (Wang et al. 2018): each token, source and target, is replaced by a
  uniformly random non-special token with probability ``switchout``. (SwitchOut proper first draws the
  *number* of replacements from a tempered distribution; independent Bernoulli choices keep the same
  expected rate and are simpler to reason about.)

Subword regularisation (sampled segmentations / BPE-dropout) lives in :mod:`selfattn.data.subword`.
All draws come from a ``torch.Generator`` so a batch is a pure function of its seed (exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUBWORD_SIDES = ("src", "tgt", "both")


@dataclass
class AugmentConfig:
    word_dropout: float = 0.0  # P(drop a source word); ~0.1 helps small data (Sennrich et al. 2016 used 0.1-0.2)
    blank: float = 0.0  # P(replace a source word by <unk>); Xie et al. 2017 used ~0.1
    switchout: float = 0.0  # P(replace a token, both sides, by a random one); Wang et al. 2018 ~0.05-0.1
    subword_alpha: float = 0.0  # subword sampling: unigram smoothing / BPE-dropout rate; 0 = off (Kudo 2018: 0.1)
    subword_side: str = "both"  # where sampled segmentations apply: "src", "tgt" or "both" (Kudo 2018: both)

    def __post_init__(self) -> None:
        for name in ("word_dropout", "blank", "switchout", "subword_alpha"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"augmentation rate {name} must be in [0, 1), got {v!r}")
        if self.subword_side not in SUBWORD_SIDES:
            raise ValueError(f"subword_side must be one of {SUBWORD_SIDES}, got {self.subword_side!r}")

    @property
    def active(self) -> bool:
        return any((self.word_dropout, self.blank, self.switchout, self.subword_alpha))


def _word_ids(word_starts: list[bool]) -> list[int]:
    """Word index of each piece (a piece that does not start a word joins the previous word)."""
    out, w = [], -1
    for start in word_starts:
        w += 1 if (start or w < 0) else 0
        out.append(w)
    return out


def word_dropout(ids: list[int], word_starts: list[bool], p: float, g: torch.Generator) -> list[int]:
    """Remove each whole word with probability ``p``; never returns an empty sequence."""
    if p <= 0 or not ids:
        return list(ids)
    words = _word_ids(word_starts)
    drop = (torch.rand(words[-1] + 1, generator=g) < p).tolist()
    out = [t for t, w in zip(ids, words) if not drop[w]]
    return out if out else list(ids)


def blank_words(ids: list[int], word_starts: list[bool], p: float, unk_id: int, g: torch.Generator) -> list[int]:
    """Replace each whole word's pieces by ``unk_id`` with probability ``p`` (one <unk> per piece)."""
    if p <= 0 or not ids:
        return list(ids)
    words = _word_ids(word_starts)
    hit = (torch.rand(words[-1] + 1, generator=g) < p).tolist()
    return [unk_id if hit[w] else t for t, w in zip(ids, words)]


def switchout(ids: list[int], p: float, low: int, high: int, g: torch.Generator) -> list[int]:
    """Replace each token with probability ``p`` by one drawn uniformly from ``[low, high)``."""
    if p <= 0 or not ids:
        return list(ids)
    if not 0 <= low < high:
        raise ValueError(f"switchout needs 0 <= low < high, got [{low}, {high})")
    hit = torch.rand(len(ids), generator=g) < p
    repl = torch.randint(low, high, (len(ids),), generator=g)
    return torch.where(hit, repl, torch.as_tensor(ids, dtype=torch.long)).tolist()


def augment_pair(src: list[int], tgt: list[int], cfg: AugmentConfig, *, word_starts: list[bool],
                 unk_id: int, vocab_low: int, vocab_high: int,
                 g: torch.Generator) -> tuple[list[int], list[int]]:
    """Apply the configured noise to one (source ids, target ids) pair: dropout, blanking, then SwitchOut."""
    if cfg.word_dropout:
        kept = word_dropout(list(range(len(src))), word_starts, cfg.word_dropout, g)  # surviving positions
        src, word_starts = [src[i] for i in kept], [word_starts[i] for i in kept]
    if cfg.blank:
        src = blank_words(src, word_starts, cfg.blank, unk_id, g)
    if cfg.switchout:
        src = switchout(src, cfg.switchout, vocab_low, vocab_high, g)
        tgt = switchout(tgt, cfg.switchout, vocab_low, vocab_high, g)
    return src, tgt


__all__ = ["AugmentConfig", "augment_pair", "blank_words", "switchout", "word_dropout"]
