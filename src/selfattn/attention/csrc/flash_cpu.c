/* Fused exact attention on x86 CPUs with AVX-512 (backends "cpu_bf16" and "cpu_f32").

   The FlashAttention forward (Dao et al., 2022) with online softmax (Milakov & Gimelshein, 2018)
   and FlashAttention-2's backward (Dao, 2023): each forward task owns QB query rows of one head
   and walks the key blocks of KB keys that its rows may see; each backward task owns one key
   block and walks the query blocks that see it. Scores, softmax statistics and accumulators stay
   in float32 in cache-sized buffers; no n x m tensor exists. Causal/window blocks that no row
   may see are skipped, and so are blocks whose segment ids (packed rows) no query and key share and
   blocks that a general mask rules out entirely; only blocks on a mask edge are masked element by
   element. A general mask is read in place at its own (broadcast) strides: no n x m copy.

   One source, two builds (cpu_kernel.py compiles it with gcc and loads it with ctypes):
     bfloat16 (default): operands are bf16 and both products run on the bf16 dot-product units
       (vdpbf16ps, AVX-512 BF16: bf16 products, float32 sums), which read pairs of values, so the
       right-hand operand of every product is stored in "pair" layout, W = 2 (below).
     -DSELFATTN_F32: float32 operands and plain FMAs, W = 1 (the "pair" layouts reduce to
       ordinary row-major or transposed matrices).

   Legend: b batch, h query heads, g kv heads (h = g * r), n queries, m keys, d/e head dims
   (padded to multiples of 32), QB/KB query/key block sizes, W values per pair.
   Mask convention: a key-padding byte 1 = may attend; with segment ids, query i may attend key j
   only when qseg[i] == kseg[j] (packed documents; ids need not be sorted); a general boolean mask
   byte 1 = may attend, and an additive float32 bias is added to the logits (-inf = may not attend).
   Query i sits at key position
   p = i + m - n (bottom-right alignment) and may attend keys p - left <= j <= p + right
   (causal is right = 0); a row that may attend nothing gets output 0 and lse = +inf.

   Layouts (elem_t = bf16 bits as uint16, or float):
     q   (b, h, n_pad, d)             row-major; rows n..n_pad are padding
     kp  (b, g, m_pad/KB, d/W, KB, W) per key block: kp[..., J, t, j, s] = k[..., KB J + j, W t + s]
     vp  (b, g, m_pad/W, e, W)        vp[..., t, c, s] = v[..., W t + s, c]
     out (b, h, n_pad, e) elem_t, lse (b, h, n_pad) float32 (natural log of the scaled scores)
     qseg (b, n_pad), kseg (b, m_pad) int32 segment ids (padding rows/keys repeat the last id)
     mask (u8) or bias (float32): element (bi, hi, i, j) at bi*msb + hi*msh + i*msn + j, i < n, j < m
       (a stride 0 broadcasts that dimension)
*/
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

/* The calling convention of the entry points below; cpu_kernel.py refuses a library reporting another
   (bump both together whenever an entry point's arguments or a layout change). */
#define SELFATTN_KERNEL_VERSION 4

#define QB 64
#define KB 64
#define KT 4 /* key blocks per backward task */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* The micro-kernels' 8 x 32 float32 accumulators: from C (or zero), and back. */
static inline void acc_load(__m512 acc[8][2], const float *C, int64_t ldc, int accumulate) {
    for (int r = 0; r < 8; r++) {
        acc[r][0] = accumulate ? _mm512_loadu_ps(C + r * ldc) : _mm512_setzero_ps();
        acc[r][1] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16) : _mm512_setzero_ps();
    }
}

static inline void acc_store(__m512 acc[8][2], float *C, int64_t ldc) {
    for (int r = 0; r < 8; r++) {
        _mm512_storeu_ps(C + r * ldc, acc[r][0]);
        _mm512_storeu_ps(C + r * ldc + 16, acc[r][1]);
    }
}

#ifdef SELFATTN_F32
typedef float elem_t;
#define W 1

