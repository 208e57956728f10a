/* Native (C, AVX-512) kernels for lifting: the weights pass of `raster_cpu.rasterize_store` and the product of
 * `lifting.accumulate_store`. Built on first use by utils/native/__init__.py (gcc/cc, -march=native); when the
 * compiler or AVX-512 is missing the numba kernels run instead. Each entry point does one thread's share and is
 * called from a Python thread through ctypes (which releases the GIL).
 *
 * Numerics: the same float32 expressions, in the same order, as the numba tile kernel (sigma, alpha, T, w; no FMA
 * contraction: built with -ffp-contract=off), except exp, which is evaluated here on 16 lanes (`exp_neg`, ~1 ulp), and
 * the bilinear fold, which sums the taps in a different order; so weights agree with the numba kernel to float32
 * rounding, not bitwise. The tests compare both to a float64 reference. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>

#define TILE 16
#define FOLD_BOX (TILE + 2)
#define NPX (TILE * TILE)
#define GAUSS_AHEAD 8 /* tile-list entries to prefetch ahead */

int gw_has_avx512(void) { return 1; }

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* e^x on 16 lanes for x in [-87, 0] (the callers' -sigma; lanes outside are clamped and masked off later):
 * x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial (truncation < 0.1 ulp), times 2^n. */
static inline __m512 exp_neg(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x); /* ln2 split in two: exact n ln2_hi */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Mask of the lanes (tile columns) lo <= l < hi, 0 <= lo, hi <= 16. */
static inline __mmask16 lane_range(int64_t lo, int64_t hi)
{
    if (hi <= lo) return 0;
    return (__mmask16)((((uint32_t)1 << hi) - 1) & ~(((uint32_t)1 << lo) - 1));
}

/* One job's share of `_tile_kernel`'s store mode: tiles tile_order[job::n_jobs], entries appended from pos (never
 * written at or past end; counted anyway). Arguments as `_tile_kernel`'s (valid_px may be NULL). fold: taps as
 * FoldTaps, the render's row i reads map rows ty0[i], ty1[i] (weight of ty1: tly[i]), column j columns tx0/tx1/tlx.
 * Returns the entries the job needed. */
int64_t gw_store_job(
    const int64_t *offsets, const int32_t *ranks, const int32_t *order, const float *gauss,
    const int64_t *tile_order, int64_t n_tiles, int64_t job, int64_t n_jobs, int64_t tiles_x, int64_t width,
    int64_t height, const uint8_t *valid_px, int64_t fold, const int64_t *ty0, const int64_t *ty1, const float *tly,
    const int64_t *tx0, const int64_t *tx1, const float *tlx, int64_t w_lo,
    int32_t *s_pix, int32_t *s_g, float *s_w, int64_t pos, int64_t end, int64_t *tile_start, int64_t *tile_len)
{
    const float thr = 1.0f / 255.0f, half = 0.5f;
    const __m512 v_one = _mm512_set1_ps(1.0f), v_half = _mm512_set1_ps(half), v_zero = _mm512_setzero_ps();
    const __m512 v_amax = _mm512_set1_ps(0.999f), v_thr = _mm512_set1_ps(thr), v_tmin = _mm512_set1_ps(1e-4f);
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const int64_t start = pos;
    float T[NPX] __attribute__((aligned(64)));
    __m512 U[FOLD_BOX];  /* fold: per map row of the tile's box, the run's weights summed over render rows */
    __m512 hx[TILE];     /* fold: row l = the horizontal taps of tile column l, over the box's map columns */
    for (int r = 0; r < FOLD_BOX; r++) U[r] = v_zero;
    for (int64_t q = job; q < n_tiles; q += n_jobs) {
        const int64_t t = tile_order[q];
        const int64_t i0 = (t / tiles_x) * TILE, j0 = (t % tiles_x) * TILE;
        const int64_t i1 = imin(i0 + TILE, height), j1 = imin(j0 + TILE, width);
        const int64_t npx = (i1 - i0) * (j1 - j0);
        const __m512 xs = _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(iota, _mm512_set1_epi32((int)j0))), v_half);
        const __m512i pix_lane = _mm512_add_epi32(iota, _mm512_set1_epi32((int)j0));
        const __mmask16 cols = lane_range(0, j1 - j0);
        uint16_t done[TILE] = {0};
        __mmask16 valid_rows[TILE];
        for (int k = 0; k < NPX; k += 16) _mm512_store_ps(T + k, v_one);
        for (int64_t i = i0; i < i1; i++) {
            __mmask16 v = cols;
            if (valid_px) {
                __m128i b = _mm_maskz_loadu_epi8(cols, valid_px + i * width + j0);
                v = _mm_mask_test_epi8_mask(cols, b, b);
            }
            valid_rows[i - i0] = v;
        }
        int64_t qy0 = 0, qx0 = 0;
        if (fold) {
            qy0 = ty0[i0];
            qx0 = tx0[j0];
            for (int l = 0; l < TILE; l++) {
                float row[16] __attribute__((aligned(64))) = {0};
                if (j0 + l < j1) {
                    const int64_t j = j0 + l;
                    row[tx0[j] - qx0] += 1.0f - tlx[j];
                    row[tx1[j] - qx0] += tlx[j];
                }
                hx[l] = _mm512_load_ps(row);
            }
        }
        tile_start[t] = pos;
        int64_t ndone = 0;
        const int64_t k_end = offsets[t + 1];
        for (int64_t k = offsets[t]; k < k_end; k++) {
            if (ndone == npx) break; /* every pixel of the tile is saturated */
            if (k + GAUSS_AHEAD < k_end) {
                /* The packed Gaussians of a tile's list are scattered through a ~40 MB array: start loading ahead. */
                const int32_t ra = ranks[k + GAUSS_AHEAD];
                _mm_prefetch((const char *)(gauss + (int64_t)ra * 10), _MM_HINT_T0);
                _mm_prefetch((const char *)(gauss + (int64_t)ra * 10) + 36, _MM_HINT_T0);
                _mm_prefetch((const char *)(order + ra), _MM_HINT_T0);
            }
            const int32_t r = ranks[k];
            const int32_t g = order[r];
            const float *G = gauss + (int64_t)r * 10;
            const float mx = G[0], my = G[1], ca = G[2], cb = G[3], cc = G[4], op = G[5], skip = G[7];
            const double ry = (double)G[8] + 0.5;
            const int64_t ia = imax(i0, (int64_t)ceil((double)my - ry - 0.5));
            const int64_t ib = imin(i1, (int64_t)floor((double)my + ry - 0.5) + 1);
            const double a64 = ca, b64 = cb, c64 = cc, s64 = skip, mx64 = mx;
            const double inv_a = 1.0 / a64;
            const __m512 dx = _mm512_sub_ps(_mm512_set1_ps(mx), xs);
            const __m512 adxdx = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(ca), dx), dx);
            const __m512 bdx = _mm512_mul_ps(_mm512_set1_ps(cb), dx);
            const __m512 v_skip = _mm512_set1_ps(skip), v_op = _mm512_set1_ps(op);
            int64_t u_lo = FOLD_BOX, u_hi = -1;
            for (int64_t i = ia; i < ib; i++) {
                const float dy = my - ((float)i + half);
                const double dy64 = dy;
                const double disc = b64 * b64 * dy64 * dy64 - a64 * (c64 * dy64 * dy64 - 2.0 * s64);
                if (disc < 0.0) continue;
                const double centre = mx64 + b64 * dy64 * inv_a;
                const double half_w = sqrt(disc) * inv_a;
                const int64_t ja = imax(j0, (int64_t)ceil(centre - half_w - 0.5 - 0.01));
                const int64_t jb = imin(j1, (int64_t)floor(centre + half_w - 0.5 + 0.01) + 1);
                const int64_t row = i - i0;
                __mmask16 m = lane_range(ja - j0, jb - j0) & (__mmask16)~done[row];
                if (!m) continue;
                const float ccdydy = cc * dy * dy;
                const __m512 sigma = _mm512_add_ps(
                    _mm512_mul_ps(v_half, _mm512_add_ps(adxdx, _mm512_set1_ps(ccdydy))),
                    _mm512_mul_ps(bdx, _mm512_set1_ps(dy)));
                /* the scalar kernel skips sigma < 0 or sigma > skip (unordered compares keep NaN like it does) */
                m = _mm512_mask_cmp_ps_mask(m, sigma, v_zero, _CMP_NLT_UQ);
                m = _mm512_mask_cmp_ps_mask(m, sigma, v_skip, _CMP_NGT_UQ);
                if (!m) continue;
                __m512 alpha = _mm512_mul_ps(v_op, exp_neg(_mm512_sub_ps(v_zero, sigma)));
                alpha = _mm512_min_ps(alpha, v_amax);
                m = _mm512_mask_cmp_ps_mask(m, alpha, v_thr, _CMP_NLT_UQ);
                if (!m) continue;
                const __m512 Tv = _mm512_load_ps(T + row * TILE);
                const __m512 Tn = _mm512_mul_ps(Tv, _mm512_sub_ps(v_one, alpha));
                const __mmask16 sat = _mm512_mask_cmp_ps_mask(m, Tn, v_tmin, _CMP_LE_OQ);
                if (sat) {
                    done[row] |= sat;
                    ndone += __builtin_popcount(sat);
                    m &= (__mmask16)~sat;
                }
                _mm512_mask_store_ps(T + row * TILE, m, Tn);
                const __m512 w = _mm512_mul_ps(alpha, Tv);
                m &= valid_rows[row];
                if (!m) continue;
                if (!fold) {
                    const int n = __builtin_popcount(m);
                    if (pos + 16 <= end) {
                        const __m512i pix = _mm512_add_epi32(pix_lane, _mm512_set1_epi32((int)(i * width)));
                        _mm512_mask_compressstoreu_epi32(s_pix + pos, m, pix);
                        _mm512_mask_compressstoreu_ps(s_w + pos, m, w);
                        _mm512_storeu_si512((void *)(s_g + pos), _mm512_set1_epi32(g));
                    } else {
                        int64_t p = pos;
                        float wl[16];
                        _mm512_storeu_ps(wl, w);
                        for (int l = 0; l < 16; l++)
                            if ((m >> l) & 1) {
                                if (p < end) { s_pix[p] = (int32_t)(i * width + j0 + l); s_g[p] = g; s_w[p] = wl[l]; }
                                p++;
                            }
                    }
                    pos += n;
                } else {
                    const float ly = tly[i];
                    const int64_t r0 = ty0[i] - qy0, r1 = ty1[i] - qy0;
                    const __m512 wm = _mm512_maskz_mov_ps(m, w);
                    U[r0] = _mm512_add_ps(U[r0], _mm512_mul_ps(wm, _mm512_set1_ps(1.0f - ly)));
                    U[r1] = _mm512_add_ps(U[r1], _mm512_mul_ps(wm, _mm512_set1_ps(ly)));
                    u_lo = imin(u_lo, r0);
                    u_hi = imax(u_hi, r1);
                }
            }
            if (fold) {
                /* Horizontal taps of each touched map row: cells = sum over tile columns l of U[r][l] * hx[l]. */
                for (int64_t rr = u_lo; rr <= u_hi; rr++) {
                    __m512 cells = v_zero;
                    for (int l = 0; l < TILE; l++)
                        cells = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_set1_epi32(l), U[rr]), hx[l], cells);
                    U[rr] = v_zero;
                    const __mmask16 nz = _mm512_cmp_ps_mask(cells, v_zero, _CMP_NEQ_UQ);
                    if (!nz) continue;
                    const int n = __builtin_popcount(nz);
                    if (pos + 16 <= end) {
                        const __m512i pix = _mm512_add_epi32(iota, _mm512_set1_epi32((int)((qy0 + rr) * w_lo + qx0)));
                        _mm512_mask_compressstoreu_epi32(s_pix + pos, nz, pix);
                        _mm512_mask_compressstoreu_ps(s_w + pos, nz, cells);
                        _mm512_storeu_si512((void *)(s_g + pos), _mm512_set1_epi32(g));
                    } else {
                        int64_t p = pos;
                        float cl[16];
                        _mm512_storeu_ps(cl, cells);
                        for (int l = 0; l < 16; l++)
                            if ((nz >> l) & 1) {
                                if (p < end) { s_pix[p] = (int32_t)((qy0 + rr) * w_lo + qx0 + l); s_g[p] = g; s_w[p] = cl[l]; }
                                p++;
                            }
                    }
                    pos += n;
                }
            }
        }
        tile_len[t] = pos - tile_start[t];
    }
    return pos - start;
}

