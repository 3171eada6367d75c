"""Training: the paper's recipe, crash-safe checkpoints with exact resume, DDP (see ``trainer``)."""

from .checkpoint import (
    DamagedCheckpoint,
    average_checkpoints,
    latest_checkpoint,
    latest_intact_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_state_into,
    load_weights,
    save_checkpoint,
)
from .config import TrainConfig, apply_overrides
from .distributed import setup_distributed
from .evaluate import evaluate
from .forward import autocast, forward_logits
from .loss import smoothed_cross_entropy
from .optim import build_optimizer, cosine_lr, lr_at, noam_lr
from .trainer import Trainer, TrainResult, read_run_config

__all__ = [
    "DamagedCheckpoint", "TrainConfig", "TrainResult", "Trainer", "apply_overrides", "autocast", "average_checkpoints",
    "build_optimizer", "cosine_lr", "evaluate", "forward_logits", "latest_checkpoint", "latest_intact_checkpoint",
    "list_checkpoints", "load_checkpoint", "load_state_into", "load_weights", "lr_at", "noam_lr", "read_run_config",
    "save_checkpoint", "setup_distributed", "smoothed_cross_entropy",
]