/* C[8][32] (+)= A[8][K] . B[K][32]; A rows lda floats apart, B rows ldb apart; C rows ldc apart. */
static inline void mk_8x32(const elem_t *A, int64_t lda, const elem_t *B, int64_t ldb, int64_t K,
                           float *C, int64_t ldc, int accumulate) {
    __m512 acc[8][2];
    acc_load(acc, C, ldc, accumulate);
    for (int64_t t = 0; t < K; t++) {
        __m512 b0 = _mm512_loadu_ps(B + t * ldb), b1 = _mm512_loadu_ps(B + t * ldb + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            __m512 a = _mm512_set1_ps(A[r * lda + t]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    acc_store(acc, C, ldc);
}

static inline void store32(elem_t *dst, __m512 lo, __m512 hi) {
    _mm512_storeu_ps(dst, lo);
    _mm512_storeu_ps(dst + 16, hi);
}

static inline void store16(elem_t *dst, __m512 x) { _mm512_storeu_ps(dst, x); }

/* Two rows r, r+1 of P in the pair layout: with W = 1 simply one after the other. */
static inline void interleave_rows(const float *a, const float *b, elem_t *dst) {
    memcpy(dst, a, sizeof(float) * KB);
    memcpy(dst + KB, b, sizeof(float) * KB);
}

#else
typedef uint16_t elem_t; /* bfloat16 bits */
#define W 2

/* C[8][32] (+)= A[8][2*K2] . B, A bf16 rows (lda elements apart), B in pair layout: pair t holds
   32 columns x 2 values at B + t * ldb. float32 C, ldc floats apart. */
static inline void mk_8x32(const elem_t *A, int64_t lda, const elem_t *B, int64_t ldb, int64_t K2,
                           float *C, int64_t ldc, int accumulate) {
    __m512 acc[8][2];
    acc_load(acc, C, ldc, accumulate);
    for (int64_t t = 0; t < K2; t++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(B + t * ldb);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(B + t * ldb + 32);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            int32_t pair;
            memcpy(&pair, A + r * lda + 2 * t, 4);
            __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
    }
    acc_store(acc, C, ldc);
}

/* 32 floats -> 32 bf16 (round to nearest even). */
static inline void store32(elem_t *dst, __m512 lo, __m512 hi) {
    _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

static inline void store16(elem_t *dst, __m512 x) {
    _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(x));
}

/* Two float rows (KB values each) -> bf16, interleaved: dst[j][0] = a[j], dst[j][1] = b[j]. */
static inline void interleave_rows(const float *a, const float *b, elem_t *dst) {
    const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                            40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1,
                                            32, 0);
    const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
    for (int c = 0; c < KB; c += 32) {
        __m512i ra = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + c + 16), _mm512_loadu_ps(a + c));
        __m512i rb = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(b + c + 16), _mm512_loadu_ps(b + c));
        _mm512_storeu_si512(dst + 2 * c, _mm512_permutex2var_epi16(ra, lo_idx, rb));
        _mm512_storeu_si512(dst + 2 * c + 32, _mm512_permutex2var_epi16(ra, hi_idx, rb));
    }
}
#endif

/* 2^x for 16 floats; x <= -126 gives exactly 0 (masked keys hold -inf), NaN stays NaN (a +inf or
   NaN logit must make its row NaN). Relative error ~2e-7. */
static inline __m512 exp2_ps(__m512 x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLE_UQ); /* NaN: live */
    x = _mm512_max_ps(_mm512_set1_ps(-126.0f), x); /* max_ps returns its 2nd operand for a NaN */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(LN2)); /* |f| <= ln2 / 2 */
    __m512 p = _mm512_set1_ps(1.0f / 720);                             /* Taylor of e^f, degree 6 */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}

/* Everything a forward or backward task reads: pointers to the laid-out operands and the call. */
typedef struct {
    const elem_t *q, *kp, *vp;                 /* forward and backward */
    const elem_t *qt, *kvp, *vtp, *dout, *dot; /* backward only */
    const float *slopes;                       /* (h,) ALiBi slopes or NULL */
    const float *lse2, *delta;                 /* backward: base-2 lse and rowsum(dO * O), (b, h, n_pad) */
    const uint8_t *kpm, *kpm_all;
    const int32_t *qseg, *kseg;                /* (b, n_pad), (b, m_pad) segment ids, or both NULL */
    const uint8_t *mask;                       /* a general boolean mask, or NULL */
    const float *bias;                         /* an additive float mask, or NULL (never both) */
    int64_t msb, msh, msn;                     /* their batch, head and query strides (keys: 1) */
    int64_t kpm_bstride, b, h, g, n, m, n_pad, m_pad, d, e, left, right;
    float scale, scale2;                       /* scale2 = scale * log2(e): scores in base 2 */
    elem_t *out;                               /* forward outputs */
    float *lse;
    float *dq, *dk, *dv;                       /* backward outputs */
    omp_lock_t *locks;                         /* one per (b, h, query block) guarding dq */
} attn_args;

/* Batch row bi's key-padding bytes (NULL when no mask). */
static inline const uint8_t *padding_of(const attn_args *a, int64_t bi) {
    return a->kpm ? a->kpm + bi * a->kpm_bstride : NULL;
}

/* Batch row bi's per-key-block "all allowed" key-padding bytes (NULL when no mask). */
static inline const uint8_t *padding_blocks_of(const attn_args *a, int64_t bi) {
    return a->kpm_all ? a->kpm_all + bi * (a->kpm_bstride ? a->m_pad / KB : 0) : NULL;
}

/* Batch row bi's segment ids (both NULL when there are none). */
static inline void segments_of(const attn_args *a, int64_t bi, const int32_t **qs, const int32_t **ks) {
    const int both = a->qseg && a->kseg;
    *qs = both ? a->qseg + bi * a->n_pad : NULL;
    *ks = both ? a->kseg + bi * a->m_pad : NULL;
}

static inline void id_range(const int32_t *s, int64_t len, int32_t *lo, int32_t *hi) {
    int32_t l = s[0], h = s[0];
    for (int64_t x = 1; x < len; x++) {
        l = s[x] < l ? s[x] : l;
        h = s[x] > h ? s[x] : h;
    }
    *lo = l;
    *hi = h;
}

