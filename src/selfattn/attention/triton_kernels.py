"""Triton kernels of backend "triton": FlashAttention-2 forward and backward (Dao, 2023).

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Tiles: BLOCK_M query rows x BLOCK_N key columns; BLOCK_D / BLOCK_E are d / e padded to a power
of two (>= 16, what ``tl.dot`` needs), the padding masked to zero on load.

Mask convention: True = may attend. Causal and sliding windows are bottom-right aligned: query i
sits at key position ``pos = i + (m - n)`` and may attend key j when
``pos - LEFT <= j <= pos + RIGHT`` (causal is RIGHT = 0, the caller folds it in). An optional
key-padding row ``PAD`` (b|1, m) of int8, non-zero = may attend, is and-ed in.

Scores are kept in log2 units (``qk_scale = scale * log2(e)``, ``exp2``), as in FlashAttention-2.
A query row with no allowed key gets output 0 and log-sum-exp ``+inf``, so that the backward's
``exp2(s - lse)`` is 0 for it; forbidden entries are zeroed with ``tl.where`` as well (zero
gradients, never NaN). Batch / head offsets are int64 (large batches do not overflow int32).

Interpreter (``TRITON_INTERPRET=1``, set before this module is imported): ``UPCAST`` computes the
dots in float32, because the interpreter's bf16 ``tl.dot`` is wrong. Plain pointer arithmetic
only (``tl.make_block_ptr`` is gone in Triton 3.9). No autotune: configs are chosen by the caller.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Decided once, like ``triton.jit`` itself decides when it decorates the kernels below.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _allowed(offs_m, offs_n, pad_ptr, NQ, NK, LEFT, RIGHT,
             HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr):
    """(BLOCK_M, BLOCK_N) boolean: query offs_m may attend key offs_n (True = may attend)."""
    pos = offs_m + (NK - NQ)  # key position of each query (bottom-right aligned)
    ok = (offs_m[:, None] < NQ) & (offs_n[None, :] < NK)
    if HAS_RIGHT:
        ok = ok & (offs_n[None, :] <= pos[:, None] + RIGHT)
    if HAS_LEFT:
        ok = ok & (offs_n[None, :] >= pos[:, None] - LEFT)
    if HAS_PAD:
        keep = tl.load(pad_ptr + offs_n, mask=offs_n < NK, other=0)  # (BLOCK_N,)
        ok = ok & (keep != 0)[None, :]
    return ok


@triton.jit
def _key_range(start_m, NQ, NK, LEFT, RIGHT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Keys [lo, hi) that queries [start_m, start_m + BLOCK_M) may see; lo aligned to BLOCK_N.

    Blocks outside are hidden entirely by causal / window and skipped (causal costs ~half).
    """
    off = NK - NQ
    lo = start_m * 0  # scalar tensors in both branches (no constexpr ints returned)
    hi = start_m * 0 + NK
    if HAS_LEFT:
        lo = tl.maximum(start_m + off - LEFT, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        last = tl.minimum(start_m + BLOCK_M, NQ) - 1
        hi = tl.minimum(last + off + RIGHT + 1, NK)
    return lo, hi


@triton.jit
def _query_range(start_n, NQ, NK, LEFT, RIGHT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Queries [lo, hi) that may see some key of [start_n, start_n + BLOCK_N); lo aligned."""
    off = NK - NQ
    lo = start_n * 0
    hi = start_n * 0 + NQ
    if HAS_RIGHT:  # j <= i + off + RIGHT  <=>  i >= j - off - RIGHT
        lo = tl.maximum(start_n - off - RIGHT, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    if HAS_LEFT:  # j >= i + off - LEFT  <=>  i <= j - off + LEFT
        last = tl.minimum(start_n + BLOCK_N, NK) - 1
        hi = tl.minimum(last - off + LEFT + 1, NQ)
    return lo, hi


@triton.jit
def _interior(start_m, lo, hi, NQ, NK, LEFT, RIGHT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Keys [a, c) inside [lo, hi), BLOCK_N-aligned, that every valid query of the block may see.

    If a reaches hi, the masked loop over [lo, a) covers everything and [a, c), [c, hi) are empty;
    if hi < lo (every query of the block is dead), all three ranges are empty.
    """
    off = NK - NQ
    full_lo = lo
    full_hi = hi
    if HAS_LEFT:  # j >= pos - LEFT for the last valid query
        full_lo = tl.maximum(full_lo, tl.minimum(start_m + BLOCK_M, NQ) - 1 + off - LEFT)
    if HAS_RIGHT:  # j <= pos + RIGHT for the first query
        full_hi = tl.minimum(full_hi, start_m + off + RIGHT + 1)
    a = tl.maximum(tl.minimum(((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, hi), lo)  # lo <= a
    c = tl.maximum((tl.maximum(full_hi, 0) // BLOCK_N) * BLOCK_N, a)  # // truncates: keep it >= 0
    return a, c


@triton.jit
def _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, start_n, offs_m, offs_n0, offs_d, offs_e,
               skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT, HAS_LEFT: tl.constexpr,
               HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, UPCAST: tl.constexpr,
               MASKED: tl.constexpr):
    """One key block of the forward's online softmax (FlashAttention-2, Algorithm 1)."""
    offs_n = start_n + offs_n0
    kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None],
                 mask=(offs_n[None, :] < NK) & (offs_d[:, None] < D), other=0.0)  # (BD, BN)
    v = tl.load(v_base + offs_n[:, None] * svn + offs_e[None, :],
                mask=(offs_n[:, None] < NK) & (offs_e[None, :] < E), other=0.0)  # (BN, BE)
    if UPCAST:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, kt) * qk_scale  # (BM, BN) in log2 units
    if MASKED:
        ok = _allowed(offs_m, offs_n, pad_ptr, NQ, NK, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD)
        s = tl.where(ok, s, float("-inf"))
    elif HAS_PAD:
        keep = tl.load(pad_ptr + offs_n, mask=offs_n < NK, other=0)  # (BN,)
        s = tl.where((keep != 0)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
    alpha = tl.exp2(m_i - m_safe)  # rescales the old sums; 0 when m_i = -inf
    p = tl.exp2(s - m_safe[:, None])  # 0 where forbidden
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def attn_fwd(
    Q, K, V, O, LSE, PAD,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, spb,
    H, GROUPS, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """One program: BLOCK_M queries of one (batch, head); online softmax over key blocks."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    g = h // GROUPS  # kv head serving this query head (GQA / MQA)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_E)
    offs_n0 = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
                mask=(offs_m[:, None] < NQ) & (offs_d[None, :] < D), other=0.0)  # (BM, BD)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + g * skh
    v_base = V + b * svb + g * svh
    pad_ptr = PAD + b * spb

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
    lo, hi = _key_range(start_m, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    a, c = _interior(start_m, lo, hi, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    # [lo, a) and [c, hi): blocks cut by the causal / window edge or the ragged end -> full mask;
    # [a, c): every valid query may attend every key (up to padding) -> no structural mask.
    for start_n in range(lo, a, BLOCK_N):
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, start_n, offs_m, offs_n0,
                                   offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
                                   HAS_LEFT, HAS_RIGHT, HAS_PAD, UPCAST, True)
    for start_n in range(a, c, BLOCK_N):
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, start_n, offs_m, offs_n0,
                                   offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
                                   HAS_LEFT, HAS_RIGHT, HAS_PAD, UPCAST, False)
    for start_n in range(c, hi, BLOCK_N):
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, start_n, offs_m, offs_n0,
                                   offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
                                   HAS_LEFT, HAS_RIGHT, HAS_PAD, UPCAST, True)

    alive = l_i > 0
    out = acc / tl.where(alive, l_i, 1.0)[:, None]  # dead rows: acc = 0 -> 0
    tl.store(O + b * sob + h * soh + offs_m[:, None] * son + offs_e[None, :],
             out.to(O.dtype.element_ty), mask=(offs_m[:, None] < NQ) & (offs_e[None, :] < E))
    lse = tl.where(alive, m_i + tl.log2(tl.where(alive, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh * NQ + offs_m, lse, mask=offs_m < NQ)  # LSE is (b, h, n) contiguous


@triton.jit
def _bwd_dkdv_block(k, v, dk, dv, q_base, do_base, lse_ptr, delta_ptr, pad_ptr, offs_m, offs_n, offs_d, offs_e,
                    sqn, sdon, NQ, NK, D, E, qk_scale, LEFT, RIGHT, HAS_LEFT: tl.constexpr,
                    HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, UPCAST: tl.constexpr):
    """One query block of the dK, dV backward, on transposed (keys x queries) tiles; returns dk, dv."""
    q = tl.load(q_base + offs_m[:, None] * sqn + offs_d[None, :],
                mask=(offs_m[:, None] < NQ) & (offs_d[None, :] < D), other=0.0)  # (BM, BD)
    do = tl.load(do_base + offs_m[:, None] * sdon + offs_e[None, :],
                 mask=(offs_m[:, None] < NQ) & (offs_e[None, :] < E), other=0.0)  # (BM, BE)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(lse_ptr + offs_m, mask=offs_m < NQ, other=float("inf"))
    delta = tl.load(delta_ptr + offs_m, mask=offs_m < NQ, other=0.0)
    st = tl.dot(k, tl.trans(q)) * qk_scale  # (BN, BM)
    ok = tl.trans(_allowed(offs_m, offs_n, pad_ptr, NQ, NK, LEFT, RIGHT,
                           HAS_LEFT, HAS_RIGHT, HAS_PAD))  # (BN, BM)
    pt = tl.where(ok, tl.exp2(st - lse[None, :]), 0.0)
    dv += tl.dot(pt.to(do.dtype), do)
    dpt = tl.dot(v, tl.trans(do))  # (BN, BM)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q)
    return dk, dv


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, PAD,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdon,
    sdkb, sdkh, sdkn, sdvb, sdvh, sdvn, spb,
    H, GROUPS, NQ, NK, D, E, qk_scale, sm_scale, LEFT, RIGHT,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """One program: dK, dV of BLOCK_N keys of one kv head, summed over its GROUPS query heads.

    Works on transposed tiles (keys x queries): P^T = exp2(K Q^T - lse), dV = P^T dO,
    dS^T = P^T * (V dO^T - delta), dK = scale * dS^T Q. No atomics: deterministic.
    """
    start_n = tl.program_id(0) * BLOCK_N
    bg = tl.program_id(1)
    G = H // GROUPS
    b = (bg // G).to(tl.int64)
    g = (bg % G).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_E)
    offs_m0 = tl.arange(0, BLOCK_M)
    k = tl.load(K + b * skb + g * skh + offs_n[:, None] * skn + offs_d[None, :],
                mask=(offs_n[:, None] < NK) & (offs_d[None, :] < D), other=0.0)  # (BN, BD)
    v = tl.load(V + b * svb + g * svh + offs_n[:, None] * svn + offs_e[None, :],
                mask=(offs_n[:, None] < NK) & (offs_e[None, :] < E), other=0.0)  # (BN, BE)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    pad_ptr = PAD + b * spb
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    lo, hi = _query_range(start_n, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    for hh in range(0, GROUPS):
        h = g * GROUPS + hh
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdob + h * sdoh
        row_base = (b * H + h) * NQ  # LSE, DELTA are (b, h, n) contiguous
        for start_m in range(lo, hi, BLOCK_M):
            dk, dv = _bwd_dkdv_block(k, v, dk, dv, q_base, do_base, LSE + row_base, DELTA + row_base, pad_ptr,
                                     start_m + offs_m0, offs_n, offs_d, offs_e, sqn, sdon, NQ, NK, D, E,
                                     qk_scale, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD, UPCAST)
    dk = dk * sm_scale
    tl.store(DK + b * sdkb + g * sdkh + offs_n[:, None] * sdkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=(offs_n[:, None] < NK) & (offs_d[None, :] < D))
    tl.store(DV + b * sdvb + g * sdvh + offs_n[:, None] * sdvn + offs_e[None, :],
             dv.to(DV.dtype.element_ty), mask=(offs_n[:, None] < NK) & (offs_e[None, :] < E))


@triton.jit
def attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, PAD,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdon, sdqb, sdqh, sdqn, spb,
    H, GROUPS, NQ, NK, D, E, qk_scale, sm_scale, LEFT, RIGHT,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """One program: dQ of BLOCK_M queries of one head. dQ = scale * (P * (dO V^T - delta)) K."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    g = h // GROUPS
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_E)
    offs_n0 = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
                mask=(offs_m[:, None] < NQ) & (offs_d[None, :] < D), other=0.0)  # (BM, BD)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdon + offs_e[None, :],
                 mask=(offs_m[:, None] < NQ) & (offs_e[None, :] < E), other=0.0)  # (BM, BE)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * NQ + offs_m, mask=offs_m < NQ, other=float("inf"))
    delta = tl.load(DELTA + bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
    k_base = K + b * skb + g * skh
    v_base = V + b * svb + g * svh
    pad_ptr = PAD + b * spb
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(start_m, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :],
                    mask=(offs_n[:, None] < NK) & (offs_d[None, :] < D), other=0.0)  # (BN, BD)
        vt = tl.load(v_base + offs_n[None, :] * svn + offs_e[:, None],
                     mask=(offs_n[None, :] < NK) & (offs_e[:, None] < E), other=0.0)  # (BE, BN)
        if UPCAST:
            k = k.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BM, BN)
        ok = _allowed(offs_m, offs_n, pad_ptr, NQ, NK, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt)  # (BM, BN)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    dq = dq * sm_scale
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqn + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=(offs_m[:, None] < NQ) & (offs_d[None, :] < D))
