"""Backend "flash": exact blockwise attention with online softmax, O(N) memory forward and backward.

The FlashAttention algorithm (Dao et al., 2022, "FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness"; FlashAttention-2, Dao 2023) written with PyTorch ops: queries are
processed in blocks of ``block_q`` rows, keys in blocks of ``block_k`` columns; each query block
keeps a running row maximum, a running softmax denominator and an unnormalised output
(online softmax, Milakov & Gimelshein 2018). The forward saves only q, k, v, the output and the
per-row log-sum-exp; the backward recomputes every score block from them. No tensor of size
n x m is ever built, so peak memory is linear in the sequence length, forward and backward.

Legend: b batch, h query heads, g kv heads (h = g * r), r query heads per kv head,
n queries, m keys, d q/k head dim, e v head dim; i/j index query/key blocks.

Mask convention: boolean True = may attend. Supported masks are those expressible without an
n x m tensor: a key-padding mask shaped (b|1, 1, 1, m), ``causal`` (bottom-right aligned: query i
may attend key j when j <= i + m - n), a sliding ``window=(left, right)`` around each query's key
position ``i + m - n`` and ALiBi slopes (Press et al., 2022). Key blocks that causal/window hide
entirely are skipped (causal costs about half). A row that may attend no key gets output 0 and
zero gradients, never NaN. A +inf/NaN logit (q·k overflowing) makes its row NaN; calls with a
NaN/inf in q, k or v go to backend "math" (the rule in :mod:`selfattn.attention.math_backend`).
ALiBi slopes get no gradient here: ``flash_supports`` declines slopes that require one.

float16/bfloat16 inputs are computed in float32 (matmuls, softmax statistics, accumulation) and the
output is rounded back: on the AVX2 CPU this was written on, float32 matmuls are ~20x faster than
bfloat16 ones (no AVX-512 BF16 units), see ``benchmarks/attention.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from .math_backend import math_attention
from .spec import (
    AttentionCall,
    all_finite,
    empty_result,
    is_empty,
    key_padding_kernel_declines,
    key_padding_rows,
    tracing,
)


@dataclass(frozen=True)
class FlashConfig:
    """Block sizes of the blockwise loops."""

    block_q: int = 512  # query rows per block: large enough that Python overhead is amortised
    block_k: int = 1024  # key columns per block: (b, h, 512, 1024) float32 scores = 2 MiB per head


DEFAULT_CONFIG = FlashConfig()
_FLOOR = -1e30  # initial running maximum: below any finite score, above -inf


def _sides(causal: bool, window: tuple[int | None, int | None] | None) -> tuple[int | None, int | None]:
    """(left, right) keys around each query's key position; causal caps right at 0; None = unlimited."""
    left, right = window if window is not None else (None, None)
    if causal:
        right = 0 if right is None else min(right, 0)
    return left, right


def _key_range(i0: int, i1: int, n: int, m: int, causal: bool,
               window: tuple[int | None, int | None] | None) -> tuple[int, int]:
    """Keys [lo, hi) that some query in rows [i0, i1) may attend (causal/window, bottom-right)."""
    left, right = _sides(causal, window)
    p0, p1 = i0 + m - n, i1 - 1 + m - n  # key positions of the first and last query
    lo = 0 if left is None else max(0, p0 - left)
    hi = m if right is None else min(m, p1 + right + 1)
    return lo, max(lo, hi)


def _block_forbidden(i0: int, i1: int, j0: int, j1: int, n: int, m: int, causal: bool,
                     window: tuple[int | None, int | None] | None,
                     device: torch.device | str) -> Tensor | None:
    """(bq, bk) boolean, True = may NOT attend, or None when every pair in the block is allowed."""
    left, right = _sides(causal, window)
    p0, p1 = i0 + m - n, i1 - 1 + m - n
    full = (left is None or j0 >= p1 - left) and (right is None or j1 - 1 <= p0 + right)
    if full:
        return None
    # the pattern depends only on the block's diagonal offset: cached across blocks and calls
    return _forbidden_pattern(p0 - j0, i1 - i0, j1 - j0, left, right, str(device))


@functools.lru_cache(maxsize=64)
def _forbidden_pattern(offset: int, bq: int, bk: int, left: int | None, right: int | None, device: str) -> Tensor:
    pos = torch.arange(bq, device=device).unsqueeze(1) + offset  # (bq, 1) key position - j0
    j = torch.arange(bk, device=device).unsqueeze(0)  # (1, bk)
    bad = torch.zeros(bq, bk, dtype=torch.bool, device=device)
    if left is not None:
        bad |= j < pos - left
    if right is not None:
        bad |= j > pos + right
    return bad


