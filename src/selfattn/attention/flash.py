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

Mask convention: boolean True = may attend; a floating mask is an additive bias (-inf forbids). Served:
any boolean or floating mask broadcastable to (b, h, n, m) (read block by block from its own broadcast
shape, never expanded or copied), segment ids ``(q_seg (b, n), k_seg (b, m))`` taken directly (query i
may attend key j only when ``q_seg[b, i] == k_seg[b, j]``; no n x m tensor is built), ``causal``
(bottom-right aligned: query i may attend key j when j <= i + m - n), a sliding ``window=(left, right)``
around each query's key position ``i + m - n`` and ALiBi slopes (Press et al., 2022). Pairs of blocks
that causal/window, the segments or a boolean mask rule out entirely are skipped (``flash_plan.py``;
causal costs about half). A row that may attend no key gets output 0 and
zero gradients, never NaN. A +inf/NaN logit (q·k overflowing) makes its row NaN; calls with a
NaN/inf in q, k or v go to backend "math" (the rule in :mod:`selfattn.attention.math_backend`).
ALiBi slopes and floating masks get no gradient here: ``flash_supports`` declines those that require one.

float16/bfloat16 inputs are computed in float32 (matmuls, softmax statistics, accumulation) and the
output is rounded back: on the AVX2 CPU this was written on, float32 matmuls are ~20x faster than
bfloat16 ones (no AVX-512 BF16 units), see ``benchmarks/attention.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from .flash_plan import Plan, blocks, make_plan
from .flash_plan import scores as _scores
from .guards import all_finite, bias_is_finite, empty_result, is_empty, tracing
from .math_backend import math_attention
from .spec import AttentionCall, fused_kernel_declines
from .structure import window_sides


@dataclass(frozen=True)
class FlashConfig:
    """Block sizes of the blockwise loops."""

    block_q: int = 512  # query rows per block: large enough that Python overhead is amortised
    block_k: int = 1024  # key columns per block: (b, h, 512, 1024) float32 scores = 2 MiB per head


DEFAULT_CONFIG = FlashConfig()
_FLOOR = -1e30  # initial running maximum: below any finite score, above -inf


def _forward(q5: Tensor, k: Tensor, v: Tensor, plan: Plan) -> tuple[Tensor, Tensor]:
    """q5: (b, g, r, n, d) compute dtype. Returns out (b, g, r, n, e) and lse (b, g, r, n)."""
    b, g, r, n, _ = q5.shape
    e = v.shape[3]
    out = q5.new_zeros(b, g, r, n, e)
    lse = q5.new_full((b, g, r, n), float("inf"))  # +inf: rows that attend nothing
    for qi, (i0, i1) in enumerate(blocks(n, plan.block_q)):
        tiles = plan.tiles(qi, i0, i1)
        if not tiles:
            continue
        bq = i1 - i0
        qb = q5[:, :, :, i0:i1].reshape(b, g, r * bq, -1)  # (b, g, r*bq, d)
        # a finite floor instead of -inf: exp(-inf - floor) = 0 and no isfinite() fix-ups per block
        row_max = q5.new_full((b, g, r, bq, 1), _FLOOR)
        denom = q5.new_zeros(b, g, r, bq, 1)
        acc = q5.new_zeros(b, g, r, bq, e)
        for t in tiles:
            s = _scores(qb, k[:, :, t.j0:t.j1], plan, t)  # (b, g, r, bq, bk)
            new_max = torch.maximum(row_max, s.amax(dim=-1, keepdim=True))  # (b, g, r, bq, 1)
            p = s.sub_(new_max).exp_()  # (b, g, r, bq, bk); forbidden keys give exp(-inf) = 0
            alpha = torch.exp(row_max - new_max)  # rescales what was accumulated so far
            denom.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))
            pv = torch.matmul(p.view(b, g, r * bq, -1), v[:, :, t.j0:t.j1])  # (b, g, r*bq, e)
            acc.mul_(alpha).add_(pv.view(b, g, r, bq, e))
            row_max = new_max
        live = denom != 0  # dead rows sum to exactly 0; a NaN sum (+inf logit) stays NaN
        out[:, :, :, i0:i1] = torch.where(live, acc / torch.where(live, denom, 1.0), 0.0)
        lse[:, :, :, i0:i1] = torch.where(live, row_max + torch.log(torch.where(live, denom, 1.0)),
                                          float("inf")).squeeze(-1)
    return out, lse


