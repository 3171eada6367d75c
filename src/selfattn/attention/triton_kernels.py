"""Triton kernels of backend "triton": FlashAttention-2 forward and backward (Dao, 2023).

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Tiles: BLOCK_M query rows x BLOCK_N key columns; BLOCK_D / BLOCK_E are d / e padded to a power
of two (>= 16, what ``tl.dot`` needs), the padding masked to zero on load.

Mask convention: True = may attend. Causal and sliding windows are bottom-right aligned: query i
sits at key position ``pos = i + (m - n)`` and may attend key j when
``pos - LEFT <= j <= pos + RIGHT`` (causal is RIGHT = 0, the caller folds it in). An optional
key-padding row ``PAD`` (b|1, m) of int8, non-zero = may attend, is and-ed in; so are segment ids
(``QSEG`` (b, n), ``KSEG`` (b, m) int32: query i may attend key j only when equal) and a general boolean
mask ``MASK`` (bytes, non-zero = may attend) read in place at strides smb, smh, smn (0 = broadcast). A float
mask ``BIAS`` (float32, same strides) is added to the scores. A (query block, key block) pair whose segment
id ranges never meet, or that the mask rules out entirely, is skipped.

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
def _mask_tile(mask_ptr, smn, offs_m, offs_n, NQ, NK):
    """(BLOCK_M, BLOCK_N) bytes of the general mask (0 outside the n x m range)."""
    return tl.load(mask_ptr + offs_m[:, None] * smn + offs_n[None, :],
                   mask=(offs_m[:, None] < NQ) & (offs_n[None, :] < NK), other=0)


@triton.jit
def _bias_tile(bias_ptr, smn, offs_m, offs_n, NQ, NK):
    """(BLOCK_M, BLOCK_N) float bias in log2 units (-inf outside the n x m range)."""
    b = tl.load(bias_ptr + offs_m[:, None] * smn + offs_n[None, :],
                mask=(offs_m[:, None] < NQ) & (offs_n[None, :] < NK), other=float("-inf"))
    return b * 1.4426950408889634


@triton.jit
def _live(offs_m, offs_n, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn, NQ, NK, HAS_SEG: tl.constexpr,
          HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Scalar: may the pair (queries offs_m, keys offs_n) attend anything by its segments and mask? Else skipped."""
    live = tl.max(offs_n, 0) >= 0  # a scalar True
    if HAS_SEG:
        qv, kv = offs_m < NQ, offs_n < NK
        qs = tl.load(qseg_ptr + offs_m, mask=qv, other=0)
        ks = tl.load(kseg_ptr + offs_n, mask=kv, other=0)
        q_lo, q_hi = tl.min(tl.where(qv, qs, 2147483647), 0), tl.max(tl.where(qv, qs, -2147483647), 0)
        k_lo, k_hi = tl.min(tl.where(kv, ks, 2147483647), 0), tl.max(tl.where(kv, ks, -2147483647), 0)
        live = live & (k_hi >= q_lo) & (k_lo <= q_hi)
    if HAS_MASK:
        live = live & (tl.max(tl.max(_mask_tile(mask_ptr, smn, offs_m, offs_n, NQ, NK).to(tl.int32), 1), 0) > 0)
    if HAS_BIAS:
        seen = _bias_tile(bias_ptr, smn, offs_m, offs_n, NQ, NK) != float("-inf")
        live = live & (tl.max(tl.max(seen.to(tl.int32), 1), 0) > 0)
    return live


@triton.jit
def _allowed(offs_m, offs_n, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, smn, NQ, NK, LEFT, RIGHT,
             HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
             HAS_MASK: tl.constexpr):
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
    if HAS_SEG:
        qs = tl.load(qseg_ptr + offs_m, mask=offs_m < NQ, other=0)
        ks = tl.load(kseg_ptr + offs_n, mask=offs_n < NK, other=0)
        ok = ok & (qs[:, None] == ks[None, :])
    if HAS_MASK:
        ok = ok & (_mask_tile(mask_ptr, smn, offs_m, offs_n, NQ, NK) != 0)
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
def _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn, start_n,
               offs_m, offs_n0, offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
               HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, MASKED: tl.constexpr):
    """One key block of the forward's online softmax (FlashAttention-2, Algorithm 1); skipped when the
    segments or the mask rule it out."""
    offs_n = start_n + offs_n0
    if _live(offs_m, offs_n, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn, NQ, NK, HAS_SEG, HAS_MASK, HAS_BIAS):
        acc, m_i, l_i = _fwd_tile(q, acc, m_i, l_i, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr,
                                  bias_ptr, smn, offs_m, offs_n, offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale,
                                  LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK, HAS_BIAS, UPCAST,
                                  MASKED)
    return acc, m_i, l_i


