"""Load a trained model from a self-contained run directory (what `selfattn train` writes)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.subword import Subword
from ..data.vocab import Vocab
from ..models import ModelConfig, build_model
from .checkpoint import average_checkpoints, list_checkpoints, load_state_into, load_weights
from .trainer import read_run_config


class SubwordVocab(Vocab):
    """A translation run's vocabulary: its SentencePiece pieces, and text encoded / decoded by its own
    SentencePiece model (a plain word :class:`Vocab` would split on spaces and find mostly ``<unk>``)."""

    def __init__(self, subword: Subword):
        super().__init__(subword.vocab().tokens, "word")
        self.subword = subword

    def encode(self, text: str) -> list[int]:
        return self.subword.encode(text)

    def decode(self, ids, *, strip: bool = True) -> str:
        return self.subword.decode(ids.tolist() if isinstance(ids, torch.Tensor) else ids)


def run_vocab(config: dict) -> Vocab:
    """The tokenizer of a run: its SentencePiece model when the task has one, else its :class:`Vocab`."""
    task = config.get("task", {})
    if isinstance(task, dict) and task.get("subword"):
        return SubwordVocab(Subword.from_base64(task["subword"], task.get("subword_type", "unigram")))
    return Vocab.from_dict(config["vocab"])


def find_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The latest (or step ``step``) complete checkpoint of a run directory."""
    ckpts = list_checkpoints(Path(run_dir) / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"{str(run_dir)!r} has no complete checkpoint under checkpoints/")
    if step is None:
        return ckpts[-1]
    for c in ckpts:
        if int(c.name.split("_")[1]) == step:
            return c
    raise ValueError(f"no checkpoint for step {step} in {str(run_dir)!r}; have steps "
                     f"{[int(c.name.split('_')[1]) for c in ckpts]}")


def load_run(run_dir: str | Path, *, step: int | None = None, average_last: int = 0,
             device: str = "cpu") -> tuple[torch.nn.Module, Vocab, dict]:
    """(model in eval mode, tokenizer, config dict). ``average_last=k`` averages the last k checkpoints.

    The tokenizer is the run's :class:`Vocab`, or for a translation run a :class:`SubwordVocab`."""
    config = read_run_config(run_dir)
    if "model" not in config or "vocab" not in config:
        raise ValueError(f"{str(run_dir)!r}/config.json lacks 'model' or 'vocab'")
    model = build_model(ModelConfig.from_dict(config["model"]))
    if average_last > 1:
        ckpts = list_checkpoints(Path(run_dir) / "checkpoints")[-average_last:]
        load_state_into(model, average_checkpoints(ckpts))
    else:
        load_weights(model, find_checkpoint(run_dir, step))
    return model.to(device).eval(), run_vocab(config), config