/* One run (entries m..e of one Gaussian) times the features, columns j .. j + 16 CB, added to out. */
#define RUN_BLOCK(CB)                                                                                                 \
    do {                                                                                                              \
        __m512 acc[CB];                                                                                               \
        for (int b = 0; b < CB; b++) acc[b] = _mm512_setzero_ps();                                                   \
        for (int64_t k = m; k < e; k++) {                                                                             \
            const __m512 w = _mm512_set1_ps(weight[k]);                                                               \
            const float *f = feats + (int64_t)pixel[k] * D + j;                                                       \
            for (int b = 0; b < CB; b++) acc[b] = _mm512_fmadd_ps(w, _mm512_loadu_ps(f + 16 * b), acc[b]);            \
        }                                                                                                             \
        for (int b = 0; b < CB; b++)                                                                                  \
            _mm512_storeu_ps(out + j + 16 * b, _mm512_add_ps(_mm512_loadu_ps(out + j + 16 * b), acc[b]));             \
        j += 16 * CB;                                                                                                 \
    } while (0)

/* One thread's share of `accumulate_store`: numer[g, d0:d1] += sum w F[pixel] over every run, tiles in seg_order;
 * denom[g] += sum w (float64) for the Gaussians with g % nchunks == c. Each run's float32 sum is formed in registers
 * (FMA, entries in store order) and added to numer once. */