/* What one constraint lets query rows [i0, i0+QB) see of keys [j0, j0+KB): nothing (the pair is
   skipped), everything (no per-element masking for it), or some (masked per element). */
enum { SEES_NONE, SEES_SOME, SEES_ALL };

/* The segments: disjoint id ranges see nothing, one id on both sides everything. */
static int segment_overlap(const int32_t *qs, const int32_t *ks, int64_t i0, int64_t j0) {
    if (!qs) return SEES_ALL;
    int32_t qlo, qhi, klo, khi;
    id_range(qs + i0, QB, &qlo, &qhi);
    id_range(ks + j0, KB, &klo, &khi);
    if (qhi < klo || khi < qlo) return SEES_NONE;
    return qlo == qhi && klo == khi ? SEES_ALL : SEES_SOME;
}

/* Row i (< n) of query head `head` in batch row bi of the general mask or bias (NULL when none). */
static inline const uint8_t *mask_row(const attn_args *a, int64_t bi, int64_t head, int64_t i) {
    return a->mask ? a->mask + bi * a->msb + head * a->msh + i * a->msn : NULL;
}

static inline const float *bias_row(const attn_args *a, int64_t bi, int64_t head, int64_t i) {
    return a->bias ? a->bias + bi * a->msb + head * a->msh + i * a->msn : NULL;
}

/* The general mask over the pair's real rows and keys: nothing allowed (every byte 0 / every bias
   -inf), everything (every byte 1; a bias is always added element by element: some), or some. */
static int mask_overlap(const attn_args *a, int64_t bi, int64_t head, int64_t i0, int64_t j0) {
    if (!a->mask && !a->bias) return SEES_ALL;
    const int64_t rows = a->n - i0 < QB ? a->n - i0 : QB, cols = a->m - j0 < KB ? a->m - j0 : KB;
    int any = 0, all = 1;
    for (int64_t r = 0; r < rows; r++) {
        if (a->mask) {
            const uint8_t *row = mask_row(a, bi, head, i0 + r) + j0;
            for (int64_t c = 0; c < cols; c++) { any |= row[c]; all &= row[c]; }
        } else {
            const float *row = bias_row(a, bi, head, i0 + r) + j0;
            for (int64_t c = 0; c < cols; c++) any |= row[c] != -INFINITY;
            all = 0;
        }
        if (any && !all) return SEES_SOME;
    }
    return !any ? SEES_NONE : all ? SEES_ALL : SEES_SOME;
}

/* Every constraint on the pair: SEES_NONE skips it; masked = some element must be masked. */
static int pair_overlap(const attn_args *a, int64_t bi, int64_t head, int64_t i0, int64_t j0, int *masked) {
    const int32_t *qs, *ks;
    segments_of(a, bi, &qs, &ks);
    const int seg = segment_overlap(qs, ks, i0, j0);
    const int gen = seg == SEES_NONE ? SEES_NONE : mask_overlap(a, bi, head, i0, j0);
    *masked = seg != SEES_ALL || gen != SEES_ALL;
    return gen == SEES_NONE ? SEES_NONE : SEES_SOME;
}

/* Keys [lo, hi) that query row i may attend (before key padding). */
static inline void row_range(const attn_args *a, int64_t i, int64_t *lo, int64_t *hi) {
    int64_t p = i + a->m - a->n;
    *lo = p - a->left < 0 ? 0 : p - a->left;
    *hi = p + a->right + 1 > a->m ? a->m : p + a->right + 1;
}

/* Does every row of [i0, i0+QB) see every key of [j0, j0+KB)? (then no per-element masking) */
static int block_is_full(const attn_args *a, int64_t i0, int64_t j0, const uint8_t *kpm_all) {
    int64_t lo_last, hi_last, lo_first, hi_first;
    row_range(a, i0 + QB - 1, &lo_last, &hi_last);
    row_range(a, i0, &lo_first, &hi_first);
    return j0 >= lo_last && j0 + KB <= hi_first && (!kpm_all || kpm_all[j0 / KB]);
}

/* The 16 keys from j (< m) that a general mask row allows, as lane bits; lanes at or past m are 0. */
static inline __mmask16 mask_lanes(const uint8_t *row, int64_t j, int64_t m) {
    if (j + 16 <= m)
        return _mm512_test_epi32_mask(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + j))),
                                      _mm512_set1_epi32(0xff));
    __mmask16 ok = 0;
    for (int64_t t = 0; j + t < m && t < 16; t++) ok |= (__mmask16)((row[j + t] != 0) << t);
    return ok;
}

/* One row of raw scores q·k (KB keys from j0) of query head `head` in batch row bi -> base-2 logits:
   times scale2, plus the bias (times log2 e), minus the ALiBi distance penalty slope2 * |p - j| (Press
   et al., 2022), -inf where the row may not attend (outside its range, key padding, a key of another
   segment, a general mask's 0). A padding row (i >= n) under a general mask or bias sees nothing. */
