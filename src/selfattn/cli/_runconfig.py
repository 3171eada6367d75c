"""How ``selfattn train`` arrives at (task, ModelConfig, TrainConfig): a fresh run, a ``--config`` file, or
``--resume`` of a run directory — every argument checked before any data is read or any file written.

A private helper of :mod:`selfattn.cli.train`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import CLIError

# The recipe of a fresh run when neither --set nor --config's "train" gives one (TrainConfig's own defaults are
# the paper's, made for 100k-step runs: a 2000-step char LM would spend its whole run in the 4000-step warm-up).
RECIPES: dict[str, dict[str, Any]] = {
    "synthetic": {"schedule": "cosine", "lr": 3e-3, "warmup_steps": 50},  # the demo's: 99.5% exact in ~300 steps
    "char": {"schedule": "cosine", "lr": 1e-3, "warmup_steps": 100},  # nanoGPT's shakespeare-char recipe
    "translate": {},  # the paper's noam schedule (TrainConfig defaults); the README's command sets its own
}
WARMUP_FRACTION = 10  # a default warm-up never exceeds steps / 10 (a short run is never all warm-up)


@dataclass
class Plan:
    task: Any  # a selfattn.task.Task
    model: Any  # ModelConfig
    train: Any  # TrainConfig
    extra: dict  # extra config.json keys: {"cli": {"preset": name}} (checked by a later --resume --preset)


def _set_keys(items: list[str]) -> set[str]:
    return {item.split("=", 1)[0].rpartition(".")[2] for item in items if "=" in item}


def _lengths(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split("-"))
    except ValueError:
        raise CLIError(f"--lengths expects MIN-MAX like 1-8, got {text!r}") from None
    return lo, hi


def _task_from_args(args, seed: int):
    from ..data import CharLMTask, SyntheticTask

    if args.task == "translate":  # parallel corpus in --data DIR (selfattn.translation)
        from ._translation import task_from_args

        return task_from_args(args, seed)
    if (args.task is None) == (args.data is None):
        raise CLIError("give exactly one of --task NAME or --data FILE (or --config FILE with a task)")
    if args.data is not None:
        return CharLMTask(args.data, block_size=args.block_size or 64, seed=seed)
    lo, hi = _lengths(args.lengths or "1-8")
    return SyntheticTask(args.task, min_len=lo, max_len=hi, seed=seed)


def read_config_file(path: str) -> dict:
    """The JSON object of ``--config FILE`` (a run's config.json or the user's own), with one-line errors."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"  # a run directory stands for its config
    if not p.is_file():
        raise FileNotFoundError(f"--config {path!r} does not exist (expected a JSON file or a run directory)")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {str(p)!r} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"--config {str(p)!r}: expected a JSON object, got {type(d).__name__}")
    for key in ("model", "train", "task"):
        if key in d and not isinstance(d[key], dict):
            raise ValueError(f"--config {str(p)!r}: {key!r} must be an object, got {type(d[key]).__name__}")
    return d


