/* Fused exact attention for bfloat16 on x86 CPUs with AVX-512 BF16 (backend "cpu_bf16").

   The FlashAttention forward (Dao et al., 2022) with online softmax (Milakov & Gimelshein, 2018):
   each task owns QB query rows of one head and walks the key blocks of KB keys that its rows may
   see. Both matmuls run on the bf16 dot-product units (vdpbf16ps: bf16 products, float32 sums);
   the scores, softmax statistics and the output accumulator stay in float32 in cache-sized
   buffers; no n x m tensor exists. Called through ctypes from cpu_kernel.py, which lays out the
   operands (zero padding, the "VNNI" pair layout below) and builds this file with gcc.

   Legend: b batch, h query heads, g kv heads (h = g * r), n queries, m keys, d/e head dims
   (padded to multiples of 32), QB/KB query/key block sizes.
   Mask convention: a key-padding byte 1 = may attend. Query i sits at key position
   p = i + m - n (bottom-right alignment) and may attend keys p - left <= j <= p + right
   (causal is right = 0); a row that may attend nothing gets output 0 and lse = +inf.

   Layouts (bf16 stored as uint16):
     q   (b, h, n_pad, d)             row-major; rows n..n_pad are padding
     kp  (b, g, d/2, m_pad, 2)        key pairs: kp[..., t, j, s] = k[..., j, 2t + s]
     vp  (b, g, m_pad/2, e, 2)        value pairs: vp[..., t, c, s] = v[..., 2t + s, c]
     out (b, h, n_pad, e) bf16, lse (b, h, n_pad) float32 (natural log of the scaled scores)
*/
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#define QB 64
#define KB 64
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

typedef uint16_t bf16;

/* C[8][32] (+)= A[8][2*K2] . B, A bf16 rows (lda elements apart), B in pair layout: pair t holds
   32 columns x 2 values at B + t * ldb. float32 C, ldc floats apart. */
static inline void mk_8x32(const bf16 *A, int64_t lda, const bf16 *B, int64_t ldb, int64_t K2,
                           float *C, int64_t ldc, int accumulate) {
    __m512 acc[8][2];
    for (int r = 0; r < 8; r++) {
        acc[r][0] = accumulate ? _mm512_loadu_ps(C + r * ldc) : _mm512_setzero_ps();
        acc[r][1] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16) : _mm512_setzero_ps();
    }
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
    for (int r = 0; r < 8; r++) {
        _mm512_storeu_ps(C + r * ldc, acc[r][0]);
        _mm512_storeu_ps(C + r * ldc + 16, acc[r][1]);
    }
}

