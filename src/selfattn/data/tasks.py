"""Synthetic sequence tasks (copy, reverse, sort, addition) and the task interface the Trainer uses.

Legend: b batch, m source length, n target length.

The task interface (what :class:`selfattn.training.Trainer` needs; a translation task plugs in the same way):

- ``task.name`` (str), ``task.kind`` ("seq2seq" or "lm"), ``task.vocab`` (a :class:`Vocab`);
- ``task.batch(split, index, size) -> Batch``: batch number ``index`` of ``split``, a **pure function** of
  (task seed, split, index). The data position is therefore just the step count, so resuming is exact and
  every DDP rank can build the same global batch and take its own rows;
- ``task.eval_batches(split, size) -> Iterator[Batch]``: the whole fixed evaluation set of ``split``;
- ``task.spec() -> dict`` (JSON) and :func:`task_from_spec` to rebuild it from a run directory;
- ``task.model_overrides() -> dict``: ModelConfig fields the task fixes (vocab size, pad id, kind).

A :class:`Batch` holds ``src`` (b, m) source ids or None for language models, ``tgt_in`` (b, n) decoder
inputs (BOS + target, teacher forcing) and ``tgt_out`` (b, n) targets (target + EOS) with
``IGNORE`` (-100) where there is no target. Padding uses ``vocab.pad_id``; models derive masks from it
(True = real token, may be attended).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

IGNORE = -100  # target id skipped by the loss (torch's cross_entropy default ignore_index)
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
        return [self.stoi.get(t, self.unk_id) for t in text.split()]

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
    def from_dict(cls, d: dict) -> "Vocab":
        if not isinstance(d, dict) or "tokens" not in d:
            raise ValueError(f"a vocab needs a dict with 'tokens', got {type(d).__name__}")
        return cls(list(d["tokens"]), d.get("kind", "word"))


@dataclass
class Batch:
    src: Tensor | None  # (b, m) source ids; None for language models
    tgt_in: Tensor  # (b, n) decoder input (BOS + target for seq2seq)
    tgt_out: Tensor  # (b, n) next-token targets, IGNORE where none

    def __len__(self) -> int:
        return self.tgt_in.shape[0]

    def rows(self, index: slice | Tensor) -> "Batch":
        return Batch(None if self.src is None else self.src[index], self.tgt_in[index], self.tgt_out[index])

    @property
    def num_targets(self) -> int:
        return int((self.tgt_out != IGNORE).sum())

    def to(self, device) -> "Batch":
        return Batch(None if self.src is None else self.src.to(device), self.tgt_in.to(device),
                     self.tgt_out.to(device))


def seq2seq_batch(pairs: list[tuple[list[int], list[int]]], vocab: Vocab) -> Batch:
    """Pad (source ids, target ids) pairs into a Batch: tgt_in = BOS + y, tgt_out = y + EOS."""
    b = len(pairs)
    m = max(len(s) for s, _ in pairs)
    n = max(len(t) for _, t in pairs) + 1
    src = torch.full((b, m), vocab.pad_id, dtype=torch.long)  # (b, m)
    tgt_in = torch.full((b, n), vocab.pad_id, dtype=torch.long)  # (b, n)
    tgt_out = torch.full((b, n), IGNORE, dtype=torch.long)  # (b, n)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        tgt_in[i, : len(t) + 1] = torch.tensor([vocab.bos_id, *t], dtype=torch.long)
        tgt_out[i, : len(t) + 1] = torch.tensor([*t, vocab.eos_id], dtype=torch.long)
    return Batch(src, tgt_in, tgt_out)


def _generator(seed: int, split: str, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + SPLITS.index(split) * 7_919 + index * 104_729) % (2**63 - 1))
    return g


TASKS = ("copy", "reverse", "sort", "addition")


class SyntheticTask:
    """copy / reverse / sort a sequence of numbers, or add two numbers digit by digit.

    Tokens are the numbers ``0 .. num_symbols-1`` written as words ("1 2 3 4 5"), plus "+" for addition
    (whose operands are written most significant digit first: "1 2 + 3 4" -> "4 6").
    Held-out: a sequence whose CRC32 is divisible by ``holdout_mod`` is never a training example,
    so validation measures generalisation to unseen sequences (Graves et al. 2014 style algorithmic tasks).
    """

    kind = "seq2seq"

    def __init__(self, name: str = "reverse", *, min_len: int = 1, max_len: int = 8, num_symbols: int = 10,
                 seed: int = 0, val_size: int = 512, holdout_mod: int = 10):
        if name not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {name!r}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        if name == "addition" and num_symbols != 10:
            raise ValueError(f"addition works in base 10 (num_symbols=10), got {num_symbols}")
        if num_symbols < 2:
            raise ValueError(f"num_symbols must be >= 2, got {num_symbols}")
        self.name, self.min_len, self.max_len = name, min_len, max_len
        self.num_symbols, self.seed, self.val_size, self.holdout_mod = num_symbols, seed, val_size, holdout_mod
        self.vocab = Vocab([*SPECIALS, *(str(i) for i in range(num_symbols)), "+"])
        self._val = self._eval_set("val", val_size)

    # -- examples ---------------------------------------------------------------------------------
    def solve(self, xs: list[int]) -> list[int]:
        """The target ids for source ids ``xs`` (the task's definition, also used by tests)."""
        if self.name == "copy":
            return list(xs)
        if self.name == "reverse":
            return xs[::-1]
        if self.name == "sort":
            return sorted(xs)
        plus = self.vocab.stoi["+"]
        i = xs.index(plus)
        digit = lambda ids: int("".join(self.vocab.tokens[t] for t in ids))  # noqa: E731
        return [self.vocab.stoi[c] for c in str(digit(xs[:i]) + digit(xs[i + 1:]))]

    def held_out(self, xs: list[int]) -> bool:
        return zlib.crc32(bytes(x % 256 for x in xs)) % self.holdout_mod == 0

    def _sample(self, g: torch.Generator) -> list[int]:
        first = 4  # id of the symbol "0"
        if self.name == "addition":
            la, lb = (int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=g)) for _ in range(2))
            a, b = (torch.randint(0, 10, (k,), generator=g).tolist() for k in (la, lb))
            return [first + d for d in a] + [self.vocab.stoi["+"]] + [first + d for d in b]
        n = int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=g))
        return (torch.randint(0, self.num_symbols, (n,), generator=g) + first).tolist()

    def _eval_set(self, split: str, size: int) -> list[list[int]]:
        g, seen, out = _generator(self.seed, split, 0), set(), []
        for _ in range(size * 200):
            if len(out) == size:
                break
            xs = self._sample(g)
            if self.held_out(xs) and tuple(xs) not in seen:
                seen.add(tuple(xs))
                out.append(xs)
        return out

    # -- the task interface -----------------------------------------------------------------------
    def batch(self, split: str, index: int, size: int) -> Batch:
        if split != "train":
            return seq2seq_batch([(x, self.solve(x)) for x in self._val[:size]], self.vocab)
        g, pairs = _generator(self.seed, split, index), []
        while len(pairs) < size:
            xs = self._sample(g)
            if not self.held_out(xs):
                pairs.append((xs, self.solve(xs)))
        return seq2seq_batch(pairs, self.vocab)

    def eval_batches(self, split: str = "val", size: int = 256) -> Iterator[Batch]:
        for i in range(0, len(self._val), size):
            chunk = self._val[i : i + size]
            yield seq2seq_batch([(x, self.solve(x)) for x in chunk], self.vocab)

    def eval_sources(self, split: str = "val") -> list[list[int]]:
        return list(self._val)

    def spec(self) -> dict:
        return {"name": self.name, "min_len": self.min_len, "max_len": self.max_len,
                "num_symbols": self.num_symbols, "seed": self.seed, "val_size": self.val_size,
                "holdout_mod": self.holdout_mod}

    def model_overrides(self) -> dict:
        return {"kind": "encoder-decoder", "vocab_size": len(self.vocab), "pad_id": self.vocab.pad_id,
                "max_len": max(64, 2 * self.max_len + 4)}


def task_from_spec(spec: dict):
    """Rebuild a task from ``task.spec()`` (stored in a run directory's config.json)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a task spec needs a dict with 'name', got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name")
    if name == "char":
        from .text import CharLMTask

        return CharLMTask(**spec)
    if name == "translate":
        from ..translation.task import TranslationTask

        return TranslationTask.from_spec(spec)
    return SyntheticTask(name, **spec)
