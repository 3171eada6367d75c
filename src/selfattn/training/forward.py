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
    if batch.segment_ids is not None:  # packed rows (selfattn.data.packing)
        return model(batch.src, batch.tgt_in, segment_ids=batch.segment_ids)
    return model(batch.src, batch.tgt_in)


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """(``"bf16"`` or ``"none"``, a one-line reason) for TrainConfig.amp; ``"auto"`` decides by the hardware.

    ``"auto"``: bf16 autocast on a CPU with bf16 units (AVX-512 BF16 or AMX-BF16 in /proc/cpuinfo), where bf16
    matmuls run several times faster than fp32 ones; fp32 on other CPUs (AVX2: bf16 matmuls are slower than
    fp32 there) and on GPUs (not measured here yet: ask for bf16 explicitly).
    """
    if amp != "auto":
        return amp, f"amp {amp} (set explicitly)"
    if device.type != "cpu":
        return "none", f"amp none (auto: bf16 by default only on CPUs with bf16 units; {device.type} not measured)"
    from ..attention.cpu_kernel import BF16_UNIT_FLAGS, cpu_flags

    units = sorted(BF16_UNIT_FLAGS & cpu_flags())
    if units:
        return "bf16", f"amp bf16 (auto: this CPU has {' and '.join(units)})"
    return "none", "amp none (auto: this CPU has no bf16 units — no avx512_bf16 or amx_bf16 — fp32 is faster)"


def autocast(device: torch.device, amp: str):
    if amp == "auto":
        amp = resolve_amp(amp, device)[0]
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["autocast", "forward_logits", "resolve_amp"]
