"""Load a trained model from a self-contained run directory (what `selfattn train` writes)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.subword import Subword
from ..data.vocab import Vocab
from ..models import ModelConfig, build_model
from .checkpoint import (
    DamagedCheckpoint,
    average_checkpoints,
    checkpoint_step,
    fallback_note,
    latest_intact_checkpoint,
    list_checkpoints,
    load_state_into,
    load_weights,
    verify_checkpoint,
    warn,
)
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
    """Checkpoint ``step`` of a run directory, or (``step=None``) the newest intact one — saying on stderr
    in one line which damaged newer ones were skipped."""
    root = Path(run_dir) / "checkpoints"
    if step is None:
        ckpt, skipped = latest_intact_checkpoint(root)
        if ckpt is None:
            why = f": {fallback_note(None, skipped)}" if skipped else ""
            raise FileNotFoundError(f"{str(run_dir)!r} has no complete checkpoint under checkpoints/{why}")
        warn(fallback_note(ckpt, skipped))
        return ckpt
    ckpts = list_checkpoints(root)
    for c in ckpts:
        if checkpoint_step(c) == step:
            return c
    raise ValueError(f"no checkpoint for step {step} in {str(run_dir)!r}; have steps "
                     f"{[checkpoint_step(c) for c in ckpts]}")


def last_intact(run_dir: str | Path, k: int) -> list[Path]:
    """The last ``k`` checkpoints whose files read back (for averaging), saying on stderr which were skipped."""
    found, skipped = [], []
    for c in reversed(list_checkpoints(Path(run_dir) / "checkpoints")):
        if len(found) == k:
            break
        try:
            verify_checkpoint(c)
            found.append(c)
        except DamagedCheckpoint as e:
            skipped.append((c, str(e)))
    if skipped:
        warn("; ".join(f"checkpoint {p.name} is damaged ({why})" for p, why in skipped)
             + f"; averaging {', '.join(c.name for c in reversed(found)) or 'nothing'}")
    if not found:
        raise FileNotFoundError(f"{str(run_dir)!r} has no intact checkpoint under checkpoints/ to average")
    return found[::-1]


def load_run(run_dir: str | Path, *, step: int | None = None, average_last: int = 0,
             device: str = "cpu") -> tuple[torch.nn.Module, Vocab, dict]:
    """(model in eval mode, tokenizer, config dict). ``average_last=k`` averages the last k intact checkpoints;
    without ``step`` a damaged newest checkpoint is skipped for the newest intact one (said on stderr).

    The tokenizer is the run's :class:`Vocab`, or for a translation run a :class:`SubwordVocab`."""
    config = read_run_config(run_dir)
    if "model" not in config or "vocab" not in config:
        raise ValueError(f"{str(run_dir)!r}/config.json lacks 'model' or 'vocab'")
    model = build_model(ModelConfig.from_dict(config["model"]))
    if average_last > 1:
        load_state_into(model, average_checkpoints(last_intact(run_dir, average_last)))
    else:
        load_weights(model, find_checkpoint(run_dir, step))
    return model.to(device).eval(), run_vocab(config), config
