"""Crash-safe checkpoints: safetensors weights, JSON + safetensors training state, atomic writes.

A run directory is self-contained::

    RUN/config.json                   model config, train config, task spec, vocab (JSON)
    RUN/metrics.jsonl                 one JSON object per log/eval line
    RUN/loss.png                      the loss curve (written at the end)
    RUN/checkpoints/step_00000200/    one complete checkpoint:
        model.safetensors             weights (tied matrices stored once; loading never unpickles)
        optimizer.safetensors         Adam moments and step counts, keyed "state.<param index>.<name>"
        rng.safetensors               torch CPU (and CUDA) generator states
        state.json                    step, data position, optimizer param groups, python RNG, early-stop state,
                                      size and SHA-256 of each file above

A checkpoint is assembled in a hidden ``.step_N.tmp-PID`` directory, every file fsynced, then renamed
into place (a directory rename is atomic). Re-saving an existing step renames the old one to
``.step_N.old-PID`` first — a rollback journal: until the new one is in place the old one is complete
under that name, :func:`list_checkpoints` lists it for step N, and :func:`clean_partial` (run by the
writer on resume) renames it back instead of deleting it. Pruning renames to ``.step_N.del-PID`` before
deleting, so no half-deleted checkpoint is ever listed. A process killed at any moment therefore leaves
every step it had complete, old or new (tests/training/test_crash_atomic.py kills a save at each step).

Reading trusts nothing (see :mod:`.checkpoint_check`): a damaged file is a one-line
:class:`DamagedCheckpoint` naming it, and :func:`latest_intact_checkpoint` gives the newest checkpoint
whose files all read back, with the damaged newer ones and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from ..io import atomic_write_bytes, atomic_write_json, fsync_dir  # noqa: F401  (re-exported: old imports)
from .checkpoint_check import (
    FORMAT,
    DamagedCheckpoint,
    check_optimizer_state,
    check_rng_tensors,
    file_digest,
    header_keys,
    load_tensors,
    optimizer_state,
    parse_state,
)
from .faults import fault_point

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
    """Write checkpoint ``step`` atomically under ``ckpt_root``; prune to the last ``keep_last`` (0 = keep all).

    Killed at any point, the directory holds step ``step`` complete, old or new (see the module docstring)."""
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
    meta["files"] = {f.name: file_digest(f) for f in sorted(tmp.iterdir())}  # bit rot shows at verification
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_dir(tmp)
    fault_point("save", "rename", step)
    if final.exists():  # re-saving a step (e.g. after a resume): the old one becomes the rollback journal
        old = root / f".{final.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        fsync_dir(root)  # from here until the next rename, step `step` is complete only as `old`
        os.replace(tmp, final)
        fsync_dir(root)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
        fsync_dir(root)
    fault_point("save", "renamed", step)
    if keep_last:
        for stale in [p for p in list_checkpoints(root) if p.name.startswith(PREFIX)][:-keep_last]:
            _remove_atomically(stale)
    return final


def _remove_atomically(ckpt: Path) -> None:
    """Rename out of sight first, then delete: a crash never leaves a half-deleted checkpoint listed."""
    gone = ckpt.with_name(f".{ckpt.name}.del-{os.getpid()}")
    os.replace(ckpt, gone)
    fsync_dir(ckpt.parent)
    shutil.rmtree(gone, ignore_errors=True)


def checkpoint_step(ckpt: str | Path) -> int | None:
    """The step of a checkpoint directory name (``step_N``, or the journal ``.step_N.old-PID``); None otherwise."""
    name = Path(ckpt).name
    if name.startswith(f".{PREFIX}") and ".old-" in name:
        name = name[1:].split(".old-")[0]
    digits = name[len(PREFIX):]
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def _candidates(root: Path) -> list[Path]:
    """Every checkpoint directory, one per step, oldest first: ``step_N``, or its journal copy when a re-save
    was interrupted between its two renames (the old checkpoint is then complete only there)."""
    if not root.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for p in sorted(root.iterdir()):
        step = checkpoint_step(p)
        if step is not None and p.is_dir() and (step not in by_step or p.name.startswith(PREFIX)):
            by_step[step] = p
    return [by_step[k] for k in sorted(by_step)]


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ``ckpt_root`` (directories with a state.json), oldest first."""
    return [p for p in _candidates(Path(ckpt_root)) if (p / "state.json").is_file()]


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def verify_checkpoint(ckpt: str | Path) -> dict:
    """Read back everything of ``ckpt`` that needs no model: state.json (validated), the safetensors
    headers (sizes included) and the RNG tensors. Returns the state; DamagedCheckpoint naming the file."""
    ckpt = Path(ckpt)
    if not (ckpt / "state.json").is_file():
        raise DamagedCheckpoint(f"{ckpt / 'state.json'} is missing")
    state = parse_state(ckpt / "state.json")
    step = checkpoint_step(ckpt)
    if step is not None and step != state["step"]:
        raise DamagedCheckpoint(f"{ckpt / 'state.json'}: expected 'step': {step} (the directory's), "
                                f"got {state['step']}")
    header_keys(ckpt / "model.safetensors")
    if "optimizer" in state:
        header_keys(ckpt / "optimizer.safetensors")
    check_rng_tensors(load_tensors(ckpt / "rng.safetensors"), ckpt / "rng.safetensors")
    for name, want in state.get("files", {}).items():  # last: the checks above say more; old checkpoints have none
        if file_digest(ckpt / name) != want:
            raise DamagedCheckpoint(f"{ckpt / name}: its size or SHA-256 differs from the one state.json recorded")
    return state


