"""Attention by its definition, in float64, one query row at a time — the differential tests' oracle.

Nothing here shares code with selfattn: the allowed keys of each row come from Python comparisons
(bottom-right causal and windows, the boolean mask, a -inf bias, equal segment ids), and each row's softmax is written
out. The non-finite rule it encodes (the one every backend must follow):

* a key is absent from a row when the mask forbids it (False, causal, window, a -inf bias) or its
  logit is -inf (q·k overflowing): it contributes nothing to the output or to any gradient;
* a row with no present key is dead: output 0, no gradient;
* otherwise IEEE arithmetic: a NaN/+inf logit makes the row NaN, a NaN/inf in v reaches the output
  columns of the rows that attend its key.

Logits are evaluated in float64 and then rounded to float32 for non-float64 inputs, because every
backend keeps scores in float32 there: q, k ~ 1e19 overflow to +-inf exactly as they do in the
backends (the float64 value would be finite, but no float32 evaluation can give it).

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64


def allowed_keys(b, h, n, m, *, mask, causal, window, segment_ids=None) -> Tensor:
    """(b, h, n, m) boolean, True = may attend, from the mask, position and segment comparisons."""
    allowed = torch.ones(b, h, n, m, dtype=torch.bool)
    if segment_ids is not None:  # packed rows: query i and key j must share a segment
        q_seg, k_seg = segment_ids
        for bi in range(b):
            for i in range(n):
                for j in range(m):
                    if int(q_seg[bi, i]) != int(k_seg[bi, j]):
                        allowed[bi, :, i, j] = False
    if mask is not None:
        full = mask.expand(b, h, n, m)
        allowed &= full if mask.dtype == torch.bool else ~torch.isneginf(full)
    pos = torch.arange(n).view(n, 1) + (m - n)  # (n, 1) query i's key position, bottom-right aligned
    j = torch.arange(m).view(1, m)  # (1, m)
    if causal:
        allowed &= j <= pos
    if window is not None:
        left, right = window
        if left is not None:
            allowed &= j >= pos - left
        if right is not None:
            allowed &= j <= pos + right
    return allowed


def bias_of(b, h, n, m, *, mask, alibi_slopes) -> Tensor:
    """(b, h, n, m) float64 additive bias: a floating mask plus ALiBi's -slope * |pos - j|."""
    bias = torch.zeros(b, h, n, m, dtype=F64)
    if mask is not None and mask.dtype != torch.bool:
        bias = bias + torch.where(torch.isneginf(mask), 0.0, mask.to(F64)).expand(b, h, n, m)
    if alibi_slopes is not None:
        dist = torch.tensor([[abs(i + m - n - j) for j in range(m)] for i in range(n)], dtype=F64)
        bias = bias - alibi_slopes.to(F64).view(1, h, 1, 1) * dist.reshape(1, 1, n, m)  # (1, h, n, m)
    return bias


def _in_range(s: Tensor, score_dtype) -> Tensor:
    """float64 values rounded to the backends' score dtype (float32: beyond 3.4e38 is +-inf)."""
    return s if score_dtype == F64 else s.to(score_dtype).to(F64)


def definition(q, k, v, *, mask=None, causal=False, window=None, alibi_slopes=None, scale=None,
               score_dtype=torch.float32, segment_ids=None) -> Tensor:
    """(b, h, n, e) float64 output; differentiable in q, k, v (and the slopes / a float mask)."""
    b, h, n, d = q.shape
    g, m, e = k.shape[1], k.shape[2], v.shape[3]
    scale = 1 / math.sqrt(d) if scale is None else float(scale)
    allowed = allowed_keys(b, h, n, m, mask=mask, causal=causal, window=window, segment_ids=segment_ids)
    bias = bias_of(b, h, n, m, mask=mask, alibi_slopes=alibi_slopes)
    rows = []
    for bi in range(b):
        for hi in range(h):
            gi = hi // (h // g)  # query head hi reads kv head gi
            for i in range(n):
                js = allowed[bi, hi, i].nonzero().flatten()

                def logits(js):
                    s = (k[bi, gi, js].to(F64) * q[bi, hi, i].to(F64)).sum(-1)  # q·k, then scaled
                    s = _in_range(s, score_dtype) * scale + bias[bi, hi, i, js]
                    return _in_range(s, score_dtype)

                with torch.no_grad():
                    js = js[logits(js) != float("-inf")]  # -inf logit: the key is absent
                if len(js) == 0:  # dead row
                    rows.append(torch.zeros(e, dtype=F64))
                    continue
                s = logits(js)  # (len,)
                p = torch.exp(s - s.max().detach())  # max is NaN when s holds a NaN
                rows.append((p.unsqueeze(-1) * v[bi, gi, js].to(F64)).sum(0) / p.sum())
    if not rows:
        return torch.zeros(b, h, n, e, dtype=F64)
    return torch.stack(rows).view(b, h, n, e)  # (b, h, n, e)


