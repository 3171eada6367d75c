"""Validation of checkpoint files read back from disk: nothing is trusted, every error names its file.

:class:`DamagedCheckpoint` (a ``ValueError``) means a file cannot be read or contradicts itself —
a truncated, zero-byte or garbage safetensors file, a state.json that is not JSON or lacks ``rng``,
an optimizer moment whose shape differs from its parameter's. A checkpoint that is intact but does not
fit the model (another width, another optimizer) is an ordinary ``ValueError``: falling back to an
older checkpoint of the same run would not help there.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

FORMAT = 1  # bump when the layout changes
PYTHON_RNG_WORDS = len(random.getstate()[1])  # Mersenne Twister: 624 words + position


class DamagedCheckpoint(ValueError):
    """A checkpoint file is unreadable or inconsistent; the message names the file."""


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of safetensors file ``path`` (never unpickles); DamagedCheckpoint naming the file."""
    if not path.is_file():
        raise DamagedCheckpoint(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DamagedCheckpoint(f"{path} is not a readable safetensors file: {e}") from None


def header_keys(path: Path) -> set[str]:
    """Tensor names of safetensors file ``path`` from its header (sizes checked, no data read)."""
    if not path.is_file():
        raise DamagedCheckpoint(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError) as e:
        raise DamagedCheckpoint(f"{path} is not a readable safetensors file: {e}") from None


def file_digest(path: Path) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex digest} of a file, or {"missing": True} when it is absent."""
    if not path.is_file():
        return {"missing": True}
    with open(path, "rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def _require(ok: bool, path: Path, what: str, got: Any) -> None:
    if not ok:
        raise DamagedCheckpoint(f"{path}: expected {what}, got {str(got)[:80]}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_state(path: Path) -> dict:
    """state.json of a checkpoint, validated: format, step, rng (and optimizer metadata when present)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedCheckpoint(f"{path} is not valid JSON: {e}") from None
    _require(isinstance(state, dict), path, "a JSON object", type(state).__name__)
    _require(state.get("format") == FORMAT, path, f"'format': {FORMAT}", state.get("format", "no 'format' key"))
    step = state.get("step")
    _require(_is_int(step) and step >= 0, path, "'step': an int >= 0", step if "step" in state else "no 'step' key")
    rng = state.get("rng")
    _require(isinstance(rng, dict) and isinstance(rng.get("python"), list) and len(rng["python"]) == 3, path,
             "'rng': {'python': [version, state, gauss]}", rng if "rng" in state else "no 'rng' key")
    version, words, gauss = rng["python"]
    _require(_is_int(version) and isinstance(words, list) and len(words) == PYTHON_RNG_WORDS
             and all(_is_int(w) and 0 <= w < 2**32 for w in words[:-1]) and _is_int(words[-1])
             and (gauss is None or isinstance(gauss, float)), path,
             f"a Python RNG state ({PYTHON_RNG_WORDS} 32-bit words)", "a malformed one")
    files = state.get("files", {})
    _require(isinstance(files, dict) and all(isinstance(v, dict) and "/" not in k and ".." not in k
                                             for k, v in files.items()), path,
             "'files': {file name: {'bytes': n, 'sha256': hex}}", files)
    if "optimizer" in state:
        opt = state["optimizer"]
        _require(isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
                 and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                         and all(_is_int(i) for i in g["params"]) for g in opt["param_groups"])
                 and isinstance(opt.get("scalars"), dict), path,
                 "'optimizer': {'param_groups': [{'params': [int, ...], ...}], 'scalars': {...}}", opt)
    return state


def check_rng_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    cpu = tensors.get("torch_cpu")
    want = torch.get_rng_state()
    _require(isinstance(cpu, torch.Tensor) and cpu.dtype == want.dtype and cpu.shape == want.shape, path,
             f"'torch_cpu': a {want.dtype} tensor of shape {tuple(want.shape)}",
             "none" if cpu is None else f"{cpu.dtype} {tuple(cpu.shape)}")


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> dict:
    """An optimizer state dict from optimizer.safetensors (``state.<index>.<name>``) and state.json."""
    state: dict[int, dict] = {}
    entries = [(key, value, "state.") for key, value in tensors.items()]
    entries += [(key, value, "") for key, value in meta["scalars"].items()]
    for key, value, prefix in entries:
        idx, _, name = key[len(prefix):].partition(".")
        _require(key.startswith(prefix) and idx.isdigit() and bool(name), path,
                 f"keys '{prefix}<param index>.<name>'", key)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def check_optimizer_state(sd: dict, optimizer: Any, path: Path, step: int) -> None:
    """Every moment tensor against its parameter (shape, floating dtype), step counts in [0, ``step``].

    Group structure that differs from ``optimizer`` (another optimizer) is a plain ValueError."""
    groups = optimizer.param_groups
    have = [len(g["params"]) for g in groups]
    saved = [len(g["params"]) for g in sd["param_groups"]]
    if have != saved:
        raise ValueError(f"{path}: the optimizer has parameter groups of sizes {have}, the checkpoint {saved}; "
                         "expected the optimizer the run was saved with")
    params = dict(zip((i for g in sd["param_groups"] for i in g["params"]), (p for g in groups for p in g["params"])))
    for idx, st in sd["state"].items():
        _require(idx in params, path, f"optimizer state only for listed parameters {sorted(params)[:4]}...", idx)
        shape = tuple(params[idx].shape)
        for name, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                _require(tuple(v.shape) == shape and v.is_floating_point(), path,
                         f"{name} of parameter {idx}: a float tensor of the parameter's shape {shape}",
                         f"{v.dtype} {tuple(v.shape)}")
            elif name == "step":
                count = float(v)
                _require(math.isfinite(count) and count == int(count) and 0 <= count <= step, path,
                         f"step count of parameter {idx}: a whole number in [0, {step}]", count)


__all__ = ["FORMAT", "DamagedCheckpoint", "check_optimizer_state", "check_rng_tensors", "file_digest", "header_keys",
           "load_tensors", "optimizer_state", "parse_state"]
