"""The teacher-forced forward pass shared by training and evaluation, and the autocast policy.

Legend: b batch, n target length, V vocabulary.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..task import Batch


def forward_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Teacher-forced logits (b, n, V) for a seq2seq or LM batch."""
    if batch.src is None:
        return model(batch.tgt_in)
    return model(batch.src, batch.tgt_in)


def autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["autocast", "forward_logits"]