def magnitudes(q, k, v, dout, *, mask=None, causal=False, window=None, alibi_slopes=None, scale=None,
               segment_ids=None):
    """Sums of absolute terms that bound each result's rounding error, float64, on the finite parts
    of the inputs: out_i <- sum_j p_ij |v_j|; dv_j <- sum_i p_ij |dO_i|; dq_i <- scale sum_j p_ij
    (A_ij + sum_l p_il A_il) |k_j| with A_ij = |dO_i|·|v_j| (the terms of dP_ij = dO_i·v_j and of
    FlashAttention-2's delta D_i = sum_j p_ij dP_ij), dk_j likewise with |q_i|.
    Returns (out, dq, dk, dv, dslopes (h,)) and the largest |scale q·k| (the logits' own magnitude)."""
    b, h, n, d = q.shape
    g, m = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else float(scale)
    allowed = allowed_keys(b, h, n, m, mask=mask, causal=causal, window=window, segment_ids=segment_ids)
    with torch.no_grad():  # keys whose true logit is -inf are absent (the rule), also here
        raw = (q.detach().to(F64).unsqueeze(3) * k.detach().to(F64).repeat_interleave(h // g, 1).unsqueeze(2))
        raw = raw.sum(-1).to(torch.float32) * scale  # (b, h, n, m), elementwise: 0 * inf stays in its pair
        allowed &= raw.to(torch.float32) != float("-inf")
    fin = lambda x: torch.where(torch.isfinite(x), x, 0.0).to(F64)
    q, k, v, dout = fin(q.detach()), fin(k.detach()), fin(v.detach()), fin(dout)
    kr, vr = k.repeat_interleave(h // g, 1), v.repeat_interleave(h // g, 1)  # (b, h, m, d|e)
    s = q @ kr.transpose(-2, -1) * scale + bias_of(b, h, n, m, mask=mask, alibi_slopes=alibi_slopes)
    s = s.masked_fill(~allowed, float("-inf"))
    if m == 0:
        s = s.new_zeros(b, h, n, 1)[..., :0]  # (b, h, n, 0)
    p = torch.exp(s - (s.amax(-1, keepdim=True) if m else s.new_zeros(b, h, n, 1)).clamp_min(-1e300))
    p = torch.nan_to_num(p / p.sum(-1, keepdim=True).clamp_min(1e-300))  # (b, h, n, m), 0 in dead rows
    dp = dout.abs() @ vr.abs().transpose(-2, -1)  # (b, h, n, m): the terms of dP = dO·v, and of D
    t = p * (dp + (p * dp).sum(-1, keepdim=True))
    per_group = lambda x: x.view(b, g, h // g, *x.shape[2:]).sum(2)
    out = p @ vr.abs()  # (b, h, n, e)
    dq = scale * t @ kr.abs()  # (b, h, n, d)
    dk = per_group(scale * t.transpose(-2, -1) @ q.abs())  # (b, g, m, d)
    dv = per_group(p.transpose(-2, -1) @ dout.abs())  # (b, g, m, e)
    dist = torch.tensor([[abs(i + m - n - j) for j in range(m)] for i in range(n)], dtype=F64)
    dslopes = (t * dist.reshape(1, 1, n, m)).sum((0, 2, 3))  # (h,)
    logit = (scale * q.abs() @ kr.abs().transpose(-2, -1)).max().item() if q.numel() and k.numel() else 0.0
    return (out, dq, dk, dv, dslopes), logit
