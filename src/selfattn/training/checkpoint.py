"""Crash-safe checkpoints: safetensors weights, JSON + safetensors training state, atomic writes.

A run directory is self-contained::

    RUN/config.json                   model config, train config, task spec, vocab (JSON)
    RUN/metrics.jsonl                 one JSON object per log/eval line
    RUN/loss.png                      the loss curve (written at the end)
    RUN/checkpoints/step_00000200/    one complete checkpoint:
        model.safetensors             weights (tied matrices stored once; loading never unpickles)
        optimizer.safetensors         Adam moments and step counts, keyed "state.<param index>.<name>"
        rng.safetensors               torch CPU (and CUDA) generator states
        state.json                    step, data position, optimizer param groups, python RNG, early-stop state

Every file is written to a temporary name, fsynced and renamed; a checkpoint is first assembled in a
hidden temporary directory and then renamed into place (a directory rename is atomic), so a process
killed at any moment leaves only complete checkpoints under their final names. :func:`latest_checkpoint`
ignores (and :func:`clean_partial` removes) leftovers. Keep-last-k pruning runs after the rename.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ..io import atomic_write_bytes, atomic_write_json, fsync_dir
from .faults import fault_point

FORMAT = 1  # bump when the layout changes
PREFIX = "step_"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(ckpt_root: str | Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, state: dict | None = None,
                    keep_last: int = 0) -> Path:
    """Write checkpoint ``step`` atomically under ``ckpt_root``; prune to the last ``keep_last`` (0 = keep all)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    fault_point("save", "weights", step)  # tests only (SELFATTN_TEST_FAULT); a no-op otherwise
    meta: dict[str, Any] = {"format": FORMAT, "step": step, **(state or {})}
    if optimizer is not None:
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = opt_meta
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    meta["rng"] = rng_meta
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_dir(tmp)
    fault_point("save", "rename", step)
    if final.exists():  # re-saving a step (e.g. after a resume): move the old one aside first
        old = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    fault_point("save", "renamed", step)
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def clean_partial(ckpt_root: str | Path) -> None:
    """Remove temporary leftovers of a process killed while writing."""
    root = Path(ckpt_root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def read_state(ckpt: str | Path) -> dict:
    path = Path(ckpt) / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(ckpt)!r} is not a checkpoint directory (no state.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None


def load_weights(model: nn.Module, ckpt: str | Path) -> None:
    """Load ``model.safetensors`` of checkpoint ``ckpt`` into ``model`` (strict; never unpickles)."""
    path = Path(ckpt) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{str(ckpt)!r} has no model.safetensors")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint {str(ckpt)!r} does not match the model: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(ckpt)!r} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def load_checkpoint(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    *, restore_rng: bool = True) -> dict:
    """Restore weights, optimizer and RNG states from ``ckpt``; returns the state.json dict."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    load_weights(model, ckpt)
    if optimizer is not None and "optimizer" in state:
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
    if restore_rng:
        set_rng_state(load_file(str(ckpt / "rng.safetensors")), state["rng"])
    return state


def average_checkpoints(ckpts: list[str | Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the weights of ``ckpts`` (the paper averages the last 5 or 20, §6.1).

    Returns a state dict for :func:`safetensors.torch.load_model`-style loading via ``load_state_dict``
    (tied matrices appear once, under the name safetensors kept)."""
    if not ckpts:
        raise ValueError("average_checkpoints needs at least one checkpoint, got none")
    total: dict[str, torch.Tensor] = {}
    for c in ckpts:
        sd = load_file(str(Path(c) / "model.safetensors"))
        if total and set(sd) != set(total):
            raise ValueError(f"checkpoint {str(c)!r} has different tensors from the first one")
        for k, v in sd.items():
            total[k] = total[k] + v.double() if k in total else v.double()
    return {k: (v / len(ckpts)).to(load_file(str(Path(ckpts[0]) / "model.safetensors"))[k].dtype)
            for k, v in total.items()}


def load_state_into(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load a safetensors-style state dict (tied matrices stored once) into ``model``."""
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise ValueError(f"weights do not match the model: {str(e).splitlines()[-1].strip()}") from None
    tied = {name for name in missing if _is_tied(model, name, sd)}
    if set(missing) - tied or unexpected:
        raise ValueError(f"weights do not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def _is_tied(model: nn.Module, name: str, sd: dict) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    return any(k in params and params[k] is params[name] for k in sd)