static inline void logits_row(const attn_args *a, float *s, int64_t bi, int64_t head, int64_t i, int64_t j0,
                              int masked, float slope2) {
    const uint8_t *kpm = padding_of(a, bi), *mrow = NULL;
    const int32_t *qs, *ks;
    const float *brow = NULL;
    segments_of(a, bi, &qs, &ks);
    const int32_t qid = qs ? qs[i] : 0;
    if (masked && (a->mask || a->bias)) {
        if (i >= a->n) {
            for (int c = 0; c < KB; c += 16) _mm512_storeu_ps(s + c, _mm512_set1_ps(-INFINITY));
            return;
        }
        mrow = mask_row(a, bi, head, i);
        brow = bias_row(a, bi, head, i);
    }
    const __m512 vs = _mm512_set1_ps(a->scale2), ninf = _mm512_set1_ps(-INFINITY);
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i iota_i = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    float off = (float)(j0 - (i + a->m - a->n)); /* key j0's distance from the query's position */
    int64_t lo = 0, hi = KB;
    if (masked) { /* this row's allowed keys as offsets from j0, clamped into [0, KB] */
        row_range(a, i, &lo, &hi);
        lo = lo - j0 < 0 ? 0 : (lo - j0 > KB ? KB : lo - j0);
        hi = hi - j0 < 0 ? 0 : (hi - j0 > KB ? KB : hi - j0);
    }
    const __m512i vlo = _mm512_set1_epi32((int)lo), vhi = _mm512_set1_epi32((int)hi);
    for (int c = 0; c < KB; c += 16) {
        __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + c), vs);
        if (slope2 != 0.0f) {
            __m512 dist = _mm512_abs_ps(_mm512_add_ps(iota, _mm512_set1_ps(off + c)));
            x = _mm512_fnmadd_ps(_mm512_set1_ps(slope2), dist, x);
        }
        if (masked) {
            __m512i col = _mm512_add_epi32(iota_i, _mm512_set1_epi32(c));
            __mmask16 ok = _mm512_cmp_epi32_mask(col, vlo, _MM_CMPINT_NLT) &
                           _mm512_cmp_epi32_mask(col, vhi, _MM_CMPINT_LT);
            if (kpm)
                ok &= _mm512_test_epi32_mask(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(kpm + j0 + c))),
                                             _mm512_set1_epi32(0xff));
            if (ks)
                ok &= _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(ks + j0 + c), _mm512_set1_epi32(qid));
            if (mrow) ok &= mask_lanes(mrow, j0 + c, a->m);
            if (brow) { /* lanes at or past m read nothing; the range mask removes them */
                const int64_t left = a->m - (j0 + c);
                __mmask16 in = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
                x = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(in, brow + j0 + c), _mm512_set1_ps(LOG2E), x);
            }
            x = _mm512_mask_blend_ps(ok, ninf, x);
        }
        _mm512_storeu_ps(s + c, x);
    }
}

/* One block of logits: update each row's running max and sum, rescale its output row, write P
   (elem_t) for the P.V product. */
static void softmax_block(const attn_args *a, float *S, elem_t *P, float *O, float *mrow, float *lrow,
                          int64_t bi, int64_t head, int64_t i0, int64_t j0, int masked, float slope2) {
    const int64_t e = a->e;
    for (int r = 0; r < QB; r++) {
        float *s = S + r * KB;
        logits_row(a, s, bi, head, i0 + r, j0, masked, slope2);
        __m512 vmax = _mm512_loadu_ps(s);
        for (int c = 16; c < KB; c += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + c));
        float bmax = _mm512_reduce_max_ps(vmax);
        if (bmax == -INFINITY) { /* nothing visible in this block for this row */
            memset(P + r * KB, 0, KB * sizeof(elem_t));
            continue;
        }
        float mnew = bmax > mrow[r] ? bmax : mrow[r];
        float alpha = mrow[r] == -INFINITY ? 0.0f : exp2f(mrow[r] - mnew);
        __m512 vm = _mm512_set1_ps(mnew), vsum = _mm512_setzero_ps();
        for (int c = 0; c < KB; c += 32) {
            __m512 p0 = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + c), vm));
            __m512 p1 = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + c + 16), vm));
            vsum = _mm512_add_ps(vsum, _mm512_add_ps(p0, p1));
            store32(P + r * KB + c, p0, p1);
        }
        lrow[r] = lrow[r] * alpha + _mm512_reduce_add_ps(vsum);
        mrow[r] = mnew;
        if (alpha != 1.0f) {
            __m512 va = _mm512_set1_ps(alpha);
            for (int64_t c = 0; c < e; c += 16)
                _mm512_storeu_ps(O + r * e + c, _mm512_mul_ps(_mm512_loadu_ps(O + r * e + c), va));
        }
    }
}