/* 2^x for 16 floats; x <= -126 gives exactly 0 (masked keys hold -inf). Relative error ~2e-7. */
static inline __m512 exp2_ps(__m512 x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_GT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
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

/* Keys [lo, hi) that query row i may attend (before key padding). */
static inline void row_range(int64_t i, int64_t n, int64_t m, int64_t left, int64_t right,
                             int64_t *lo, int64_t *hi) {
    int64_t p = i + m - n;
    *lo = p - left < 0 ? 0 : p - left;
    *hi = p + right + 1 > m ? m : p + right + 1;
}

/* One block of scores: scale to base 2, forbid what the row may not see, update the running max
   and sum, rescale the output rows, write P (bf16) for the P.V product. */
static void softmax_block(float *S, bf16 *P, float *O, float *mrow, float *lrow, int64_t e,
                          int64_t i0, int64_t j0, int64_t n, int64_t m, int64_t left,
                          int64_t right, const uint8_t *kpm, int masked, float scale2) {
    for (int r = 0; r < QB; r++) {
        float *s = S + r * KB;
        __m512 vs = _mm512_set1_ps(scale2);
        for (int c = 0; c < KB; c += 16) _mm512_storeu_ps(s + c, _mm512_mul_ps(_mm512_loadu_ps(s + c), vs));
        if (masked) {
            int64_t lo, hi;
            row_range(i0 + r, n, m, left, right, &lo, &hi);
            for (int c = 0; c < KB; c++) {
                int64_t j = j0 + c;
                if (j < lo || j >= hi || (kpm && !kpm[j])) s[c] = -INFINITY;
            }
        }
        __m512 vmax = _mm512_loadu_ps(s);
        for (int c = 16; c < KB; c += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + c));
        float bmax = _mm512_reduce_max_ps(vmax);
        if (bmax == -INFINITY) { /* nothing visible in this block for this row */
            memset(P + r * KB, 0, KB * sizeof(bf16));
            continue;
        }
        float mnew = bmax > mrow[r] ? bmax : mrow[r];
        float alpha = mrow[r] == -INFINITY ? 0.0f : exp2f(mrow[r] - mnew);
        __m512 vm = _mm512_set1_ps(mnew), vsum = _mm512_setzero_ps();
        for (int c = 0; c < KB; c += 32) {
            __m512 p0 = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + c), vm));
            __m512 p1 = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + c + 16), vm));
            vsum = _mm512_add_ps(vsum, _mm512_add_ps(p0, p1));
            _mm512_storeu_si512(P + r * KB + c, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
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

/* Does every row of [i0, i0+QB) see every key of [j0, j0+KB)? (then no per-element masking) */
static int block_is_full(int64_t i0, int64_t j0, int64_t n, int64_t m, int64_t left,
                         int64_t right, const uint8_t *kpm_all) {
    int64_t lo_last, hi_last, lo_first, hi_first;
    row_range(i0 + QB - 1, n, m, left, right, &lo_last, &hi_last);
    row_range(i0, n, m, left, right, &lo_first, &hi_first);
    return j0 >= lo_last && j0 + KB <= hi_first && (!kpm_all || kpm_all[j0 / KB]);
}

static void forward_task(const bf16 *q, const bf16 *kp, const bf16 *vp, const uint8_t *kpm,
                         const uint8_t *kpm_all, bf16 *out, float *lse, int64_t n, int64_t m,
                         int64_t m_pad, int64_t d, int64_t e, int64_t i0,
                         int64_t left, int64_t right, float scale2, float *S, bf16 *P, float *O) {
    float mrow[QB], lrow[QB];
    for (int r = 0; r < QB; r++) { mrow[r] = -INFINITY; lrow[r] = 0.0f; }
    memset(O, 0, sizeof(float) * QB * e);
    int64_t lo, hi, lo2, hi2;
    row_range(i0, n, m, left, right, &lo, &hi);
    row_range(i0 + QB - 1, n, m, left, right, &lo2, &hi2);
    hi = hi2; /* both bounds grow with the row: the block sees keys [lo(first), hi(last)) */
    for (int64_t j0 = (lo / KB) * KB; j0 < hi; j0 += KB) {
        for (int rt = 0; rt < QB; rt += 8)
            for (int ct = 0; ct < KB; ct += 32)
                mk_8x32(q + (i0 + rt) * d, d, kp + 2 * (j0 + ct), 2 * m_pad, d / 2,
                        S + rt * KB + ct, KB, 0);
        int masked = !block_is_full(i0, j0, n, m, left, right, kpm_all);
        softmax_block(S, P, O, mrow, lrow, e, i0, j0, n, m, left, right, kpm, masked, scale2);
        for (int rt = 0; rt < QB; rt += 8)
            for (int64_t ct = 0; ct < e; ct += 32)
                mk_8x32(P + rt * KB, KB, vp + (j0 / 2) * 2 * e + 2 * ct, 2 * e, KB / 2,
                        O + rt * e + ct, e, 1);
    }
    for (int r = 0; r < QB; r++) {
        float inv = lrow[r] > 0 ? 1.0f / lrow[r] : 0.0f;
        __m512 vi = _mm512_set1_ps(inv);
        for (int64_t c = 0; c < e; c += 16) {
            __m512 o = _mm512_mul_ps(_mm512_loadu_ps(O + r * e + c), vi);
            _mm256_storeu_si256((__m256i *)(out + (i0 + r) * e + c), (__m256i)_mm512_cvtneps_pbh(o));
        }
        lse[i0 + r] = lrow[r] > 0 ? (mrow[r] + log2f(lrow[r])) * LN2 : INFINITY;
    }
}

/* Entry point. left/right: window sides (a huge value = unlimited; causal caps right at 0).
   kpm: (b, m) bytes, 1 = may attend, batch stride kpm_bstride (0 = shared) or NULL; kpm_all:
   (b, m_pad / KB) bytes, 1 = every key of that block may be attended (same strides), or NULL.
   Returns 0, or -1 when the scratch buffers cannot be allocated. */
int selfattn_flash_fwd_bf16(const bf16 *q, const bf16 *kp, const bf16 *vp, const uint8_t *kpm,
                            int64_t kpm_bstride, const uint8_t *kpm_all, bf16 *out, float *lse,
                            int64_t b, int64_t h, int64_t g, int64_t n, int64_t m, int64_t n_pad,
                            int64_t m_pad, int64_t d, int64_t e, float scale, int64_t left,
                            int64_t right, int nthreads) {
    const int64_t r_per_g = h / g, nqb = n_pad / QB, tasks = b * h * nqb;
    const float scale2 = scale * LOG2E;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *S = _mm_malloc(sizeof(float) * QB * KB, 64);
        bf16 *P = _mm_malloc(sizeof(bf16) * QB * KB, 64);
        float *O = _mm_malloc(sizeof(float) * QB * e, 64);
        if (!S || !P || !O) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (failed) continue;
            int64_t qi = t % nqb, bh = t / nqb, bi = bh / h, hi = bh % h, gi = hi / r_per_g;
            const uint8_t *kpm_b = kpm ? kpm + bi * kpm_bstride : NULL;
            const uint8_t *all_b = kpm_all ? kpm_all + bi * (kpm_bstride ? m_pad / KB : 0) : NULL;
            forward_task(q + bh * n_pad * d, kp + (bi * g + gi) * m_pad * d,
                         vp + (bi * g + gi) * m_pad * e, kpm_b, all_b, out + bh * n_pad * e,
                         lse + bh * n_pad, n, m, m_pad, d, e, qi * QB, left, right, scale2,
                         S, P, O);
        }
        _mm_free(S);
        _mm_free(P);
        _mm_free(O);
    }
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------- backward (FlashAttention-2)

   Each task owns one key block of one kv head and walks every (query head of its group, query
   block) pair that sees it: S = Q Kᵀ, P = 2^(S·scale2 − lse2), dP = dO Vᵀ, dS = P ⊙ (dP − Δ) · scale,
   then dVᵀ += dOᵀ P and dKᵀ += Qᵀ dS (kept in the task, written once) and dQ += dS K (added to the
   shared float32 dQ under a lock per query block). The transposed products read P and dS in
   "pair-interleaved" layout, PI[t][j][s] = P[2t + s][j], so no matrix is ever transposed.

   Extra layouts: qt (b, h, d, n_pad) and dot (b, h, e, n_pad) transposed rows; kvp (b, g, m_pad/2,
   d, 2) keys in pairs along keys; vtp (b, g, e/2, m_pad, 2) values in pairs along features. */