void gw_product(float *numer, double *denom, int64_t D, int64_t d0, int64_t d1, const int64_t *seg_order,
                int64_t nseg, const int64_t *seg_start, const int64_t *seg_len, const int32_t *pixel,
                const int32_t *gaussian, const float *weight, const float *feats, int64_t c, int64_t nchunks)
{
    const int64_t ahead = 16; /* prefetch the accumulator row of the run this many entries ahead */
    for (int64_t si = 0; si < nseg; si++) {
        const int64_t s = seg_order[si];
        int64_t m = seg_start[s];
        const int64_t M = m + seg_len[s];
        while (m < M) {
            const int32_t g = gaussian[m];
            int64_t e = m + 1;
            while (e < M && gaussian[e] == g) e++;
            if (m + ahead < M) {
                const char *p = (const char *)(numer + (int64_t)gaussian[m + ahead] * D + d0);
                for (int64_t k = 0; k < (d1 - d0) * 4; k += 64) _mm_prefetch(p + k, _MM_HINT_ET0);
            }
            if (g % nchunks == c) {
                double sw = 0;
                for (int64_t k = m; k < e; k++) sw += weight[k];
                denom[g] += sw;
            }
            float *out = numer + (int64_t)g * D;
            int64_t j = d0;
            while (d1 - j >= 256) RUN_BLOCK(16);
            if (d1 - j >= 128) RUN_BLOCK(8);
            if (d1 - j >= 64) RUN_BLOCK(4);
            if (d1 - j >= 32) RUN_BLOCK(2);
            if (d1 - j >= 16) RUN_BLOCK(1);
            if (j < d1) {
                const __mmask16 tail = (__mmask16)(((uint32_t)1 << (d1 - j)) - 1);
                __m512 acc = _mm512_setzero_ps();
                for (int64_t k = m; k < e; k++)
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(weight[k]),
                                          _mm512_maskz_loadu_ps(tail, feats + (int64_t)pixel[k] * D + j), acc);
                _mm512_mask_storeu_ps(out + j, tail, _mm512_add_ps(_mm512_maskz_loadu_ps(tail, out + j), acc));
            }
            m = e;
        }
    }
}
#else
int gw_has_avx512(void) { return 0; }
#endif