/* Query rows [i0, i0+QB) of query head `head` in batch row bi: walk the key blocks they may see. */
static void forward_task(const attn_args *a, int64_t bi, int64_t head, int64_t i0, float *S,
                         elem_t *P, float *O) {
    const int64_t d = a->d, e = a->e, m_pad = a->m_pad, bh = bi * a->h + head;
    const int64_t gi = head / (a->h / a->g);
    const elem_t *q = a->q + bh * a->n_pad * d, *kp = a->kp + (bi * a->g + gi) * m_pad * d;
    const elem_t *vp = a->vp + (bi * a->g + gi) * m_pad * e;
    const uint8_t *all = padding_blocks_of(a, bi);
    const float slope2 = a->slopes ? a->slopes[head] * LOG2E : 0.0f;
    float mrow[QB], lrow[QB];
    for (int r = 0; r < QB; r++) { mrow[r] = -INFINITY; lrow[r] = 0.0f; }
    memset(O, 0, sizeof(float) * QB * e);
    int64_t lo, hi_first, lo_last, hi;
    row_range(a, i0, &lo, &hi_first);
    row_range(a, i0 + QB - 1, &lo_last, &hi); /* both bounds grow with the row */
    for (int64_t j0 = (lo / KB) * KB; j0 < hi; j0 += KB) {
        int masked;
        if (pair_overlap(a, bi, head, i0, j0, &masked) == SEES_NONE) continue;
        masked = masked || !block_is_full(a, i0, j0, all);
        for (int rt = 0; rt < QB; rt += 8)  /* S (QB, KB) = Q (QB, d) . Kᵀ */
            for (int ct = 0; ct < KB; ct += 32)
                mk_8x32(q + (i0 + rt) * d, d, kp + j0 * d + W * ct, W * KB, d / W, S + rt * KB + ct, KB, 0);
        softmax_block(a, S, P, O, mrow, lrow, bi, head, i0, j0, masked, slope2);
        for (int rt = 0; rt < QB; rt += 8)  /* O (QB, e) += P (QB, KB) . V (KB, e) */
            for (int64_t ct = 0; ct < e; ct += 32)
                mk_8x32(P + rt * KB, KB, vp + j0 * e + W * ct, W * e, KB / W, O + rt * e + ct, e, 1);
    }
    elem_t *out = a->out + bh * a->n_pad * e;
    float *lse = a->lse + bh * a->n_pad;
    for (int r = 0; r < QB; r++) {
        const int dead = lrow[r] == 0.0f; /* no key seen; a NaN sum (+inf/NaN logit) stays NaN */
        __m512 vi = _mm512_set1_ps(dead ? 0.0f : 1.0f / lrow[r]);
        for (int64_t c = 0; c < e; c += 16) {
            __m512 o = _mm512_mul_ps(_mm512_loadu_ps(O + r * e + c), vi);
            store16(out + (i0 + r) * e + c, o);
        }
        lse[i0 + r] = dead ? INFINITY : (mrow[r] + log2f(lrow[r])) * LN2;
    }
}

static void forward_all(const attn_args *a, int nthreads, atomic_int *failed) {
    const int64_t nqb = a->n_pad / QB, tasks = a->b * a->h * nqb;
#pragma omp parallel num_threads(nthreads)
    {
        float *S = _mm_malloc(sizeof(float) * QB * KB, 64);
        elem_t *P = _mm_malloc(sizeof(elem_t) * QB * KB, 64);
        float *O = _mm_malloc(sizeof(float) * QB * a->e, 64);
        if (!S || !P || !O) atomic_store_explicit(failed, 1, memory_order_relaxed);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (atomic_load_explicit(failed, memory_order_relaxed)) continue;
            int64_t bh = t / nqb;
            forward_task(a, bh / a->h, bh % a->h, (t % nqb) * QB, S, P, O);
        }
        _mm_free(S);
        _mm_free(P);
        _mm_free(O);
    }
}

/* Forward entry point. left/right: window sides (a huge value = unlimited; causal caps right at 0).
   kpm: (b, m) bytes, 1 = may attend, batch stride kpm_bstride (0 = shared) or NULL; kpm_all:
   (b, m_pad / KB) bytes, 1 = every key of that block may be attended (same strides), or NULL.
   slopes: (h,) ALiBi slopes or NULL. qseg (b, n_pad), kseg (b, m_pad): int32 segment ids, or both NULL.
   mask (bytes, 1 = may attend) or bias (float32, added): a general mask at strides msb, msh, msn, or NULL.
   Returns 0, or -1 when scratch buffers cannot be allocated. */
int selfattn_flash_fwd(const elem_t *q, const elem_t *kp, const elem_t *vp, const uint8_t *kpm,
                       int64_t kpm_bstride, const uint8_t *kpm_all, const float *slopes,
                       const int32_t *qseg, const int32_t *kseg, const uint8_t *mask, const float *bias,
                       int64_t msb, int64_t msh, int64_t msn, elem_t *out, float *lse, int64_t b,
                       int64_t h, int64_t g, int64_t n, int64_t m, int64_t n_pad, int64_t m_pad,
                       int64_t d, int64_t e, float scale, int64_t left, int64_t right, int nthreads) {
    attn_args a = {0};
    a.q = q; a.kp = kp; a.vp = vp; a.kpm = kpm; a.kpm_bstride = kpm_bstride; a.kpm_all = kpm_all;
    a.slopes = slopes; a.qseg = qseg; a.kseg = kseg; a.out = out; a.lse = lse;
    a.mask = mask; a.bias = bias; a.msb = msb; a.msh = msh; a.msn = msn;
    a.b = b; a.h = h; a.g = g; a.n = n; a.m = m; a.n_pad = n_pad; a.m_pad = m_pad; a.d = d; a.e = e;
    a.scale = scale; a.scale2 = scale * LOG2E; a.left = left; a.right = right;
    atomic_int failed = 0;
    forward_all(&a, nthreads, &failed);
    return atomic_load(&failed) ? -1 : 0;
}