/* Two float rows (KB values each) -> bf16, interleaved: dst[j][0] = a[j], dst[j][1] = b[j]. */
static inline void interleave_rows(const float *a, const float *b, bf16 *dst) {
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

typedef struct {
    const bf16 *q, *qt, *kp, *kvp, *vtp, *dout, *dot;
    const float *lse2, *delta;
    const uint8_t *kpm, *kpm_all;
    int64_t kpm_bstride, b, h, g, n, m, n_pad, m_pad, d, e, left, right;
    float scale, scale2;
    float *dq, *dk, *dv;
    omp_lock_t *locks;
} bwd_args;

typedef struct {
    float *S, *dP, *dKT, *dVT, *dQl;
    bf16 *PI, *dSI, *dSr;
} bwd_scratch;

/* P (in S) and dS (in dP) for one (query block, key block) pair; fills PI, dSI, dSr. */
static void bwd_probs(const bwd_args *a, bwd_scratch *w, const float *lse2, const float *delta,
                      int64_t i0, int64_t j0, const uint8_t *kpm, int masked) {
    __m512 vs = _mm512_set1_ps(a->scale2), vsc = _mm512_set1_ps(a->scale);
    for (int r = 0; r < QB; r++) {
        float *s = w->S + r * KB, *dp = w->dP + r * KB;
        if (masked) {
            int64_t lo, hi;
            row_range(i0 + r, a->n, a->m, a->left, a->right, &lo, &hi);
            for (int c = 0; c < KB; c++) {
                int64_t j = j0 + c;
                if (j < lo || j >= hi || (kpm && !kpm[j])) s[c] = -INFINITY;
            }
        }
        __m512 vl = _mm512_set1_ps(lse2[i0 + r]), vd = _mm512_set1_ps(delta[i0 + r]);
        for (int c = 0; c < KB; c += 16) {
            __m512 p = exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + c), vs, vl));
            _mm512_storeu_ps(s + c, p);
            __m512 ds = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dp + c), vd)), vsc);
            _mm512_storeu_ps(dp + c, ds);
        }
        for (int c = 0; c < KB; c += 32)
            _mm512_storeu_si512(w->dSr + r * KB + c, (__m512i)_mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(dp + c + 16), _mm512_loadu_ps(dp + c)));
    }
    for (int r = 0; r < QB; r += 2) {
        interleave_rows(w->S + r * KB, w->S + (r + 1) * KB, w->PI + r * KB);
        interleave_rows(w->dP + r * KB, w->dP + (r + 1) * KB, w->dSI + r * KB);
    }
}

