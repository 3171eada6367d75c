"""Label-smoothed cross entropy (Szegedy et al. 2016; Vaswani et al. 2017 §5.4, ε_ls = 0.1).

Legend: b batch, n positions, V vocabulary, r = b·n rows.
The target distribution is (1 - ε)·one_hot + ε/V·uniform; positions with target ``IGNORE`` count nothing.
Returns the **sum** over target tokens, so callers can normalise by the token count of the whole global
batch (exact gradient equality between DDP and one process, and with gradient accumulation).

Per row with logits z and target t (lse = log Σ_j exp z_j):

    loss = lse − (1 − ε)·z_t − (ε / V)·Σ_j z_j          ∂loss/∂z_j = softmax(z)_j − (1 − ε)·[j = t] − ε / V

computed in float32 (float64 for float64 logits) over blocks of about ``BLOCK`` elements (``block_rows``), one
``autograd.Function``:
the (r, V) logits are never copied to float32 as a whole and no (r, V) log-softmax is kept for the
backward (only the row log-sum-exp); the gradient is written in the logits' dtype. For bf16 logits of
the `small` preset (4096 x 8000) forward + backward measured 2.2x faster than
``F.cross_entropy(logits.float(), ...)`` (1 thread, AVX-512 EPYC). Blocks are sized in elements, not rows: a
char-LM's 65-token vocabulary in 64-row blocks spent 8 ms of a 70 ms step in per-block overhead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..task import IGNORE

BLOCK = 64 * 8000  # elements per block: 64 rows x 8000 float32 = 2 MiB, cache-sized; 32-512 rows measured alike


def block_rows(vocab: int) -> int:
    """Rows per block for a vocabulary of ``vocab``: about ``BLOCK`` elements, at least one row."""
    return max(1, BLOCK // max(vocab, 1))


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, targets: Tensor, eps: float) -> Tensor:
        stat = torch.float64 if z.dtype == torch.float64 else torch.float32
        r, vocab = z.shape
        keep = targets != IGNORE  # (r,)
        t = targets.clamp(min=0)[:, None]  # (r, 1); ignored rows read column 0 and are zeroed below
        lse = torch.empty(r, dtype=stat, device=z.device)
        total = torch.zeros((), dtype=stat, device=z.device)
        rows = block_rows(vocab)
        for s in range(0, r, rows):
            zc = z[s:s + rows].to(stat)  # (rows, V)
            lse[s:s + rows] = torch.logsumexp(zc, dim=-1)
            row = lse[s:s + rows] - (1 - eps) * zc.gather(1, t[s:s + rows]).squeeze(1) - (eps / vocab) * zc.sum(-1)
            total += row.masked_fill(~keep[s:s + rows], 0.0).sum()
        ctx.save_for_backward(z, t, keep, lse)
        ctx.eps = eps
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, t, keep, lse = ctx.saved_tensors
        eps, vocab = ctx.eps, z.shape[1]
        weight = keep.to(lse.dtype) * grad.to(lse.dtype)  # (r,)
        out = torch.empty_like(z)
        rows = block_rows(vocab)
        for s in range(0, z.shape[0], rows):
            p = torch.exp(z[s:s + rows].to(lse.dtype) - lse[s:s + rows, None]).sub_(eps / vocab)  # (rows, V)
            p.scatter_add_(1, t[s:s + rows], torch.full_like(p[:, :1], -(1 - eps)))
            out[s:s + rows] = p.mul_(weight[s:s + rows, None])
        return out, None, None


def smoothed_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tensor:
    """logits (b, n, V) any float dtype (computed in fp32), targets (b, n) ids or IGNORE -> scalar sum."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    loss = _SmoothedCrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), smoothing)  # (r, V)
    return loss if logits.dtype == torch.float64 else loss.float()


def token_accuracy(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """(correct, counted) argmax predictions over non-ignored targets."""
    keep = targets != IGNORE
    return int(((logits.argmax(-1) == targets) & keep).sum()), int(keep.sum())


__all__ = ["BLOCK", "block_rows", "smoothed_cross_entropy", "token_accuracy"]