/* ---------------------------------------------------------------- backward (FlashAttention-2)

   Each task owns KT key blocks of one kv head and walks every (query head of its group, query
   block) pair that sees them: S = Q Kᵀ, P = 2^(S·scale2 − lse2), dP = dO Vᵀ, dS = P ⊙ (dP − Δ) · scale,
   then dVᵀ += dOᵀ P and dKᵀ += Qᵀ dS (kept in the task, written once) and dQ += dS K (added to the
   shared float32 dQ under a lock per query block). The transposed products read P and dS in
   pair layout along queries, PI[t][j][s] = P[W t + s][j], so no matrix is ever transposed.

   Extra layouts, tiled per block so that a tile's rows are adjacent in memory (rows n_pad apart
   would all fall in one cache set at large N): qt (b, h, n_pad/QB, d, QB) and dot (b, h, n_pad/QB,
   e, QB) transposed query blocks; kvp (b, g, m_pad/W, d, W) keys in pairs along keys; vtp (b, g,
   m_pad/KB, e/W, KB, W) values in pairs along features, per key block. */

typedef struct {
    float *S, *dP, *dKT, *dVT, *dQl;
    elem_t *PI, *dSI, *dSr;
} bwd_scratch;

/* P (in S) and dS (in dP) for one (query block, key block) pair; fills PI, dSI, dSr. */
static void bwd_probs(const attn_args *a, bwd_scratch *w, int64_t bi, int64_t head, int64_t i0, int64_t j0,
                      int masked, float slope2) {
    const int64_t bh = bi * a->h + head;
    const float *lse2 = a->lse2 + bh * a->n_pad, *delta = a->delta + bh * a->n_pad;
    __m512 vsc = _mm512_set1_ps(a->scale);
    for (int r = 0; r < QB; r++) {
        float *s = w->S + r * KB, *dp = w->dP + r * KB;
        logits_row(a, s, bi, head, i0 + r, j0, masked, slope2);
        const float l = lse2[i0 + r], dl = delta[i0 + r];
        __m512 vl = _mm512_set1_ps(l), vd = _mm512_set1_ps(dl);
        if (fabsf(l) < 1048576.0f && isfinite(dl)) { /* the usual row: finite lse (|lse2| < 2^20), delta */
            for (int c = 0; c < KB; c += 16) {
                __m512 p = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + c), vl));
                _mm512_storeu_ps(s + c, p);
                __m512 ds = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dp + c), vd)), vsc);
                _mm512_storeu_ps(dp + c, ds);
            }
        } else { /* a NaN row (+inf/NaN logit), a dead row, or logits ~ 1e19 */
            for (int c = 0; c < KB; c += 16) {
                __m512 x = _mm512_loadu_ps(s + c);
                /* masked keys (-inf) get P = dS = 0 even when lse or delta is NaN: no NaN leaks to them */
                __mmask16 seen = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ);
                /* P <= 1 always; at |logits| ~ 1e19 the float32 lse2 = lse * log2(e) is off by many units
                   and 2^(s - lse2) would overflow to inf (min_ps keeps its 2nd operand's NaN) */
                __m512 p = _mm512_min_ps(_mm512_set1_ps(1.0f), exp2_ps(_mm512_sub_ps(x, vl)));
                p = _mm512_maskz_mov_ps(seen, p);
                _mm512_storeu_ps(s + c, p);
                __m512 ds = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dp + c), vd)), vsc);
                _mm512_storeu_ps(dp + c, _mm512_maskz_mov_ps(seen, ds));
            }
        }
        for (int c = 0; c < KB; c += 32)
            store32(w->dSr + r * KB + c, _mm512_loadu_ps(dp + c), _mm512_loadu_ps(dp + c + 16));
    }
    for (int r = 0; r < QB; r += 2) {
        interleave_rows(w->S + r * KB, w->S + (r + 1) * KB, w->PI + r * KB);
        interleave_rows(w->dP + r * KB, w->dP + (r + 1) * KB, w->dSI + r * KB);
    }
}

/* One (query block i0 of one head, key block j0) pair: dVᵀ, dKᵀ into dvt, dkt; dQ into w->dQl
   (overwritten when first, else accumulated). masked: from the pair's pair_overlap. */