def _scores(qb: Tensor, kb: Tensor, i0: int, i1: int, j0: int, j1: int, n: int, m: int, scale: float,
            causal: bool, window: tuple[int | None, int | None] | None, kpm: Tensor | None,
            slopes: Tensor | None) -> Tensor:
    """Masked scores of one block, (b, g, r, bq, bk) in the compute dtype, -inf where forbidden.

    qb: (b, g, r*bq, d) query block; kb: (b, g, bk, d) key block; kpm: (b|1, m) bool, True = padded;
    slopes: (1, g, r, 1, 1) ALiBi slopes or None.
    """
    b, g, _, _ = qb.shape
    bq, bk = i1 - i0, j1 - j0
    s = torch.matmul(qb, kb.transpose(-2, -1)).view(b, g, -1, bq, bk)  # (b, g, r, bq, bk)
    s.mul_(scale)
    if slopes is not None:  # ALiBi: -slope * |pos_i - j|
        pos = torch.arange(i0, i1, device=s.device, dtype=s.dtype).unsqueeze(1) + (m - n)  # (bq, 1)
        j = torch.arange(j0, j1, device=s.device, dtype=s.dtype).unsqueeze(0)  # (1, bk)
        s.sub_(slopes * (pos - j).abs())
    bad = _block_forbidden(i0, i1, j0, j1, n, m, causal, window, s.device)  # (bq, bk) or None
    if bad is not None:
        s.masked_fill_(bad, float("-inf"))
    if kpm is not None:  # kpm holds True = padded (may NOT attend), see FlashFunction
        s.masked_fill_(kpm[:, j0:j1].view(kpm.shape[0], 1, 1, 1, bk), float("-inf"))
    return s


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _forward(q5: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None, scale: float,
             causal: bool, window: tuple[int | None, int | None] | None, cfg: FlashConfig) -> tuple[Tensor, Tensor]:
    """q5: (b, g, r, n, d) compute dtype. Returns out (b, g, r, n, e) and lse (b, g, r, n)."""
    b, g, r, n, _ = q5.shape
    m, e = k.shape[2], v.shape[3]
    out = q5.new_zeros(b, g, r, n, e)
    lse = q5.new_full((b, g, r, n), float("inf"))  # +inf: rows that attend nothing
    for i0, i1 in _blocks(n, cfg.block_q):
        lo, hi = _key_range(i0, i1, n, m, causal, window)
        if lo >= hi:
            continue
        bq = i1 - i0
        qb = q5[:, :, :, i0:i1].reshape(b, g, r * bq, -1)  # (b, g, r*bq, d)
        # a finite floor instead of -inf: exp(-inf - floor) = 0 and no isfinite() fix-ups per block
        row_max = q5.new_full((b, g, r, bq, 1), _FLOOR)
        denom = q5.new_zeros(b, g, r, bq, 1)
        acc = q5.new_zeros(b, g, r, bq, e)
        for j0 in range(lo, hi, cfg.block_k):
            j1 = min(j0 + cfg.block_k, hi)
            s = _scores(qb, k[:, :, j0:j1], i0, i1, j0, j1, n, m, scale, causal, window, kpm, slopes)
            new_max = torch.maximum(row_max, s.amax(dim=-1, keepdim=True))  # (b, g, r, bq, 1)
            p = s.sub_(new_max).exp_()  # (b, g, r, bq, bk); forbidden keys give exp(-inf) = 0
            alpha = torch.exp(row_max - new_max)  # rescales what was accumulated so far
            denom.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))
            pv = torch.matmul(p.view(b, g, r * bq, -1), v[:, :, j0:j1])  # (b, g, r*bq, e)
            acc.mul_(alpha).add_(pv.view(b, g, r, bq, e))
            row_max = new_max
        live = denom != 0  # dead rows sum to exactly 0; a NaN sum (+inf logit) stays NaN
        out[:, :, :, i0:i1] = torch.where(live, acc / torch.where(live, denom, 1.0), 0.0)
        lse[:, :, :, i0:i1] = torch.where(live, row_max + torch.log(torch.where(live, denom, 1.0)),
                                          float("inf")).squeeze(-1)
    return out, lse