def fresh_run(args, run_dir: Path) -> Plan:
    from ..models import ModelConfig, preset
    from ..task import task_from_spec
    from ..training import TrainConfig, apply_overrides, list_checkpoints

    if list_checkpoints(run_dir / "checkpoints"):
        raise CLIError(f"{str(run_dir)!r} already has checkpoints; add --resume or pick another --run-dir")
    apply_overrides(preset("tiny"), TrainConfig(), args.set)  # a bad --set fails now, before any data is read
    file = read_config_file(args.config) if args.config else {}
    file_train = file.get("train", {})
    seed = args.seed if args.seed is not None else int(file_train.get("seed", 0))
    if "task" in file:
        if args.task or args.data:
            raise CLIError("--config FILE already names the task; leave out --task/--data")
        task = task_from_spec(file["task"])
    else:
        task = _task_from_args(args, seed)
    family = "translate" if task.name == "translate" else "char" if task.kind == "lm" else "synthetic"
    name = args.preset or file.get("preset") or {"translate": "small", "char": "char-lm"}.get(family, "tiny")
    model_cfg = preset(name, **task.model_overrides())
    if "model" in file:
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), **file["model"]})
    base = {**TrainConfig().to_dict(), **(file_train or RECIPES[family]), "seed": seed}
    if args.steps is not None:
        base["steps"] = args.steps
    model_cfg, train = apply_overrides(model_cfg, TrainConfig.from_dict(base), args.set)
    explicit = _set_keys(args.set) | set(file_train)
    changes: dict[str, Any] = {"progress": not args.no_progress}
    if "warmup_steps" not in explicit and train.schedule != "noam":  # noam: the warm-up sets the peak lr
        changes["warmup_steps"] = max(1, min(train.warmup_steps, train.steps // WARMUP_FRACTION))
    if "schedule_steps" not in _set_keys(args.set) and (args.steps is not None or not train.schedule_steps):
        changes["schedule_steps"] = train.steps  # the horizon is recorded, so a resume cannot stretch it
    return Plan(task, model_cfg, dataclasses.replace(train, **changes), {"cli": {"preset": name}})


def _differences(args, config: dict) -> list[str]:
    """The task-defining options given with --resume that differ from the run's config.json."""
    task, train, out = config.get("task", {}), config.get("train", {}), []
    run_task = task.get("name")
    if args.task is not None and args.task != run_task:
        out.append(f"--task {args.task} (run: {'--data, a text file' if run_task == 'char' else run_task})")
    run_data = task.get("path") or task.get("data")
    if args.data is not None and (run_data is None or Path(args.data).resolve() != Path(run_data).resolve()):
        out.append(f"--data {args.data} (run: {run_data})")
    if args.seed is not None and args.seed != train.get("seed"):
        out.append(f"--seed {args.seed} (run: {train.get('seed')})")
    if args.lengths is not None:
        run_lengths = (task.get("min_len"), task.get("max_len"))
        if _lengths(args.lengths) != run_lengths:
            shown = f"{run_lengths[0]}-{run_lengths[1]}" if "min_len" in task else "none, not a sequence task"
            out.append(f"--lengths {args.lengths} (run: {shown})")
    if args.block_size is not None and args.block_size != task.get("block_size"):
        out.append(f"--block-size {args.block_size} (run: {task.get('block_size')})")
    run_preset = config.get("cli", {}).get("preset")
    if args.preset is not None and args.preset != run_preset:
        out.append(f"--preset {args.preset} (run: {run_preset or 'not recorded'})")
    return out


def resumed_run(args, run_dir: Path) -> Plan:
    from ..models import ModelConfig
    from ..task import task_from_spec
    from ..training import TrainConfig, apply_overrides, read_run_config

    config = read_run_config(run_dir)
    diffs = _differences(args, config)
    if diffs:
        raise CLIError(f"--resume: {'; '.join(diffs)} — differ from {str(run_dir)!r}/config.json; leave them "
                       "out to continue the run, or start a new run")
    model_cfg, train = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
    new_model_cfg, train = apply_overrides(model_cfg, train, args.set)
    if new_model_cfg != model_cfg:
        raise CLIError("--resume cannot change the model config; only TrainConfig fields")
    changes: dict[str, Any] = {"progress": not args.no_progress}
    if not train.schedule_steps:  # a run from before the horizon was recorded: its horizon was its steps
        changes["schedule_steps"] = int(config["train"]["steps"])
    if args.steps is not None:
        changes["steps"] = args.steps
    train = TrainConfig.from_dict({**train.to_dict(), **changes})
    return Plan(task_from_spec(config["task"]), model_cfg, train, {"cli": config.get("cli", {})})


__all__ = ["RECIPES", "Plan", "fresh_run", "read_config_file", "resumed_run"]
