"""Float64 references shared by the kernel tests (test_flash, test_cpu_fused), written from the definition:
explicit n x m scores in float64, every mask built from positions — no code shared with the backends.
Mask convention: True = may attend; causal bottom-right aligned."""

from __future__ import annotations

import torch


def reference_probs(q, k, v, *, pad=None, causal=False, window=None, slopes=None, scale=None):
    """float64 attention weights (b, h, n, m) and the values repeated per query head (b, h, m, e);
    rows with no allowed key are all 0."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, n, d = q.shape
    m, r = k.shape[2], h // k.shape[1]
    k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)  # (b, h, m, d|e)
    scale = d**-0.5 if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale  # (b, h, n, m)
    pos = torch.arange(n).view(n, 1) + (m - n)
    j = torch.arange(m).view(1, m)
    ok = torch.ones(n, m, dtype=torch.bool)
    if causal:
        ok &= j <= pos
    if window is not None:
        if window[0] is not None:
            ok &= j >= pos - window[0]
        if window[1] is not None:
            ok &= j <= pos + window[1]
    ok = ok.expand(b, h, n, m)
    if pad is not None:
        ok = ok & pad
    if slopes is not None:
        s = s - slopes.double().view(1, h, 1, 1) * (pos - j).abs().double()
    s = s.masked_fill(~ok, float("-inf"))
    mx = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(mx), mx, 0.0))
    den = p.sum(-1, keepdim=True)
    return p / torch.where(den > 0, den, 1.0), v


def rounding_tolerance(dtype, m, d):
    """Rounding bound: a few ulps per accumulated term of the longest sum (m keys, d dims)."""
    eps = torch.finfo(dtype).eps
    return 16 * eps * (m + d)