static void bwd_pair(const attn_args *a, bwd_scratch *w, int64_t bi, int64_t head, int64_t gi,
                     int64_t i0, int64_t j0, float *dkt, float *dvt, int first, int masked) {
    const int64_t n_pad = a->n_pad, m_pad = a->m_pad, d = a->d, e = a->e, bh = bi * a->h + head;
    const elem_t *q = a->q + bh * n_pad * d, *qt = a->qt + bh * d * n_pad;
    const elem_t *dout = a->dout + bh * n_pad * e, *dot = a->dot + bh * e * n_pad;
    const elem_t *kp = a->kp + (bi * a->g + gi) * m_pad * d, *kvp = a->kvp + (bi * a->g + gi) * m_pad * d;
    const elem_t *vtp = a->vtp + (bi * a->g + gi) * m_pad * e;
    const uint8_t *all = padding_blocks_of(a, bi);
    for (int rt = 0; rt < QB; rt += 8)  /* S = Q Kᵀ and dP = dO Vᵀ, (QB, KB) each */
        for (int ct = 0; ct < KB; ct += 32) {
            mk_8x32(q + (i0 + rt) * d, d, kp + j0 * d + W * ct, W * KB, d / W, w->S + rt * KB + ct, KB, 0);
            mk_8x32(dout + (i0 + rt) * e, e, vtp + j0 * e + W * ct, W * KB, e / W, w->dP + rt * KB + ct, KB, 0);
        }
    masked = masked || !block_is_full(a, i0, j0, all);
    bwd_probs(a, w, bi, head, i0, j0, masked, a->slopes ? a->slopes[head] * LOG2E : 0.0f);
    for (int64_t rt = 0; rt < e; rt += 8)  /* dVᵀ (e, KB) += dOᵀ (e, QB) . P (QB, KB) */
        for (int ct = 0; ct < KB; ct += 32)
            mk_8x32(dot + i0 * e + rt * QB, QB, w->PI + W * ct, W * KB, QB / W, dvt + rt * KB + ct, KB, 1);
    for (int64_t rt = 0; rt < d; rt += 8)  /* dKᵀ (d, KB) += Qᵀ (d, QB) . dS (QB, KB) */
        for (int ct = 0; ct < KB; ct += 32)
            mk_8x32(qt + i0 * d + rt * QB, QB, w->dSI + W * ct, W * KB, QB / W, dkt + rt * KB + ct, KB, 1);
    for (int rt = 0; rt < QB; rt += 8)  /* dQ (QB, d) = dS (QB, KB) . K (KB, d) */
        for (int64_t ct = 0; ct < d; ct += 32)
            mk_8x32(w->dSr + rt * KB, KB, kvp + j0 * d + W * ct, W * d, KB / W, w->dQl + rt * d + ct, d, !first);
}

/* Key rows [j0, j0+KB) of kv head gi in batch row bi: dK and dV from every query block that sees them. */
/* Adds one query block's dQ (in w->dQl) to the shared dq, under that block's lock. */
static void add_dq(const attn_args *a, bwd_scratch *w, int64_t bh, int64_t i0) {
    omp_lock_t *lock = a->locks + bh * (a->n_pad / QB) + i0 / QB;
    float *dq = a->dq + (bh * a->n_pad + i0) * a->d;
    omp_set_lock(lock);
    for (int64_t x = 0; x < QB * a->d; x += 16)
        _mm512_storeu_ps(dq + x, _mm512_add_ps(_mm512_loadu_ps(dq + x), _mm512_loadu_ps(w->dQl + x)));
    omp_unset_lock(lock);
}

/* Key rows [j0, j0 + KT*KB) of kv head gi in batch row bi: dK and dV from every query block that
   sees them. KT key blocks per task: each query block's Q, dO and dQ rows pass once per KT blocks. */
static void bwd_task(const attn_args *a, bwd_scratch *w, int64_t bi, int64_t gi, int64_t j0) {
    const int64_t d = a->d, e = a->e, r_per_g = a->h / a->g;
    const int nblk = (int)((a->m_pad - j0) / KB < KT ? (a->m_pad - j0) / KB : KT);
    memset(w->dKT, 0, sizeof(float) * d * KB * KT);
    memset(w->dVT, 0, sizeof(float) * e * KB * KT);
    for (int64_t i0 = 0; i0 < a->n_pad; i0 += QB) {
        int64_t lo, hi, lo2, hi2;
        row_range(a, i0, &lo, &hi);
        row_range(a, i0 + QB - 1, &lo2, &hi2);
        for (int64_t rr = 0; rr < r_per_g; rr++) {
            int first = 1;
            for (int s = 0; s < nblk; s++) {
                int64_t jb = j0 + s * KB;
                if (hi2 <= jb || lo >= jb + KB || lo >= hi2) continue; /* no row of the block sees these keys */
                int masked;
                if (pair_overlap(a, bi, gi * r_per_g + rr, i0, jb, &masked) == SEES_NONE) continue; /* nor masks */
                bwd_pair(a, w, bi, gi * r_per_g + rr, gi, i0, jb, w->dKT + s * d * KB, w->dVT + s * e * KB, first,
                         masked);
                first = 0;
            }
            if (!first) add_dq(a, w, bi * a->h + gi * r_per_g + rr, i0);
        }
    }
    for (int s = 0; s < nblk; s++) {
        float *dk = a->dk + ((bi * a->g + gi) * a->m_pad + j0 + s * KB) * d;
        float *dv = a->dv + ((bi * a->g + gi) * a->m_pad + j0 + s * KB) * e;
        const float *dkt = w->dKT + s * d * KB, *dvt = w->dVT + s * e * KB;
        for (int j = 0; j < KB; j++) {
            for (int64_t c = 0; c < d; c++) dk[j * d + c] = dkt[c * KB + j];
            for (int64_t c = 0; c < e; c++) dv[j * e + c] = dvt[c * KB + j];
        }
    }
}

