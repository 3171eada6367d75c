"""Training configuration: one typed dataclass, each default with its reason."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..models.config import dataclass_from_dict

SCHEDULES = ("noam", "cosine", "constant")
OPTIMIZERS = ("adamw", "muon")
AMP_MODES = ("auto", "none", "bf16")


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps in the whole run
    batch_size: int = 64  # sequences per micro-step over ALL ranks (the global batch); DDP splits it
    accum_steps: int = 1  # micro-steps per optimizer step (gradient accumulation)
    schedule: str = "noam"  # the paper's (§5.3); "cosine" = linear warm-up + cosine decay; "constant"
    lr: float = 1.0  # noam: multiplier of d_model^-0.5·min(s^-0.5, s·w^-1.5) (paper: 1); else the peak lr
    warmup_steps: int = 4000  # the paper's warm-up (§5.3); scale it down for short runs
    schedule_steps: int = 0  # horizon of the cosine decay; 0 = steps. Kept on resume, so raising steps
    # continues at the floor lr instead of jumping back up; set it to stretch the schedule explicitly
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak (Chinchilla-style)
    beta1: float = 0.9  # Adam β1 (§5.3)
    beta2: float = 0.98  # Adam β2 (§5.3), not the usual 0.999
    eps: float = 1e-9  # Adam ε (§5.3)
    optimizer: str = "adamw"  # the paper's Adam; "muon" = Muon on hidden matrices + AdamW on the rest
    weight_decay: float = 0.0  # AdamW decoupled decay on matrices only (Loshchilov & Hutter); paper: none
    label_smoothing: float = 0.1  # ε_ls of §5.4
    clip_grad_norm: float = 1.0  # global-norm clipping (Pascanu et al. 2013); 0 = off
    # "bf16" = bfloat16 autocast (CPU and GPU; weights and optimizer stay fp32), "none" = fp32; "auto" = bf16 on
    # CPUs with bf16 units (AVX-512 BF16 or AMX: the `small` step measured faster there), fp32 elsewhere —
    # resolved once when the Trainer starts and recorded resolved in config.json, so a resume is exact
    amp: str = "auto"
    compile: bool = False  # torch.compile the model (worth it for long GPU runs)
    eval_every: int = 200  # steps between evaluations (and checkpoints at eval time)
    eval_batch_size: int = 256  # sequences per evaluation forward
    early_stop_patience: int = 0  # stop after this many evaluations without val-loss improvement; 0 = off
    target_exact_match: float = 0.0  # stop once held-out exact match reaches it (seq2seq); 0 = off
    ckpt_every: int = 200  # steps between checkpoints (also at the end); 0 = only at the end
    keep_last: int = 3  # checkpoints kept on disk (the last k; enough for averaging)
    log_every: int = 10  # steps between metrics lines
    seed: int = 0  # model init, dropout and data order
    progress: bool = True  # live progress bar (tqdm: loss, lr, tokens/s, ETA) on rank 0
    tensorboard: bool = False  # also write TensorBoard event files into RUN/tensorboard/ (optional package)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("steps", "batch_size", "accum_steps", "eval_batch_size", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{f.name} must be a finite number, got {v!r}")
        for name in ("warmup_steps", "schedule_steps", "eval_every", "ckpt_every", "keep_last", "early_stop_patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.schedule == "noam" and self.warmup_steps < 1:
            raise ValueError("the noam schedule needs warmup_steps >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0 or self.clip_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and clip_grad_norm, weight_decay >= 0, got "
                             f"{self.lr}, {self.clip_grad_norm}, {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, d, "train config")


def parse_value(text: str, current: Any) -> Any:
    """A ``--set key=value`` string converted to the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if text.lower() in ("none", "null") and not isinstance(current, (int, float, str)):
        return None
    try:
        if isinstance(current, int) or (current is None and text.lstrip("-").isdigit()):
            return int(text)
        value = float(text) if isinstance(current, float) else None
    except ValueError:
        raise ValueError(f"expected a {type(current).__name__}, got {text!r}") from None
    if value is not None:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite float, got {text!r}")
        return value
    return text


def apply_overrides(model_cfg, train_cfg: TrainConfig, items: list[str]):
    """Apply ``key=value`` (or ``model.key=value`` / ``train.key=value``) onto the two configs."""
    model_changes: dict[str, Any] = {}
    train_changes: dict[str, Any] = {}
    model_names = {f.name for f in dataclasses.fields(model_cfg)}
    train_names = {f.name for f in dataclasses.fields(train_cfg)}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        scope, _, name = key.rpartition(".")
        in_model = name in model_names and scope in ("", "model")
        in_train = name in train_names and scope in ("", "train")
        if in_model == in_train:
            where = "both configs (prefix model. or train.)" if in_model else "ModelConfig or TrainConfig"
            raise ValueError(f"--set key {key!r} is not a unique field of {where}; "
                             f"train fields: {sorted(train_names)}")
        target, cfg = (model_changes, model_cfg) if in_model else (train_changes, train_cfg)
        try:
            target[name] = parse_value(value, getattr(cfg, name))
        except ValueError as e:
            raise ValueError(f"--set {key}: {e}") from None
    return model_cfg.replace(**model_changes), dataclasses.replace(train_cfg, **train_changes)