static void bwd_pair(const bwd_args *a, bwd_scratch *w, int64_t bi, int64_t hi, int64_t gi,
                     int64_t i0, int64_t j0) {
    const int64_t n_pad = a->n_pad, m_pad = a->m_pad, d = a->d, e = a->e, bh = bi * a->h + hi;
    const bf16 *q = a->q + bh * n_pad * d, *qt = a->qt + bh * d * n_pad;
    const bf16 *dout = a->dout + bh * n_pad * e, *dot = a->dot + bh * e * n_pad;
    const bf16 *kp = a->kp + (bi * a->g + gi) * m_pad * d, *kvp = a->kvp + (bi * a->g + gi) * m_pad * d;
    const bf16 *vtp = a->vtp + (bi * a->g + gi) * m_pad * e;
    const uint8_t *kpm = a->kpm ? a->kpm + bi * a->kpm_bstride : NULL;
    const uint8_t *all = a->kpm_all ? a->kpm_all + bi * (a->kpm_bstride ? m_pad / KB : 0) : NULL;
    for (int rt = 0; rt < QB; rt += 8)
        for (int ct = 0; ct < KB; ct += 32) {
            mk_8x32(q + (i0 + rt) * d, d, kp + 2 * (j0 + ct), 2 * m_pad, d / 2, w->S + rt * KB + ct, KB, 0);
            mk_8x32(dout + (i0 + rt) * e, e, vtp + 2 * (j0 + ct), 2 * m_pad, e / 2, w->dP + rt * KB + ct, KB, 0);
        }
    int masked = !block_is_full(i0, j0, a->n, a->m, a->left, a->right, all);
    bwd_probs(a, w, a->lse2 + bh * n_pad, a->delta + bh * n_pad, i0, j0, kpm, masked);
    for (int64_t rt = 0; rt < e; rt += 8)  /* dVᵀ (e, KB) += dOᵀ (e, QB) . P (QB, KB) */
        for (int ct = 0; ct < KB; ct += 32)
            mk_8x32(dot + rt * n_pad + i0, n_pad, w->PI + 2 * ct, 2 * KB, QB / 2, w->dVT + rt * KB + ct, KB, 1);
    for (int64_t rt = 0; rt < d; rt += 8)  /* dKᵀ (d, KB) += Qᵀ (d, QB) . dS (QB, KB) */
        for (int ct = 0; ct < KB; ct += 32)
            mk_8x32(qt + rt * n_pad + i0, n_pad, w->dSI + 2 * ct, 2 * KB, QB / 2, w->dKT + rt * KB + ct, KB, 1);
    for (int rt = 0; rt < QB; rt += 8)  /* dQ (QB, d) = dS (QB, KB) . K (KB, d) */
        for (int64_t ct = 0; ct < d; ct += 32)
            mk_8x32(w->dSr + rt * KB, KB, kvp + (j0 / 2) * 2 * d + 2 * ct, 2 * d, KB / 2, w->dQl + rt * d + ct, d, 0);
    omp_lock_t *lock = a->locks + bh * (n_pad / QB) + i0 / QB;
    float *dq = a->dq + (bh * n_pad + i0) * d;
    omp_set_lock(lock);
    for (int64_t x = 0; x < QB * d; x += 16)
        _mm512_storeu_ps(dq + x, _mm512_add_ps(_mm512_loadu_ps(dq + x), _mm512_loadu_ps(w->dQl + x)));
    omp_unset_lock(lock);
}

