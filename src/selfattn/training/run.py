"""Load a trained model from a self-contained run directory (what `selfattn train` writes)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.vocab import Vocab
from ..models import ModelConfig, build_model
from .checkpoint import average_checkpoints, list_checkpoints, load_state_into, load_weights
from .trainer import read_run_config


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
    """(model in eval mode, vocab, config dict). ``average_last=k`` averages the last k checkpoints."""
    config = read_run_config(run_dir)
    if "model" not in config or "vocab" not in config:
        raise ValueError(f"{str(run_dir)!r}/config.json lacks 'model' or 'vocab'")
    model = build_model(ModelConfig.from_dict(config["model"]))
    if average_last > 1:
        ckpts = list_checkpoints(Path(run_dir) / "checkpoints")[-average_last:]
        load_state_into(model, average_checkpoints(ckpts))
    else:
        load_weights(model, find_checkpoint(run_dir, step))
    return model.to(device).eval(), Vocab.from_dict(config["vocab"]), config
