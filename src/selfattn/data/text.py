"""Character-level language modelling on any UTF-8 text file (nanoGPT's shakespeare_char setup).

Legend: b batch, t context length (block size).
The first ``train_fraction`` of the characters is the training split, the rest validation. Training
batches are random windows drawn from a generator seeded by (seed, step): a pure function of the step,
so resuming and DDP sharding are exact (see :mod:`selfattn.task` for the task interface).
Validation covers the whole split in non-overlapping windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ..task import Batch, register_task
from .vocab import Vocab, split_generator


def read_text(path: str | Path) -> str:
    """The file's text, with one-line errors for missing, binary or too-short files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file {str(p)!r} does not exist (expected a UTF-8 text file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ValueError(f"text file {str(p)!r} is empty (expected UTF-8 text to train on)")
    return text


class CharLMTask:
    kind = "lm"
    name = "char"

    def __init__(self, path: str | Path, *, block_size: int = 64, train_fraction: float = 0.9, seed: int = 0,
                 vocab: dict | None = None):
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        text = read_text(path)
        self.path, self.block_size, self.train_fraction, self.seed = str(path), block_size, train_fraction, seed
        self.vocab = Vocab.from_dict(vocab) if vocab is not None else Vocab(sorted(set(text)), kind="char")
        data = torch.tensor(self.vocab.encode(text), dtype=torch.long)  # (N,)
        cut = int(len(data) * train_fraction)
        self.data = {"train": data[:cut], "val": data[cut:]}
        for split, d in self.data.items():
            if len(d) < block_size + 1:
                raise ValueError(f"{str(path)!r}: the {split} split has {len(d)} characters, "
                                 f"need at least block_size + 1 = {block_size + 1}")

    def batch(self, split: str, index: int, size: int) -> Batch:
        d = self.data["train" if split == "train" else "val"]
        g = split_generator(self.seed, split, index)
        starts = torch.randint(0, len(d) - self.block_size, (size,), generator=g)  # (b,)
        offsets = starts[:, None] + torch.arange(self.block_size)  # (b, t)
        return Batch(None, d[offsets], d[offsets + 1])

    def eval_batches(self, split: str = "val", size: int = 256) -> Iterator[Batch]:
        d, t = self.data["train" if split == "train" else "val"], self.block_size
        n_windows = (len(d) - 1) // t
        x = d[: n_windows * t].view(n_windows, t)  # (w, t)
        y = d[1 : n_windows * t + 1].view(n_windows, t)  # (w, t)
        for i in range(0, n_windows, size):
            yield Batch(None, x[i : i + size], y[i : i + size])

    def spec(self) -> dict:
        return {"name": "char", "path": self.path, "block_size": self.block_size,
                "train_fraction": self.train_fraction, "seed": self.seed, "vocab": self.vocab.to_dict()}

    def model_overrides(self) -> dict:
        # learned positions beyond the training context would be untrained: generation crops the context to
        # the last max_len tokens instead (as nanoGPT does)
        return {"kind": "decoder", "vocab_size": len(self.vocab), "pad_id": None, "max_len": self.block_size}


register_task("char", lambda spec: CharLMTask(**spec))

__all__ = ["CharLMTask", "read_text"]