def _backward(q5: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, kpm: Tensor | None,
              slopes: Tensor | None, scale: float, causal: bool, window: tuple[int | None, int | None] | None,
              cfg: FlashConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq5, dk, dv) by recomputing p = exp(s - lse) block by block (FlashAttention-2)."""
    b, g, r, n, d = q5.shape
    m, e = k.shape[2], v.shape[3]
    delta = (dout * out).sum(dim=-1, keepdim=True)  # (b, g, r, n, 1): rowsum(dO * O)
    dq = torch.zeros_like(q5)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    # a +inf/NaN logit: exp(s - NaN) must stay 0 where s = -inf
    nan_rows = not tracing() and bool(torch.isnan(lse).any())
    q_blocks = _blocks(n, cfg.block_q)
    ranges = [_key_range(i0, i1, n, m, causal, window) for i0, i1 in q_blocks]
    for j0, j1 in _blocks(m, cfg.block_k):
        kb, vb = k[:, :, j0:j1], v[:, :, j0:j1]  # (b, g, bk, d), (b, g, bk, e)
        for (i0, i1), (lo, hi) in zip(q_blocks, ranges):
            c0, c1 = max(j0, lo), min(j1, hi)  # the part of this key block these queries see
            if c0 >= c1:
                continue
            bq = i1 - i0
            qb = q5[:, :, :, i0:i1].reshape(b, g, r * bq, d)  # (b, g, r*bq, d)
            s = _scores(qb, k[:, :, c0:c1], i0, i1, c0, c1, n, m, scale, causal, window, kpm, slopes)
            absent = torch.isneginf(s) if nan_rows else None  # masked keys of NaN rows: no gradient
            p = s.sub_(lse[:, :, :, i0:i1].unsqueeze(-1)).exp_()  # (b, g, r, bq, bc); lse=inf -> 0
            p2 = p.view(b, g, r * bq, c1 - c0)  # (b, g, r*bq, bc)
            if absent is not None:
                p2.masked_fill_(absent.view(b, g, r * bq, c1 - c0), 0.0)
            do_b = dout[:, :, :, i0:i1].reshape(b, g, r * bq, e)  # (b, g, r*bq, e)
            dv[:, :, c0:c1] += torch.matmul(p2.transpose(-2, -1), do_b)  # sums over the r heads
            dp = torch.matmul(do_b, vb[:, :, c0 - j0:c1 - j0].transpose(-2, -1))  # (b, g, r*bq, bc)
            ds = p2.mul_(dp.sub_(delta[:, :, :, i0:i1].reshape(b, g, r * bq, 1)))  # dS = P*(dP-Δ)
            if absent is not None:
                ds.masked_fill_(absent.view(b, g, r * bq, c1 - c0), 0.0)
            ds.mul_(scale)
            dq[:, :, :, i0:i1] += torch.matmul(ds, kb[:, :, c0 - j0:c1 - j0]).view(b, g, r, bq, d)
            dk[:, :, c0:c1] += torch.matmul(ds.transpose(-2, -1), qb)
    return dq, dk, dv


class FlashFunction(torch.autograd.Function):
    """Autograd wrapper: saves (q, k, v, out, lse), O(N) memory, and recomputes in backward."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, slopes: Tensor | None,
                scale: float, causal: bool, window: tuple[int | None, int | None] | None, cfg: FlashConfig) -> Tensor:
        b, h, n, d = q.shape
        g = k.shape[1]
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        q5 = q.to(cdt).view(b, g, h // g, n, d)  # (b, g, r, n, d)
        kc, vc = k.to(cdt), v.to(cdt)
        sl = None if slopes is None else slopes.to(cdt).view(1, g, h // g, 1, 1)  # (1, g, r, 1, 1)
        out5, lse = _forward(q5, kc, vc, kpm, sl, scale, causal, window, cfg)
        ctx.save_for_backward(q, k, v, out5, lse, kpm, slopes)
        ctx.args = (scale, causal, window, cfg)
        return out5.view(b, h, n, -1).to(q.dtype)  # (b, h, n, e)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out5, lse, kpm, slopes = ctx.saved_tensors
        scale, causal, window, cfg = ctx.args
        b, h, n, d = q.shape
        g = k.shape[1]
        cdt = out5.dtype
        q5 = q.to(cdt).view(b, g, h // g, n, d)  # (b, g, r, n, d)
        do5 = dout.to(cdt).reshape(b, g, h // g, n, -1)  # (b, g, r, n, e)
        sl = None if slopes is None else slopes.to(cdt).view(1, g, h // g, 1, 1)
        dq, dk, dv = _backward(q5, k.to(cdt), v.to(cdt), out5, lse, do5, kpm, sl, scale, causal,
                               window, cfg)
        return (dq.view(b, h, n, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                None, None, None, None, None, None)


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
    config: FlashConfig = DEFAULT_CONFIG,
) -> tuple[Tensor, None]:
    """Exact attention in O(N) memory; see the module docstring for what it supports.

    The ALiBi slopes get no gradient (they are fixed per head in the paper; through the registry a
    call whose slopes require a gradient goes to a backend that gives it).
    """
    allowed = key_padding_rows("flash attention", mask, k.shape[2], dropout_p, return_weights)
    if is_empty(q, k):
        return empty_result(q, k, v), None
    if not all_finite(q, k, v):  # the rule for NaN/inf inputs lives in the reference (math_backend)
        return math_attention(q, k, v, mask=mask, causal=causal, scale=scale, window=window,
                              alibi_slopes=alibi_slopes)[0], None
    kpm = None if allowed is None else ~allowed  # (b|1, m), True = padded
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out = cast(Tensor, FlashFunction.apply(  # type: ignore[no-untyped-call]
        q, k, v, kpm, alibi_slopes, scale, bool(causal), window, config))
    return out, None


def flash_supports(call: AttentionCall) -> str | None:
    """Why "flash" cannot serve a call, or None."""
    return key_padding_kernel_declines(call, "flash")


# "auto" and flash (measured with benchmarks/attention.py on a 2-core AVX2 CPU): the PyTorch-op
# blockwise loops are slower than SDPA per computed pair, so flash is picked only where it saves
# enough work (a window that hides most key blocks) or where SDPA would materialise a large mask.
AUTO_MIN_SCORES = 2048 * 2048  # below this n*m the Python block overhead dominates
AUTO_MASK_BYTES = 2**30  # pick flash when SDPA's explicit mask would exceed 1 GiB
# SDPA with a window mask computes all n*m pairs, flash only the key range of each query block, but
# SDPA computes pairs faster. Idle 2-core AVX2 CPU, fp32, window 512 (benchmarks/results/
# attention-cpu-window-calibration.md and attention-cpu-n16k-window.md): SDPA's pair rate over flash's
# is 1.9 (N 2048), 2.3 (4096), 2.0 (16384) forward and 1.6, 1.7, 1.9 forward+backward. Flash is
# picked for a window when it leaves SDPA's pairs more than these (rounded up) times over.
AUTO_SDPA_PAIR_RATE = {"forward": 2.5, "backward": 2.0}


def flash_pairs(call: AttentionCall, cfg: FlashConfig = DEFAULT_CONFIG) -> int:
    """(query, key) pairs flash computes for a windowed call: each query block scans the keys its rows
    may see (``_key_range``), about window width + block_q keys per query."""
    left, right = _sides(call.causal, call.window)
    width = (call.k_len if left is None else left) + (call.k_len if right is None else right) + 1
    return call.q_len * min(call.k_len, width + cfg.block_q)


def _sdpa_mask_bytes(call: AttentionCall) -> int:
    """Size of the explicit mask the "torch" backend builds for this call (0 when none)."""
    n, m = call.q_len, call.k_len
    if call.alibi or call.mask_kind == "float":
        return 4 * call.q_heads * n * m  # float32 bias per head
    if call.mask_kind == "bool" or call.window is not None or (call.causal and n != m):
        return call.batch * n * m  # one boolean per (query, key), per batch row
    return 0


def flash_auto_declines(call: AttentionCall) -> str | None:
    """Why "auto" should not pick flash although it could serve the call (measured, see above)."""
    why = flash_supports(call)
    if why is not None:
        return why
    mask_bytes = _sdpa_mask_bytes(call)
    if mask_bytes == 0:
        return ("PyTorch's fused SDPA serves this call without a materialised mask and is faster "
                "than the PyTorch-op blockwise loops on CPU")
    if call.q_len * call.k_len < AUTO_MIN_SCORES:
        return (f"short sequences (Nq*Nk = {call.q_len * call.k_len} < {AUTO_MIN_SCORES}): SDPA's "
                "explicit mask is cheap and SDPA is faster")
    mode = "backward" if call.requires_grad else "forward"
    if call.window is not None:
        pairs, rate = flash_pairs(call), AUTO_SDPA_PAIR_RATE[mode]
        if rate * pairs <= call.q_len * call.k_len:
            return None  # flash skips the hidden key blocks: less work than SDPA's full n x m
        if mask_bytes < AUTO_MASK_BYTES:
            return (f"the window leaves {pairs} of {call.q_len * call.k_len} (query, key) pairs to flash, but "
                    f"SDPA computes pairs ~{rate:g}x faster ({mode}, measured); SDPA's mask is "
                    f"{mask_bytes / 2**20:.0f} MiB")
    if mask_bytes >= AUTO_MASK_BYTES:
        return None
    return (f"SDPA's explicit mask ({mask_bytes / 2**20:.0f} MiB) is affordable and SDPA is faster "
            f"here; flash is picked above {AUTO_MASK_BYTES / 2**30:.0f} GiB of mask or for windows that "
            f"leave it less than 1/{AUTO_SDPA_PAIR_RATE[mode]:g} of the pairs")


__all__ = ["FlashConfig", "FlashFunction", "flash_attention", "flash_auto_declines", "flash_supports"]