static void bwd_task(const bwd_args *a, bwd_scratch *w, int64_t bi, int64_t gi, int64_t j0) {
    const int64_t d = a->d, e = a->e, r_per_g = a->h / a->g;
    memset(w->dKT, 0, sizeof(float) * d * KB);
    memset(w->dVT, 0, sizeof(float) * e * KB);
    for (int64_t i0 = 0; i0 < a->n_pad; i0 += QB) {
        int64_t lo, hi, lo2, hi2;
        row_range(i0, a->n, a->m, a->left, a->right, &lo, &hi);
        row_range(i0 + QB - 1, a->n, a->m, a->left, a->right, &lo2, &hi2);
        if (hi2 <= j0 || lo >= j0 + KB || lo >= hi2) continue; /* no row of the block sees these keys */
        for (int64_t rr = 0; rr < r_per_g; rr++) bwd_pair(a, w, bi, gi * r_per_g + rr, gi, i0, j0);
    }
    float *dk = a->dk + ((bi * a->g + gi) * a->m_pad + j0) * d;
    float *dv = a->dv + ((bi * a->g + gi) * a->m_pad + j0) * e;
    for (int j = 0; j < KB; j++) {
        for (int64_t c = 0; c < d; c++) dk[j * d + c] = w->dKT[c * KB + j];
        for (int64_t c = 0; c < e; c++) dv[j * e + c] = w->dVT[c * KB + j];
    }
}

int selfattn_flash_bwd_bf16(const bf16 *q, const bf16 *qt, const bf16 *kp, const bf16 *kvp,
                            const bf16 *vtp, const bf16 *dout, const bf16 *dot, const float *lse2,
                            const float *delta, const uint8_t *kpm, int64_t kpm_bstride,
                            const uint8_t *kpm_all, float *dq, float *dk, float *dv, int64_t b,
                            int64_t h, int64_t g, int64_t n, int64_t m, int64_t n_pad,
                            int64_t m_pad, int64_t d, int64_t e, float scale, int64_t left,
                            int64_t right, int nthreads) {
    const int64_t nkb = m_pad / KB, tasks = b * g * nkb, nlocks = b * h * (n_pad / QB);
    bwd_args a = {q, qt, kp, kvp, vtp, dout, dot, lse2, delta, kpm, kpm_all, kpm_bstride, b, h, g, n,
                  m, n_pad, m_pad, d, e, left, right, scale, scale * LOG2E, dq, dk, dv, NULL};
    a.locks = malloc(sizeof(omp_lock_t) * nlocks);
    if (!a.locks) return -1;
    for (int64_t x = 0; x < nlocks; x++) omp_init_lock(a.locks + x);
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        bwd_scratch w;
        w.S = _mm_malloc(sizeof(float) * QB * KB, 64);
        w.dP = _mm_malloc(sizeof(float) * QB * KB, 64);
        w.dKT = _mm_malloc(sizeof(float) * d * KB, 64);
        w.dVT = _mm_malloc(sizeof(float) * e * KB, 64);
        w.dQl = _mm_malloc(sizeof(float) * QB * d, 64);
        w.PI = _mm_malloc(sizeof(bf16) * QB * KB, 64);
        w.dSI = _mm_malloc(sizeof(bf16) * QB * KB, 64);
        w.dSr = _mm_malloc(sizeof(bf16) * QB * KB, 64);
        if (!w.S || !w.dP || !w.dKT || !w.dVT || !w.dQl || !w.PI || !w.dSI || !w.dSr) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (failed) continue;
            /* key block 0 first: under a causal mask the first key blocks have the most work */
            int64_t jb = t % nkb, bg = t / nkb;
            bwd_task(&a, &w, bg / g, bg % g, jb * KB);
        }
        _mm_free(w.S); _mm_free(w.dP); _mm_free(w.dKT); _mm_free(w.dVT); _mm_free(w.dQl);
        _mm_free(w.PI); _mm_free(w.dSI); _mm_free(w.dSr);
    }
    for (int64_t x = 0; x < nlocks; x++) omp_destroy_lock(a.locks + x);
    free(a.locks);
    return failed ? -1 : 0;
}

int selfattn_block_sizes(int64_t *qb, int64_t *kb) {
    *qb = QB;
    *kb = KB;
    return 0;
}