def latest_intact_checkpoint(ckpt_root: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest checkpoint that :func:`verify_checkpoint` accepts or None, [(newer damaged one, why)])."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(_candidates(Path(ckpt_root))):
        try:
            verify_checkpoint(ckpt)
            return ckpt, skipped
        except DamagedCheckpoint as e:
            skipped.append((ckpt, str(e)))
    return None, skipped


def fallback_note(chosen: Path | None, skipped: list[tuple[Path, str]]) -> str | None:
    """One line saying which checkpoints were damaged and which one is used instead; None if none was."""
    if not skipped:
        return None
    damaged = "; ".join(f"checkpoint {p.name} is damaged ({why})" for p, why in skipped)
    return f"{damaged}; using {chosen.name if chosen else 'none: no intact checkpoint left'}"


def warn(line: str | None) -> None:
    if line:
        print(line, file=sys.stderr, flush=True)


def clean_partial(ckpt_root: str | Path) -> None:
    """Recover after a process killed while writing (the writer calls this, e.g. on resume): a journal copy
    ``.step_N.old-PID`` goes back to ``step_N`` when that is missing (else it is deleted); temporary and
    half-deleted directories are removed. Never deletes the only copy of a step."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        step = checkpoint_step(p) if ".old-" in p.name else None
        if step is not None and (p / "state.json").is_file() and not (root / f"{PREFIX}{step:08d}").exists():
            with contextlib.suppress(FileNotFoundError):  # another process (a DDP rank) may have done it
                os.replace(p, root / f"{PREFIX}{step:08d}")  # roll back the interrupted re-save
            fsync_dir(root)
        elif p.name.startswith(".") and any(tag in p.name for tag in (".tmp-", ".old-", ".del-")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def read_state(ckpt: str | Path) -> dict:
    """The validated state.json of checkpoint ``ckpt`` (FileNotFoundError when there is none)."""
    path = Path(ckpt) / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(ckpt)!r} is not a checkpoint directory (no state.json)")
    return parse_state(path)


def load_weights(model: nn.Module, ckpt: str | Path) -> None:
    """Load ``model.safetensors`` of checkpoint ``ckpt`` into ``model`` (strict; never unpickles)."""
    path = Path(ckpt) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{str(ckpt)!r} has no model.safetensors")
    header_keys(path)  # a damaged file: DamagedCheckpoint naming it, not a raw SafetensorError
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as e:  # shape mismatches
        why = str(e).splitlines()[-1].strip()
        raise ValueError(f"checkpoint {str(ckpt)!r} does not match the model: {why}") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(ckpt)!r} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def load_checkpoint(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    *, restore_rng: bool = True) -> dict:
    """Restore weights, optimizer and RNG states from ``ckpt``; returns the state.json dict.

    Everything is read and validated before the optimizer or the RNGs change; errors name the file."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    opt_sd = rng = None
    if optimizer is not None and "optimizer" in state:
        path = ckpt / "optimizer.safetensors"
        opt_sd = optimizer_state(load_tensors(path), state["optimizer"], path)
        check_optimizer_state(opt_sd, optimizer, path, state["step"])
    if restore_rng:
        rng = load_tensors(ckpt / "rng.safetensors")
        check_rng_tensors(rng, ckpt / "rng.safetensors")
    load_weights(model, ckpt)
    if opt_sd is not None:
        optimizer.load_state_dict(opt_sd)
    if rng is not None:
        set_rng_state(rng, state["rng"])
    return state


def load_latest_intact(ckpt_root: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                       ) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """Load the newest checkpoint that reads back whole: (path or None, state, [(damaged newer one, why)])."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(_candidates(Path(ckpt_root))):
        try:
            verify_checkpoint(ckpt)
            return ckpt, load_checkpoint(ckpt, model, optimizer), skipped
        except DamagedCheckpoint as e:
            skipped.append((ckpt, str(e)))
    return None, None, skipped


def average_checkpoints(ckpts: list[str | Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the weights of ``ckpts`` (the paper averages the last 5 or 20, §6.1).

    Returns a state dict for :func:`safetensors.torch.load_model`-style loading via ``load_state_dict``
    (tied matrices appear once, under the name safetensors kept)."""
    if not ckpts:
        raise ValueError("average_checkpoints needs at least one checkpoint, got none")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}  # the first checkpoint's, read once
    for c in ckpts:
        sd = load_tensors(Path(c) / "model.safetensors")
        if total and set(sd) != set(total):
            raise ValueError(f"checkpoint {str(c)!r} has different tensors from the first one")
        dtypes = dtypes or {k: v.dtype for k, v in sd.items()}
        for k, v in sd.items():
            total[k] = total[k] + v.double() if k in total else v.double()
    return {k: (v / len(ckpts)).to(dtypes[k]) for k, v in total.items()}


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