def _backward(q5: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
              plan: Plan) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq5, dk, dv) by recomputing p = exp(s - lse) tile by tile (FlashAttention-2)."""
    b, g, r, n, d = q5.shape
    e = v.shape[3]
    delta = (dout * out).sum(dim=-1, keepdim=True)  # (b, g, r, n, 1): rowsum(dO * O)
    dq = torch.zeros_like(q5)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    # a +inf/NaN logit: exp(s - NaN) must stay 0 where s = -inf
    nan_rows = not tracing() and bool(torch.isnan(lse).any())
    tiles = [t for qi, (i0, i1) in enumerate(blocks(n, plan.block_q)) for t in plan.tiles(qi, i0, i1)]
    tiles.sort(key=lambda t: t.j0)  # key-major: one key block's dk/dv accumulate together
    for t in tiles:
        i0, i1, c0, c1 = t.i0, t.i1, t.j0, t.j1
        bq, bc = i1 - i0, c1 - c0
        qb = q5[:, :, :, i0:i1].reshape(b, g, r * bq, d)  # (b, g, r*bq, d)
        kb, vb = k[:, :, c0:c1], v[:, :, c0:c1]  # (b, g, bc, d), (b, g, bc, e)
        s = _scores(qb, kb, plan, t)  # (b, g, r, bq, bc)
        absent = torch.isneginf(s) if nan_rows else None  # masked keys of NaN rows: no gradient
        p = s.sub_(lse[:, :, :, i0:i1].unsqueeze(-1)).exp_()  # (b, g, r, bq, bc); lse=inf -> 0
        p2 = p.view(b, g, r * bq, bc)  # (b, g, r*bq, bc)
        if absent is not None:
            p2.masked_fill_(absent.view(b, g, r * bq, bc), 0.0)
        do_b = dout[:, :, :, i0:i1].reshape(b, g, r * bq, e)  # (b, g, r*bq, e)
        dv[:, :, c0:c1] += torch.matmul(p2.transpose(-2, -1), do_b)  # sums over the r heads
        dp = torch.matmul(do_b, vb.transpose(-2, -1))  # (b, g, r*bq, bc)
        ds = p2.mul_(dp.sub_(delta[:, :, :, i0:i1].reshape(b, g, r * bq, 1)))  # dS = P*(dP-Δ)
        if absent is not None:
            ds.masked_fill_(absent.view(b, g, r * bq, bc), 0.0)
        ds.mul_(plan.scale)
        dq[:, :, :, i0:i1] += torch.matmul(ds, kb).view(b, g, r, bq, d)
        dk[:, :, c0:c1] += torch.matmul(ds.transpose(-2, -1), qb)
    return dq, dk, dv


class FlashFunction(torch.autograd.Function):
    """Autograd wrapper: saves (q, k, v, out, lse) and the masks given, O(N) memory, and recomputes in backward."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, q_seg: Tensor | None,
                k_seg: Tensor | None, slopes: Tensor | None, scale: float, causal: bool,
                window: tuple[int | None, int | None] | None, cfg: FlashConfig) -> Tensor:
        b, h, n, d = q.shape
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        plan = _plan(q, k, mask, q_seg, k_seg, slopes, scale, causal, window, cfg, cdt)
        q5 = q.to(cdt).view(b, k.shape[1], h // k.shape[1], n, d)  # (b, g, r, n, d)
        out5, lse = _forward(q5, k.to(cdt), v.to(cdt), plan)
        ctx.save_for_backward(q, k, v, out5, lse, mask, q_seg, k_seg, slopes)
        ctx.args = (scale, causal, window, cfg)
        ctx.live = plan.live  # the skip table, reused rather than rebuilt
        return out5.view(b, h, n, -1).to(q.dtype)  # (b, h, n, e)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out5, lse, mask, q_seg, k_seg, slopes = ctx.saved_tensors
        b, h, n, d = q.shape
        cdt = out5.dtype
        scale, causal, window, cfg = ctx.args
        plan = _plan(q, k, mask, q_seg, k_seg, slopes, scale, causal, window, cfg, cdt, live=ctx.live)
        g = k.shape[1]
        q5 = q.to(cdt).view(b, g, h // g, n, d)  # (b, g, r, n, d)
        do5 = dout.to(cdt).reshape(b, g, h // g, n, -1)  # (b, g, r, n, e)
        dq, dk, dv = _backward(q5, k.to(cdt), v.to(cdt), out5, lse, do5, plan)
        return (dq.view(b, h, n, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)) + (None,) * 8


def _plan(q: Tensor, k: Tensor, mask: Tensor | None, q_seg: Tensor | None, k_seg: Tensor | None,
          slopes: Tensor | None, scale: float, causal: bool, window: tuple[int | None, int | None] | None,
          cfg: FlashConfig, cdt: torch.dtype, live: list[list[bool]] | None = None) -> Plan:
    g, h = k.shape[1], q.shape[1]
    segs = None if q_seg is None or k_seg is None else (q_seg, k_seg)
    sl = None if slopes is None else slopes.to(cdt).view(1, g, h // g, 1, 1)  # (1, g, r, 1, 1)
    plan = make_plan(n=q.shape[2], m=k.shape[2], g=g, r=h // g, scale=scale, causal=causal, window=window,
                     block_q=cfg.block_q, block_k=cfg.block_k, mask=mask, segment_ids=segs, slopes=sl,
                     dtype=cdt, skip=live is None and not tracing())
    return plan if live is None else dataclasses.replace(plan, live=live)


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
    segment_ids: tuple[Tensor, Tensor] | None = None, config: FlashConfig = DEFAULT_CONFIG,
) -> tuple[Tensor, None]:
    """Exact attention in O(N) memory; see the module docstring for what it supports.

    The ALiBi slopes and a floating mask get no gradient (through the registry a call that wants one goes
    to a backend that gives it).
    """
    if dropout_p > 0 or return_weights:
        raise ValueError(f"flash attention supports no dropout and no returned weights; got "
                         f"dropout_p={dropout_p}, return_weights={return_weights}")
    if is_empty(q, k):
        return empty_result(q, k, v), None
    if not all_finite(q, k, v) or not bias_is_finite(mask):  # the rule for NaN/inf inputs lives in math_backend
        return math_attention(q, k, v, mask=mask, causal=causal, scale=scale, window=window,
                              alibi_slopes=alibi_slopes, segment_ids=segment_ids)[0], None
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q_seg, k_seg = (None, None) if segment_ids is None else segment_ids
    out = cast(Tensor, FlashFunction.apply(  # type: ignore[no-untyped-call]
        q, k, v, None if mask is None else mask.detach(), q_seg, k_seg, alibi_slopes, scale, bool(causal),
        window, config))
    return out, None


def flash_supports(call: AttentionCall) -> str | None:
    """Why "flash" cannot serve a call, or None."""
    return fused_kernel_declines(call, "flash")


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
    may see (``flash_plan.key_range``), about window width + block_q keys per query."""
    left, right = window_sides(call.causal, call.window)
    width = (call.k_len if left is None else left) + (call.k_len if right is None else right) + 1
    return call.q_len * min(call.k_len, width + cfg.block_q)


def _sdpa_mask_bytes(call: AttentionCall) -> int:
    """Size of the explicit mask the "torch" backend builds for this call (0 when none)."""
    n, m = call.q_len, call.k_len
    if call.segments and not (call.alibi or call.mask_kind == "float"):
        return call.batch * n * m  # the segments' (b, 1, n, m) boolean mask
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
