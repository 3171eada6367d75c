"""Backend "math": the readable reference, ``softmax(q kᵀ · scale + bias) v`` with explicit scores.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask: boolean True = may attend, or a floating additive bias. ``causal`` is bottom-right aligned
(query i may attend key j when j <= i + m - n). Scores, biases, softmax and the weighted sum are
float32 for float32/bfloat16/float16 inputs (float64 for float64); the output is rounded once.

Segment ids ``(q_seg (b, n), k_seg (b, m))`` (packed sequences, document masks): query i of row b may
attend key j only when ``q_seg[b, i] == k_seg[b, j]``, AND-ed with the mask, causal and window (ALiBi's
bias is unchanged). A key of another segment is absent in the sense below; a row whose segment matches
no allowed key is dead. Here the rule is applied as the (b, 1, n, m) mask ``spec.merge_segments`` builds.

Non-finite values follow one rule, shared by every backend (they hand such calls to this one):

* a key is **absent** from a row when the mask forbids it or its logit is -inf (a -inf bias, or
  q·k overflowing to -inf): it gets weight 0 and contributes nothing, not even a NaN in its k or v,
  to the output or to any gradient;
* a row with no present key is **dead**: output 0, weights 0, zero gradients;
* everything else is IEEE arithmetic on the present keys: a NaN or +inf logit (a NaN in q or k, a
  NaN/+inf bias, q·k overflowing to +inf) makes its row NaN (exp(inf - inf)); a NaN/inf in v
  reaches exactly the output columns of the rows that attend that key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .guards import empty_result, is_empty, tracing
from .spec import AttentionCall, merge_segments
from .structure import alibi_bias, structural_mask

_NEG_INF = float("-inf")


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(b, g, m, d) -> (b, g*groups, m, d): kv head i serves query heads i*groups ... (i+1)*groups-1."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def masked_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim of logits where -inf marks an absent key (see the module docstring).

    A dead row (every logit -inf) gives zeros with zero gradient; a NaN or +inf logit gives a NaN row.
    """
    if scores.shape[-1] == 0:  # no keys at all: every row attends nothing
        return scores
    present = scores != _NEG_INF  # NaN counts as present
    row_max = scores.amax(dim=-1, keepdim=True)  # (..., n, 1); NaN when the row holds a NaN
    row_max = torch.where(row_max == _NEG_INF, torch.zeros_like(row_max), row_max).detach()
    p = torch.exp(torch.where(present, scores - row_max, _NEG_INF))  # exactly 0 (and 0 grad) where absent
    denom = p.sum(dim=-1, keepdim=True)  # NaN in a NaN row: absent keys still get weight exactly 0
    return torch.where(present, p / torch.where(denom == 0, torch.ones_like(denom), denom), 0.0)


def score_bias_and_mask(
    call_n: int,
    call_m: int,
    *,
    mask: Tensor | None,
    causal: bool,
    window: tuple[int | None, int | None] | None,
    alibi_slopes: Tensor | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor | None, Tensor | None]:
    """Combine every kind of mask into one additive bias (float32, or ``dtype`` = float64 for float64
    calls) and one boolean ``allowed``."""
    allowed = structural_mask(call_n, call_m, causal=causal, window=window, device=device)  # (n, m)
    bias = None
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask if allowed is None else (mask & allowed)
    elif mask is not None:
        bias = mask.to(dtype)
    if alibi_slopes is not None:
        ab = alibi_bias(alibi_slopes, call_n, call_m, dtype)  # (1, h, n, m)
        bias = ab if bias is None else bias + ab
    return bias, allowed


def dead_rows(bias: Tensor | None, allowed: Tensor | None) -> Tensor | None:
    """Rows (.., n, 1) that may attend no key — every key forbidden by ``allowed`` or -inf in ``bias`` (as
    :func:`score_bias_and_mask` returns them) — at the masks' own broadcast shapes; None when neither masks a key."""
    forbidden = None if allowed is None else ~allowed
    if bias is not None and bias.dtype.is_floating_point:
        neg = torch.isneginf(bias)
        forbidden = neg if forbidden is None else (forbidden | neg)
    return None if forbidden is None else forbidden.all(dim=-1, keepdim=True)


def dead_rows_if_any(bias: Tensor | None, allowed: Tensor | None) -> Tensor | None:
    """:func:`dead_rows`, or None when no row is dead (eager: one host read). A boolean mask alone is asked with
    two reductions first, no (.., n, 1) temporary: a decoding step's cross-attention asks this of its key-padding
    mask in every layer."""
    if bias is None and allowed is not None and bool(allowed.any(dim=-1).all()):
        return None
    dead = dead_rows(bias, allowed)
    return dead if dead is not None and bool(dead.any()) else None


