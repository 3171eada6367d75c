"""Optimizer and learning-rate schedules.

Adam with β = (0.9, 0.98), ε = 1e-9 and the schedule of Vaswani et al. 2017 §5.3:
``lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)``; or linear warm-up + cosine decay
(Loshchilov & Hutter 2017). AdamW's decoupled weight decay applies to matrices only (not to biases,
norms or embeddings of dimension 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The paper's schedule at optimizer step ``step`` (1-based): linear warm-up, then ∝ step^-0.5."""
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``min_ratio · peak``."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_at(step: int, cfg: TrainConfig, d_model: int) -> float:
    """Learning rate for the optimizer step that follows ``step`` completed steps."""
    if cfg.schedule == "noam":
        return noam_lr(step + 1, d_model, cfg.warmup_steps, cfg.lr)
    if cfg.schedule == "cosine":
        return cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    return cfg.lr


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over distinct parameters; decay only on parameters with >= 2 dims."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