static void backward_all(const attn_args *a, int nthreads, atomic_int *failed) {
    const int64_t nkb = (a->m_pad + KB * KT - 1) / (KB * KT), tasks = a->b * a->g * nkb, d = a->d, e = a->e;
#pragma omp parallel num_threads(nthreads)
    {
        bwd_scratch w;
        w.S = _mm_malloc(sizeof(float) * QB * KB, 64);
        w.dP = _mm_malloc(sizeof(float) * QB * KB, 64);
        w.dKT = _mm_malloc(sizeof(float) * d * KB * KT, 64);
        w.dVT = _mm_malloc(sizeof(float) * e * KB * KT, 64);
        w.dQl = _mm_malloc(sizeof(float) * QB * d, 64);
        w.PI = _mm_malloc(sizeof(elem_t) * QB * KB, 64);
        w.dSI = _mm_malloc(sizeof(elem_t) * QB * KB, 64);
        w.dSr = _mm_malloc(sizeof(elem_t) * QB * KB, 64);
        if (!w.S || !w.dP || !w.dKT || !w.dVT || !w.dQl || !w.PI || !w.dSI || !w.dSr)
            atomic_store_explicit(failed, 1, memory_order_relaxed);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (atomic_load_explicit(failed, memory_order_relaxed)) continue;
            /* key block 0 first: under a causal mask the first key blocks have the most work */
            int64_t bg = t / nkb;
            bwd_task(a, &w, bg / a->g, bg % a->g, (t % nkb) * KB * KT);
        }
        _mm_free(w.S); _mm_free(w.dP); _mm_free(w.dKT); _mm_free(w.dVT); _mm_free(w.dQl);
        _mm_free(w.PI); _mm_free(w.dSI); _mm_free(w.dSr);
    }
}

/* Backward entry point: the forward's arguments plus qt, kvp, vtp, dout, dot (layouts above),
   lse2 = lse * log2(e) (+inf for padded rows) and delta = rowsum(dO * O), both (b, h, n_pad).
   Writes float32 dq (b, h, n_pad, d) (must arrive zeroed), dk (b, g, m_pad, d), dv (b, g, m_pad, e). */
int selfattn_flash_bwd(const elem_t *q, const elem_t *qt, const elem_t *kp, const elem_t *kvp,
                       const elem_t *vtp, const elem_t *dout, const elem_t *dot, const float *lse2,
                       const float *delta, const uint8_t *kpm, int64_t kpm_bstride,
                       const uint8_t *kpm_all, const float *slopes, const int32_t *qseg,
                       const int32_t *kseg, const uint8_t *mask, const float *bias, int64_t msb,
                       int64_t msh, int64_t msn, float *dq, float *dk,
                       float *dv, int64_t b, int64_t h, int64_t g, int64_t n, int64_t m,
                       int64_t n_pad, int64_t m_pad, int64_t d, int64_t e, float scale,
                       int64_t left, int64_t right, int nthreads) {
    attn_args a = {0};
    a.q = q; a.qt = qt; a.kp = kp; a.kvp = kvp; a.vtp = vtp; a.dout = dout; a.dot = dot;
    a.lse2 = lse2; a.delta = delta; a.kpm = kpm; a.kpm_bstride = kpm_bstride; a.kpm_all = kpm_all;
    a.slopes = slopes; a.qseg = qseg; a.kseg = kseg; a.dq = dq;
    a.mask = mask; a.bias = bias; a.msb = msb; a.msh = msh; a.msn = msn; a.dk = dk; a.dv = dv;
    a.b = b; a.h = h; a.g = g; a.n = n; a.m = m; a.n_pad = n_pad; a.m_pad = m_pad; a.d = d; a.e = e;
    a.scale = scale; a.scale2 = scale * LOG2E; a.left = left; a.right = right;
    const int64_t nlocks = b * h * (n_pad / QB);
    a.locks = malloc(sizeof(omp_lock_t) * nlocks);
    if (!a.locks) return -1;
    for (int64_t x = 0; x < nlocks; x++) omp_init_lock(a.locks + x);
    atomic_int failed = 0;
    backward_all(&a, nthreads, &failed);
    for (int64_t x = 0; x < nlocks; x++) omp_destroy_lock(a.locks + x);
    free(a.locks);
    return atomic_load(&failed) ? -1 : 0;
}

/* Checked by cpu_kernel.py when it loads a library: the calling convention and the operand type. */
int selfattn_kernel_version(void) { return SELFATTN_KERNEL_VERSION; }

int selfattn_elem_bytes(void) { return (int)sizeof(elem_t); }

int selfattn_block_sizes(int64_t *qb, int64_t *kb) {
    *qb = QB;
    *kb = KB;
    return 0;
}
