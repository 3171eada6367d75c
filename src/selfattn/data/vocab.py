"""Word and character vocabularies, and the per-(seed, split, index) generator that makes batches pure functions.

Ids of the specials in every word vocabulary: pad 0, bos 1, eos 2, unk 3.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3 in every word vocabulary
SPLITS = ("train", "val", "test")


class Vocab:
    """Token strings <-> ids. ``kind="word"`` splits text on whitespace and has the 4 specials
    (pad 0, bos 1, eos 2, unk 3); ``kind="char"`` maps each character and has no specials."""

    def __init__(self, tokens: list[str], kind: str = "word"):
        if kind not in ("word", "char"):
            raise ValueError(f"vocab kind must be 'word' or 'char', got {kind!r}")
        if len(set(tokens)) != len(tokens) or not tokens:
            raise ValueError(f"vocab tokens must be non-empty and unique, got {len(tokens)} tokens")
        self.tokens, self.kind = list(tokens), kind
        self.stoi = {t: i for i, t in enumerate(self.tokens)}
        word = kind == "word"
        self.pad_id = 0 if word else None
        self.bos_id = 1 if word else None
        self.eos_id = 2 if word else None
        self.unk_id = 3 if word else None

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        if self.kind == "char":
            bad = sorted({c for c in text if c not in self.stoi})
            if bad:
                raise ValueError(f"characters {bad[:10]} are not in the {len(self)}-character vocabulary")
            return [self.stoi[c] for c in text]
        unk = self.unk_id if self.unk_id is not None else 3
        return [self.stoi.get(t, unk) for t in text.split()]

    def decode(self, ids: list[int] | Tensor, *, strip: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if self.kind == "char":
            return "".join(self.tokens[i] for i in ids)
        if strip:  # stop at EOS, drop pad/bos
            ids = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
            ids = [i for i in ids if i not in (self.pad_id, self.bos_id)]
        return " ".join(self.tokens[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if not isinstance(d, dict) or "tokens" not in d:
            raise ValueError(f"a vocab needs a dict with 'tokens', got {type(d).__name__}")
        return cls(list(d["tokens"]), d.get("kind", "word"))


def split_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A generator seeded by (task seed, split, batch index): batches drawn from it are pure functions of the
    index, so resuming and DDP sharding are exact."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + SPLITS.index(split) * 7_919 + index * 104_729) % (2**63 - 1))
    return g


__all__ = ["SPECIALS", "SPLITS", "Vocab", "split_generator"]