def _finite_part(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _logits(q: Tensor, k: Tensor, scale: float, bias: Tensor | None, allowed: Tensor | None) -> Tensor:
    """(b, h, n, m) logits q·kᵀ·scale + bias, -inf where not allowed. q (b, h, n, d), k (b, h, m, d).

    A NaN/inf in q or k reaches exactly the allowed pairs it belongs to: those pairs are summed element
    by element, the rest by a matmul of the finite parts (so 0 · NaN never leaks into other pairs'
    gradients); allowed pairs whose exact logit is -inf are left out of the graph (absent keys)."""
    b, h, n, m = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    good_q, good_k = torch.isfinite(q).all(-1), torch.isfinite(k).all(-1)  # (b, h, n), (b, h, m)
    if tracing() or (bool(good_q.all()) and bool(good_k.all())):
        s = torch.matmul(q, k.transpose(-2, -1)) * scale  # (b, h, n, m)
        if bias is not None:
            s = s + bias
    else:
        s = torch.matmul(_finite_part(q), _finite_part(k).transpose(-2, -1)) * scale  # (b, h, n, m)
        if bias is not None:
            s = s + bias
        bad = ~(good_q.unsqueeze(-1) & good_k.unsqueeze(-2))  # (b, h, n, m) pairs touching a NaN/inf
        if allowed is not None:
            bad &= allowed
        full_bias = None if bias is None else bias.expand(b, h, n, m)

        def exact(idx: tuple[Tensor, ...]) -> Tensor:  # (P,) logits of the pairs idx = (bi, hi, i, j)
            x = (q[idx[0], idx[1], idx[2]] * k[idx[0], idx[1], idx[3]]).sum(-1) * scale
            return x if full_bias is None else x + full_bias[idx]

        idx = bad.nonzero(as_tuple=True)
        with torch.no_grad():
            keep = exact(idx) != _NEG_INF  # -inf: an absent key, kept out of the graph
        s = s.index_put(idx, torch.full_like(s[idx], _NEG_INF))
        idx = tuple(i[keep] for i in idx)
        s = s.index_put(idx, exact(idx))
    return s if allowed is None else s.masked_fill(~allowed, _NEG_INF)


def _weighted_values(w: Tensor, present: Tensor, v: Tensor) -> Tensor:
    """(b, h, n, e) = w @ v, where a NaN/inf in v reaches only the rows in which its key is present."""
    good_v = torch.isfinite(v)  # (b, h, m, e)
    if tracing() or bool(good_v.all()):
        return torch.matmul(w, v)
    out = torch.matmul(w, _finite_part(v))  # (b, h, n, e)
    pairs = (present & ~good_v.all(-1).unsqueeze(-2)).nonzero(as_tuple=True)  # (bi, hi, i, j) with a bad v_j
    bad_v = torch.where(good_v, torch.zeros_like(v), v)  # only the NaN/inf entries
    contrib = w[pairs].unsqueeze(-1) * bad_v[pairs[0], pairs[1], pairs[3]]  # (P, e)
    return out.index_put(pairs[:3], contrib, accumulate=True)


def math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None,
    return_weights: bool = False,
    segment_ids: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Reference attention. Returns ``(out (b, h, n, e), weights (b, h, n, m) or None)``."""
    mask = merge_segments(mask, segment_ids)  # (b, 1|h, n, m) when segments are given
    b, h, n, d = q.shape
    m = k.shape[2]
    if is_empty(q, k):  # no rows, or no keys: every row is dead
        return empty_result(q, k, v), (q.new_zeros(b, h, n, m) if return_weights else None)
    scale = d**-0.5 if scale is None else float(scale)
    groups = h // k.shape[1]
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs = q.to(stat)  # (b, h, n, d)
    ks = repeat_kv(k, groups).to(stat)  # (b, h, m, d)
    vs = repeat_kv(v, groups).to(stat)  # (b, h, m, e)
    bias, allowed = score_bias_and_mask(
        n, m, mask=mask, causal=causal, window=window, alibi_slopes=alibi_slopes, device=q.device, dtype=stat
    )
    if bias is not None:  # a -inf bias forbids like a False: q·k's NaN must not reach that pair
        bias = bias.to(stat)
        allowed = ~torch.isneginf(bias) if allowed is None else allowed & ~torch.isneginf(bias)
    scores = _logits(qs, ks, scale, bias, allowed)  # (b, h, n, m)
    weights = masked_softmax(scores)  # (b, h, n, m)
    p = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = _weighted_values(p, (scores != _NEG_INF).expand_as(p), vs).to(v.dtype)  # (b, h, n, e)
    return out, (weights.to(q.dtype) if return_weights else None)


def math_supports(call: AttentionCall) -> str | None:
    """The reference serves every valid call."""
    return None
