"""Backend "math": the readable reference, ``softmax(q kᵀ · scale) v`` with explicit scores.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask: boolean True = may attend, or a floating additive bias. ``causal`` is bottom-right aligned
(query i may attend key j when j <= i + m - n). Rows that may attend no key give output 0 and
weights 0 (never NaN), in forward and backward. Softmax statistics are computed in float32
(or float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import AttentionCall, alibi_bias, structural_mask


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(b, g, m, d) -> (b, g*groups, m, d): kv head i serves query heads i*groups ... (i+1)*groups-1."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def masked_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim where ``allowed`` is False (or score -inf) counts as absent.

    A row with nothing allowed gives all zeros rather than NaN, and its gradient is zero too.
    """
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if scores.shape[-1] == 0:  # no keys at all: every row attends nothing
        return scores
    row_max = scores.amax(dim=-1, keepdim=True)  # (..., n, 1)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    p = torch.exp(scores - row_max)  # exp(-inf) = 0 for forbidden keys
    denom = p.sum(dim=-1, keepdim=True)
    return p / torch.where(denom > 0, denom, torch.ones_like(denom))


def score_bias_and_mask(
    call_n: int,
    call_m: int,
    *,
    mask: Tensor | None,
    causal: bool,
    window,
    alibi_slopes: Tensor | None,
    device,
) -> tuple[Tensor | None, Tensor | None]:
    """Combine every kind of mask into one additive float32 bias and one boolean ``allowed``."""
    allowed = structural_mask(call_n, call_m, causal=causal, window=window, device=device)  # (n, m)
    bias = None
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask if allowed is None else (mask & allowed)
    elif mask is not None:
        bias = mask
    if alibi_slopes is not None:
        ab = alibi_bias(alibi_slopes, call_n, call_m)  # (1, h, n, m)
        bias = ab if bias is None else bias + ab
    return bias, allowed


def math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    window=None,
    alibi_slopes: Tensor | None = None,
    return_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Reference attention. Returns ``(out (b, h, n, e), weights (b, h, n, m) or None)``."""
    b, h, n, d = q.shape
    m = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    groups = h // k.shape[1]
    k = repeat_kv(k, groups)  # (b, h, m, d)
    v = repeat_kv(v, groups)  # (b, h, m, e)
    stat_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32

    scores = (q @ k.transpose(-2, -1)).to(stat_dtype) * scale  # (b, h, n, m)
    bias, allowed = score_bias_and_mask(
        n, m, mask=mask, causal=causal, window=window, alibi_slopes=alibi_slopes, device=q.device
    )
    if bias is not None:
        scores = scores + bias.to(stat_dtype)
    weights = masked_softmax(scores, allowed)  # (b, h, n, m)
    p = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = p.to(v.dtype) @ v  # (b, h, n, e)
    return out, (weights.to(q.dtype) if return_weights else None)


def math_supports(call: AttentionCall) -> str | None:
    """The reference serves every valid call."""
    return None
