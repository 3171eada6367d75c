"""Evaluation: loss over a whole split, and exact match of greedy decoding for seq2seq tasks.

Legend: b batch, n target length, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from ..generation import greedy
from ..task import Batch, Task
from .forward import autocast, forward_logits
from .loss import smoothed_cross_entropy, token_accuracy


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str = "val", *, batch_size: int = 256, amp: str = "none",
             device: torch.device | str = "cpu", exact_match: bool = True) -> dict:
    """{"loss": mean token cross entropy (no smoothing), "accuracy": token accuracy,
    "exact_match": fraction of sources whose greedy output equals the target (seq2seq only)}."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count, correct = 0.0, 0, 0
    matches, seqs = 0, 0
    try:
        for batch in task.eval_batches(split, batch_size):
            batch = batch.to(device)
            with autocast(device, amp):
                logits = forward_logits(model, batch)  # (b, n, V)
            total += float(smoothed_cross_entropy(logits, batch.tgt_out, 0.0))
            c, k = token_accuracy(logits, batch.tgt_out)
            correct, count = correct + c, count + k
            if exact_match and batch.src is not None:
                m, s = _exact_match(model, task, batch, amp, device)
                matches, seqs = matches + m, seqs + s
    finally:
        model.train(was_training)
    out = {"loss": total / max(count, 1), "accuracy": correct / max(count, 1)}
    if seqs:
        out["exact_match"] = matches / seqs
    return out


def _exact_match(model: nn.Module, task: Task, batch: Batch, amp: str, device: torch.device) -> tuple[int, int]:
    vocab = task.vocab
    max_new = batch.tgt_out.shape[1] + 2
    with autocast(device, amp):
        out = greedy(model, src=batch.src, max_new_tokens=max_new, bos_id=vocab.bos_id,
                     stop_tokens=(vocab.eos_id,), pad_id=vocab.pad_id)
    hits = 0
    for i, ids in enumerate(out):
        ref = batch.tgt_out[i]
        ref = ref[ref >= 0].tolist()  # target + EOS
        hits += ids == ref
    return hits, len(out)


__all__ = ["evaluate"]
