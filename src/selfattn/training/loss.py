"""Label-smoothed cross entropy (Szegedy et al. 2016; Vaswani et al. 2017 §5.4, ε_ls = 0.1).

Legend: b batch, n positions, V vocabulary.
The target distribution is (1 - ε)·one_hot + ε/V·uniform; positions with target ``IGNORE`` count nothing.
Returns the **sum** over target tokens, so callers can normalise by the token count of the whole global
batch (exact gradient equality between DDP and one process, and with gradient accumulation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..task import IGNORE


def smoothed_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tensor:
    """logits (b, n, V) any float dtype (computed in fp32), targets (b, n) ids or IGNORE -> scalar sum."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE,
                           label_smoothing=smoothing, reduction="sum")


def token_accuracy(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """(correct, counted) argmax predictions over non-ignored targets."""
    keep = targets != IGNORE
    return int(((logits.argmax(-1) == targets) & keep).sum()), int(keep.sum())


__all__ = ["smoothed_cross_entropy", "token_accuracy", "torch"]
