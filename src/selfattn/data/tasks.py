"""Synthetic sequence tasks (copy, reverse, sort, addition) behind the :class:`selfattn.task.Task` interface.

Legend: b batch, m source length, n target length.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import torch

from ..task import IGNORE, Batch, register_task
from .vocab import SPECIALS, Vocab, split_generator


def seq2seq_batch(pairs: list[tuple[list[int], list[int]]], vocab: Vocab) -> Batch:
    """Pad (source ids, target ids) pairs into a Batch: tgt_in = BOS + y, tgt_out = y + EOS."""
    if vocab.pad_id is None or vocab.bos_id is None or vocab.eos_id is None:
        raise ValueError(f"seq2seq batches need a word vocabulary with pad/bos/eos, got a {vocab.kind} vocabulary")
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
        digit = lambda ids: int("".join(self.vocab.tokens[t] for t in ids))
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
        g, seen, out = split_generator(self.seed, split, 0), set[tuple[int, ...]](), list[list[int]]()
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
        g, pairs = split_generator(self.seed, split, index), list[tuple[list[int], list[int]]]()
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


def _from_spec(name: str):
    return lambda spec: SyntheticTask(name, **spec)


for _name in TASKS:
    register_task(_name, _from_spec(_name))

__all__ = ["TASKS", "SyntheticTask", "seq2seq_batch"]