@triton.jit
def _fwd_tile(q, acc, m_i, l_i, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn, offs_m,
              offs_n, offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT, HAS_LEFT: tl.constexpr,
              HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr, HAS_MASK: tl.constexpr,
              HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, MASKED: tl.constexpr):
    """The scores of one (query block, key block) pair and the online-softmax update."""
    kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None],
                 mask=(offs_n[None, :] < NK) & (offs_d[:, None] < D), other=0.0)  # (BD, BN)
    v = tl.load(v_base + offs_n[:, None] * svn + offs_e[None, :],
                mask=(offs_n[:, None] < NK) & (offs_e[None, :] < E), other=0.0)  # (BN, BE)
    if UPCAST:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, kt) * qk_scale  # (BM, BN) in log2 units
    if HAS_BIAS:
        s = s + _bias_tile(bias_ptr, smn, offs_m, offs_n, NQ, NK)
    if MASKED or HAS_SEG or HAS_MASK or HAS_BIAS:
        ok = _allowed(offs_m, offs_n, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, smn, NQ, NK, LEFT, RIGHT, HAS_LEFT,
                      HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK)
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
    Q, K, V, O, LSE, PAD, QSEG, KSEG, MASK, BIAS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, spb, smb, smh, smn,
    H, GROUPS, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
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
    qseg_ptr, kseg_ptr = QSEG + b * NQ, KSEG + b * NK  # (b, n), (b, m) contiguous
    mask_ptr, bias_ptr = MASK + b * smb + h * smh, BIAS + b * smb + h * smh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
    lo, hi = _key_range(start_m, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    a, c = _interior(start_m, lo, hi, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    # [lo, a) and [c, hi): blocks cut by the causal / window edge or the ragged end -> full mask;
    # [a, c): every valid query may attend every key (up to padding) -> no structural mask.
    for start_n in range(lo, a, BLOCK_N):
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr,
                                   bias_ptr, smn, start_n, offs_m, offs_n0, offs_d, offs_e, skn, svn, NQ, NK, D,
                                   E, qk_scale, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK,
                                   HAS_BIAS, UPCAST, True)
    for start_n in range(a, c, BLOCK_N):
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr,
                                   bias_ptr, smn, start_n, offs_m, offs_n0, offs_d, offs_e, skn, svn, NQ, NK, D,
                                   E, qk_scale, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK,
                                   HAS_BIAS, UPCAST, False)
    for start_n in range(c, hi, BLOCK_N):
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr,
                                   bias_ptr, smn, start_n, offs_m, offs_n0, offs_d, offs_e, skn, svn, NQ, NK, D,
                                   E, qk_scale, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK,
                                   HAS_BIAS, UPCAST, True)

    alive = l_i > 0
    out = acc / tl.where(alive, l_i, 1.0)[:, None]  # dead rows: acc = 0 -> 0
    tl.store(O + b * sob + h * soh + offs_m[:, None] * son + offs_e[None, :],
             out.to(O.dtype.element_ty), mask=(offs_m[:, None] < NQ) & (offs_e[None, :] < E))
    lse = tl.where(alive, m_i + tl.log2(tl.where(alive, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh * NQ + offs_m, lse, mask=offs_m < NQ)  # LSE is (b, h, n) contiguous


@triton.jit
def _bwd_dkdv_block(k, v, dk, dv, q_base, do_base, lse_ptr, delta_ptr, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr,
                    bias_ptr, smn, offs_m, offs_n, offs_d, offs_e, sqn, sdon, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
                    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr):
    """One query block of the dK, dV backward, on transposed (keys x queries) tiles; returns dk, dv (a pair
    the segments or the mask rule out adds nothing and is skipped)."""
    if _live(offs_m, offs_n, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn, NQ, NK, HAS_SEG, HAS_MASK, HAS_BIAS):
        dk, dv = _bwd_dkdv_tile(k, v, dk, dv, q_base, do_base, lse_ptr, delta_ptr, pad_ptr, qseg_ptr, kseg_ptr,
                                mask_ptr, bias_ptr, smn, offs_m, offs_n, offs_d, offs_e, sqn, sdon, NQ, NK, D, E,
                                qk_scale, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK, HAS_BIAS,
                                UPCAST)
    return dk, dv


@triton.jit
def _bwd_dkdv_tile(k, v, dk, dv, q_base, do_base, lse_ptr, delta_ptr, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr,
                   bias_ptr, smn, offs_m, offs_n, offs_d, offs_e, sqn, sdon, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
                   HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                   HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr):
    """dK, dV contributions of one (query block, key block) pair."""
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
    if HAS_BIAS:
        st = st + tl.trans(_bias_tile(bias_ptr, smn, offs_m, offs_n, NQ, NK))
    ok = tl.trans(_allowed(offs_m, offs_n, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, smn, NQ, NK, LEFT, RIGHT,
                           HAS_LEFT, HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK))  # (BN, BM)
    pt = tl.where(ok, tl.exp2(st - lse[None, :]), 0.0)
    dv += tl.dot(pt.to(do.dtype), do)
    dpt = tl.dot(v, tl.trans(do))  # (BN, BM)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q)
    return dk, dv


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, PAD, QSEG, KSEG, MASK, BIAS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdon,
    sdkb, sdkh, sdkn, sdvb, sdvh, sdvn, spb, smb, smh, smn,
    H, GROUPS, NQ, NK, D, E, qk_scale, sm_scale, LEFT, RIGHT,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
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
    qseg_ptr, kseg_ptr = QSEG + b * NQ, KSEG + b * NK  # (b, n), (b, m) contiguous
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    lo, hi = _query_range(start_n, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    for hh in range(0, GROUPS):
        h = g * GROUPS + hh
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdob + h * sdoh
        row_base = (b * H + h) * NQ  # LSE, DELTA are (b, h, n) contiguous
        mask_ptr, bias_ptr = MASK + b * smb + h * smh, BIAS + b * smb + h * smh
        for start_m in range(lo, hi, BLOCK_M):
            dk, dv = _bwd_dkdv_block(k, v, dk, dv, q_base, do_base, LSE + row_base, DELTA + row_base, pad_ptr,
                                     qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn, start_m + offs_m0, offs_n, offs_d,
                                     offs_e, sqn, sdon, NQ, NK, D, E, qk_scale, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT,
                                     HAS_PAD, HAS_SEG, HAS_MASK, HAS_BIAS, UPCAST)
    dk = dk * sm_scale
    tl.store(DK + b * sdkb + g * sdkh + offs_n[:, None] * sdkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=(offs_n[:, None] < NK) & (offs_d[None, :] < D))
    tl.store(DV + b * sdvb + g * sdvh + offs_n[:, None] * sdvn + offs_e[None, :],
             dv.to(DV.dtype.element_ty), mask=(offs_n[:, None] < NK) & (offs_e[None, :] < E))


@triton.jit
def attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, PAD, QSEG, KSEG, MASK, BIAS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdon, sdqb, sdqh, sdqn, spb, smb, smh, smn,
    H, GROUPS, NQ, NK, D, E, qk_scale, sm_scale, LEFT, RIGHT,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
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
    qseg_ptr, kseg_ptr = QSEG + b * NQ, KSEG + b * NK  # (b, n), (b, m) contiguous
    mask_ptr, bias_ptr = MASK + b * smb + h * smh, BIAS + b * smb + h * smh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(start_m, NQ, NK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        if _live(offs_m, offs_n, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn, NQ, NK, HAS_SEG, HAS_MASK, HAS_BIAS):
            dq = _bwd_dq_tile(dq, q, do, lse, delta, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr,
                              smn, offs_m, offs_n, offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
                              HAS_LEFT, HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK, HAS_BIAS, UPCAST)
    dq = dq * sm_scale
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqn + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=(offs_m[:, None] < NQ) & (offs_d[None, :] < D))


@triton.jit
def _bwd_dq_tile(dq, q, do, lse, delta, k_base, v_base, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, bias_ptr, smn,
                 offs_m, offs_n, offs_d, offs_e, skn, svn, NQ, NK, D, E, qk_scale, LEFT, RIGHT,
                 HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SEG: tl.constexpr,
                 HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr):
    """dQ contribution of one (query block, key block) pair: dQ += (P * (dO V^T - delta)) K."""
    k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :],
                mask=(offs_n[:, None] < NK) & (offs_d[None, :] < D), other=0.0)  # (BN, BD)
    vt = tl.load(v_base + offs_n[None, :] * svn + offs_e[:, None],
                 mask=(offs_n[None, :] < NK) & (offs_e[:, None] < E), other=0.0)  # (BE, BN)
    if UPCAST:
        k = k.to(tl.float32)
        vt = vt.to(tl.float32)
    s = tl.dot(q, tl.trans(k)) * qk_scale  # (BM, BN)
    if HAS_BIAS:
        s = s + _bias_tile(bias_ptr, smn, offs_m, offs_n, NQ, NK)
    ok = _allowed(offs_m, offs_n, pad_ptr, qseg_ptr, kseg_ptr, mask_ptr, smn, NQ, NK, LEFT, RIGHT, HAS_LEFT,
                  HAS_RIGHT, HAS_PAD, HAS_SEG, HAS_MASK)
    p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, vt)  # (BM, BN)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k)
