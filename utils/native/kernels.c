/* Native (C) kernels for lifting: the weights pass of `raster_cpu.rasterize_store` and the product of
 * `lifting.accumulate_store`, with AVX-512 intrinsics or AVX2 + FMA ones (a CPU gets the widest it has: -march=native
 * picks the block). Built on first use by utils/native/__init__.py (gcc/cc); without a compiler or either instruction
 * set the numba kernels run instead. Each entry point does one thread's share and is called from a Python thread
 * through ctypes (which releases the GIL).
 *
 * Numerics: the same float32 expressions, in the same order, as the numba tile kernel (sigma, alpha, T, w; no FMA
 * contraction: built with -ffp-contract=off), except exp, which is evaluated here on vector lanes (`exp_neg`, ~1 ulp),
 * and the bilinear fold, which sums the taps in a different order; so weights agree with the numba kernel to float32
 * rounding, not bitwise. The two vector widths do the same float operations in the same order: same bits. The tests
 * compare all of them to a float64 reference. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>

#define TILE 16
#define FOLD_BOX (TILE + 2)
#define NPX (TILE * TILE)
#define GAUSS_AHEAD 8 /* tile-list entries to prefetch ahead */
#define RUN_AHEAD 16  /* product: prefetch the accumulator row of the run this many entries ahead */

/* e^r for |r| <= ln2 / 2 by its degree-7 Taylor polynomial (truncation < 0.1 ulp); x = n ln2 + r. */
#define EXP_C7 (1.0f / 5040.0f)
#define EXP_C6 (1.0f / 720.0f)
#define EXP_C5 (1.0f / 120.0f)
#define EXP_C4 (1.0f / 24.0f)
#define EXP_C3 (1.0f / 6.0f)
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f /* ln2 split in two: n * LN2_HI is exact */
#define LN2_LO 1.428606765330187e-06f

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* Bit mask of the tile columns lo <= l < hi, 0 <= lo, hi <= 16. */
static inline uint32_t lane_range(int64_t lo, int64_t hi)
{
    if (hi <= lo) return 0;
    return (((uint32_t)1 << hi) - 1) & ~(((uint32_t)1 << lo) - 1);
}

/* One depth-sorted Gaussian of a tile list, as the numba kernel reads it (`TileBins.gauss` row r). */
struct splat {
    int32_t g;
    float mx, my, ca, cb, cc, op, skip;
    double a64, b64, c64, s64, mx64, inv_a;
    int64_t ia, ib; /* the tile rows it may reach */
};

static inline void splat_load(struct splat *s, const float *gauss, const int32_t *order, int32_t r, int64_t i0,
                              int64_t i1)
{
    const float *G = gauss + (int64_t)r * 10;
    s->g = order[r];
    s->mx = G[0], s->my = G[1], s->ca = G[2], s->cb = G[3], s->cc = G[4], s->op = G[5], s->skip = G[7];
    const double ry = (double)G[8] + 0.5;
    s->ia = imax(i0, (int64_t)ceil((double)s->my - ry - 0.5));
    s->ib = imin(i1, (int64_t)floor((double)s->my + ry - 0.5) + 1);
    s->a64 = s->ca, s->b64 = s->cb, s->c64 = s->cc, s->s64 = s->skip, s->mx64 = s->mx;
    s->inv_a = 1.0 / s->a64;
}

/* The columns [*ja, *jb) of render row i (clamped to [j0, j1)) where sigma <= skip may hold; 0 if none. *dy: the
 * row's float32 offset from the centre. The numba kernel's float64 bounds, expression for expression. */
static inline int row_span(const struct splat *s, int64_t i, int64_t j0, int64_t j1, float *dy, int64_t *ja, int64_t *jb)
{
    *dy = s->my - ((float)i + 0.5f);
    const double dy64 = *dy;
    const double disc = s->b64 * s->b64 * dy64 * dy64 - s->a64 * (s->c64 * dy64 * dy64 - 2.0 * s->s64);
    if (disc < 0.0) return 0;
    const double centre = s->mx64 + s->b64 * dy64 * s->inv_a;
    const double half_w = sqrt(disc) * s->inv_a;
    *ja = imax(j0, (int64_t)ceil(centre - half_w - 0.5 - 0.01));
    *jb = imin(j1, (int64_t)floor(centre + half_w - 0.5 + 0.01) + 1);
    return *ja < *jb;
}

/* The packed Gaussians of a tile's list are scattered through a large array: start loading a later one. */
static inline void prefetch_splat(const int32_t *ranks, const float *gauss, const int32_t *order, int64_t k,
                                  int64_t k_end)
{
    if (k + GAUSS_AHEAD >= k_end) return;
    const int32_t ra = ranks[k + GAUSS_AHEAD];
    _mm_prefetch((const char *)(gauss + (int64_t)ra * 10), _MM_HINT_T0);
    _mm_prefetch((const char *)(gauss + (int64_t)ra * 10) + 36, _MM_HINT_T0);
    _mm_prefetch((const char *)(order + ra), _MM_HINT_T0);
}

/* Per tile row, the columns whose pixel is valid (and inside the render). */
static inline void tile_valid_rows(uint32_t *rows, const uint8_t *valid_px, int64_t width, int64_t i0, int64_t i1,
                                   int64_t j0, int64_t j1)
{
    for (int64_t i = i0; i < i1; i++) {
        uint32_t v = lane_range(0, j1 - j0);
        if (valid_px)
            for (int64_t l = 0; l < j1 - j0; l++)
                if (!valid_px[i * width + j0 + l]) v &= ~((uint32_t)1 << l);
        rows[i - i0] = v;
    }
}

/* hx[l][c]: the horizontal bilinear taps of tile column l onto map column qx0 + c (the tile's box). */
static inline void tile_fold_taps(float hx[TILE][16], const int64_t *tx0, const int64_t *tx1, const float *tlx,
                                  int64_t j0, int64_t j1, int64_t qx0)
{
    memset(hx, 0, sizeof(float) * TILE * 16);
    for (int64_t j = j0; j < j1; j++) {
        hx[j - j0][tx0[j] - qx0] += 1.0f - tlx[j];
        hx[j - j0][tx1[j] - qx0] += tlx[j];
    }
}

/* One tile of a store job: its pixel range, per-row saturation and validity masks, transmittance and fold box. */
struct tile {
    int64_t i0, j0, i1, j1, npx, qy0, qx0;
    uint32_t done[TILE], valid_rows[TILE];
};

static inline void tile_begin(struct tile *tl, float *T, float hx[TILE][16], int64_t t, int64_t tiles_x, int64_t width,
                              int64_t height, const uint8_t *valid_px, int64_t fold, const int64_t *ty0,
                              const int64_t *tx0, const int64_t *tx1, const float *tlx)
{
    tl->i0 = (t / tiles_x) * TILE, tl->j0 = (t % tiles_x) * TILE;
    tl->i1 = imin(tl->i0 + TILE, height), tl->j1 = imin(tl->j0 + TILE, width);
    tl->npx = (tl->i1 - tl->i0) * (tl->j1 - tl->j0);
    memset(tl->done, 0, sizeof tl->done);
    for (int k = 0; k < NPX; k++) T[k] = 1.0f;
    tile_valid_rows(tl->valid_rows, valid_px, width, tl->i0, tl->i1, tl->j0, tl->j1);
    tl->qy0 = fold ? ty0[tl->i0] : 0, tl->qx0 = fold ? tx0[tl->j0] : 0;
    if (fold) tile_fold_taps(hx, tx0, tx1, tlx, tl->j0, tl->j1, tl->qx0);
}

/* Append the lanes set in bits16 of (pix0 + l, v16[l]) one by one near the end of a job's slice (writes only below
 * end, counts anyway). */
static inline int64_t append_tail(int32_t *s_pix, float *s_w, int32_t *s_g, int64_t pos, int64_t end, uint32_t bits16,
                                  int64_t pix0, const float *v16, int32_t g)
{
    for (int l = 0; l < 16; l++)
        if ((bits16 >> l) & 1) {
            if (pos < end) { s_pix[pos] = (int32_t)(pix0 + l); s_g[pos] = g; s_w[pos] = v16[l]; }
            pos++;
        }
    return pos;
}

/* The vector type of each build, for the code both share (exp and the product). */
#if defined(__AVX512F__)
typedef __m512 vf;
#define VL 16
#define V_ZERO _mm512_setzero_ps()
#define V_SET1 _mm512_set1_ps
#define V_LOADU _mm512_loadu_ps
#define V_STOREU _mm512_storeu_ps
#define V_ADD _mm512_add_ps
#define V_MUL _mm512_mul_ps
#define V_MAX _mm512_max_ps
#define V_FMA _mm512_fmadd_ps
#define V_FNMA _mm512_fnmadd_ps
#define V_ROUND(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_SCALE2(p, n) _mm512_scalef_ps(p, n) /* p * 2^n */
#define MAX_CB 16                           /* product: 16 accumulators, 256 columns per pass */
int gw_isa(void) { return 512; }
#else
typedef __m256 vf;
#define VL 8
#define V_ZERO _mm256_setzero_ps()
#define V_SET1 _mm256_set1_ps
#define V_LOADU _mm256_loadu_ps
#define V_STOREU _mm256_storeu_ps
#define V_ADD _mm256_add_ps
#define V_MUL _mm256_mul_ps
#define V_MAX _mm256_max_ps
#define V_FMA _mm256_fmadd_ps
#define V_FNMA _mm256_fnmadd_ps
#define V_ROUND(x) _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
/* p * 2^n for n in [-126, 0] through the exponent field: exact, like scalef */
#define V_SCALE2(p, n) \
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)))
#define MAX_CB 12 /* product: 12 accumulators + a broadcast + a load in the 16 ymm registers */
int gw_isa(void) { return 256; }
#endif

/* e^x on every lane for x in [-87, 0] (the callers' -sigma; lanes outside are clamped, and masked off later). */
static inline vf exp_neg(vf x)
{
    x = V_MAX(x, V_SET1(-87.0f));
    const vf n = V_ROUND(V_MUL(x, V_SET1(LOG2E)));
    vf r = V_FNMA(n, V_SET1(LN2_HI), x);
    r = V_FNMA(n, V_SET1(LN2_LO), r);
    vf p = V_SET1(EXP_C7);
    p = V_FMA(p, r, V_SET1(EXP_C6));
    p = V_FMA(p, r, V_SET1(EXP_C5));
    p = V_FMA(p, r, V_SET1(EXP_C4));
    p = V_FMA(p, r, V_SET1(EXP_C3));
    p = V_FMA(p, r, V_SET1(0.5f));
    p = V_FMA(p, r, V_SET1(1.0f));
    p = V_FMA(p, r, V_SET1(1.0f));
    return V_SCALE2(p, n);
}

#define STORE_JOB_ARGS                                                                                                \
    const int64_t *offsets, const int32_t *ranks, const int32_t *order, const float *gauss,                          \
        const int64_t *tile_order, int64_t n_tiles, int64_t job, int64_t n_jobs, int64_t tiles_x, int64_t width,    \
        int64_t height, const uint8_t *valid_px, int64_t fold, const int64_t *ty0, const int64_t *ty1,              \
        const float *tly, const int64_t *tx0, const int64_t *tx1, const float *tlx, int64_t w_lo, int32_t *s_pix,   \
        int32_t *s_g, float *s_w, int64_t pos, int64_t end, int64_t *tile_start, int64_t *tile_len

/* gw_store_job: one job's share of `_tile_kernel`'s store mode: tiles tile_order[job::n_jobs], entries appended from
 * pos (never written at or past end; counted anyway). Arguments as `_tile_kernel`'s (valid_px may be NULL). fold:
 * taps as FoldTaps, the render's row i reads map rows ty0[i], ty1[i] (weight of ty1: tly[i]), column j columns
 * tx0/tx1/tlx; each Gaussian's weights are summed per map row over the tile's render rows first (U), then the
 * horizontal taps are applied once per map row. Returns the entries the job needed. */

#if defined(__AVX512F__)

/* Append the lanes of (pix, v) set in m at pos, or one by one near the end of the slice. */
static inline int64_t append16(int32_t *s_pix, float *s_w, int32_t *s_g, int64_t pos, int64_t end, __mmask16 m,
                               int64_t pix0, __m512 v, int32_t g)
{
    if (pos + 16 <= end) {
        const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        _mm512_mask_compressstoreu_epi32(s_pix + pos, m, _mm512_add_epi32(iota, _mm512_set1_epi32((int)pix0)));
        _mm512_mask_compressstoreu_ps(s_w + pos, m, v);
        _mm512_storeu_si512((void *)(s_g + pos), _mm512_set1_epi32(g));
        return pos + __builtin_popcount(m);
    }
    float v16[16];
    _mm512_storeu_ps(v16, v);
    return append_tail(s_pix, s_w, s_g, pos, end, m, pix0, v16, g);
}

int64_t gw_store_job(STORE_JOB_ARGS)
{
    const __m512 v_one = _mm512_set1_ps(1.0f), v_half = _mm512_set1_ps(0.5f), v_zero = _mm512_setzero_ps();
    const __m512 v_amax = _mm512_set1_ps(0.999f), v_thr = _mm512_set1_ps(1.0f / 255.0f), v_tmin = _mm512_set1_ps(1e-4f);
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const int64_t start = pos;
    float T[NPX] __attribute__((aligned(64)));
    float hx[TILE][16] __attribute__((aligned(64)));
    __m512 U[FOLD_BOX];
    for (int r = 0; r < FOLD_BOX; r++) U[r] = v_zero;
    for (int64_t q = job; q < n_tiles; q += n_jobs) {
        const int64_t t = tile_order[q];
        struct tile tl;
        tile_begin(&tl, T, hx, t, tiles_x, width, height, valid_px, fold, ty0, tx0, tx1, tlx);
        const int64_t i0 = tl.i0, j0 = tl.j0, i1 = tl.i1, j1 = tl.j1, npx = tl.npx, qy0 = tl.qy0, qx0 = tl.qx0;
        uint32_t *done = tl.done, *valid_rows = tl.valid_rows;
        const __m512 xs = _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(iota, _mm512_set1_epi32((int)j0))), v_half);
        tile_start[t] = pos;
        int64_t ndone = 0;
        const int64_t k_end = offsets[t + 1];
        for (int64_t k = offsets[t]; k < k_end; k++) {
            if (ndone == npx) break; /* every pixel of the tile is saturated */
            prefetch_splat(ranks, gauss, order, k, k_end);
            struct splat s;
            splat_load(&s, gauss, order, ranks[k], i0, i1);
            const __m512 dx = _mm512_sub_ps(_mm512_set1_ps(s.mx), xs);
            const __m512 adxdx = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(s.ca), dx), dx);
            const __m512 bdx = _mm512_mul_ps(_mm512_set1_ps(s.cb), dx);
            const __m512 v_skip = _mm512_set1_ps(s.skip), v_op = _mm512_set1_ps(s.op);
            int64_t u_lo = FOLD_BOX, u_hi = -1;
            for (int64_t i = s.ia; i < s.ib; i++) {
                float dy;
                int64_t ja, jb;
                if (!row_span(&s, i, j0, j1, &dy, &ja, &jb)) continue;
                const int64_t row = i - i0;
                __mmask16 m = (__mmask16)(lane_range(ja - j0, jb - j0) & ~done[row]);
                if (!m) continue;
                const __m512 sigma = _mm512_add_ps(
                    _mm512_mul_ps(v_half, _mm512_add_ps(adxdx, _mm512_set1_ps(s.cc * dy * dy))),
                    _mm512_mul_ps(bdx, _mm512_set1_ps(dy)));
                /* the scalar kernel skips sigma < 0 or sigma > skip (unordered compares keep NaN like it does) */
                m = _mm512_mask_cmp_ps_mask(m, sigma, v_zero, _CMP_NLT_UQ);
                m = _mm512_mask_cmp_ps_mask(m, sigma, v_skip, _CMP_NGT_UQ);
                if (!m) continue;
                const __m512 alpha = _mm512_min_ps(_mm512_mul_ps(v_op, exp_neg(_mm512_sub_ps(v_zero, sigma))), v_amax);
                m = _mm512_mask_cmp_ps_mask(m, alpha, v_thr, _CMP_NLT_UQ);
                if (!m) continue;
                const __m512 Tv = _mm512_load_ps(T + row * TILE);
                const __m512 Tn = _mm512_mul_ps(Tv, _mm512_sub_ps(v_one, alpha));
                const __mmask16 sat = _mm512_mask_cmp_ps_mask(m, Tn, v_tmin, _CMP_LE_OQ);
                done[row] |= sat;
                ndone += __builtin_popcount(sat);
                m &= (__mmask16)~sat;
                _mm512_mask_store_ps(T + row * TILE, m, Tn);
                m &= (__mmask16)valid_rows[row];
                if (!m) continue;
                const __m512 w = _mm512_maskz_mul_ps(m, alpha, Tv);
                if (!fold) {
                    pos = append16(s_pix, s_w, s_g, pos, end, m, i * width + j0, w, s.g);
                    continue;
                }
                const float ly = tly[i];
                const int64_t r0 = ty0[i] - qy0, r1 = ty1[i] - qy0;
                U[r0] = _mm512_add_ps(U[r0], _mm512_mul_ps(w, _mm512_set1_ps(1.0f - ly)));
                U[r1] = _mm512_add_ps(U[r1], _mm512_mul_ps(w, _mm512_set1_ps(ly)));
                u_lo = imin(u_lo, r0);
                u_hi = imax(u_hi, r1);
            }
            for (int64_t rr = u_lo; rr <= u_hi; rr++) {
                __m512 cells = v_zero;
                for (int l = 0; l < TILE; l++)
                    cells = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_set1_epi32(l), U[rr]), _mm512_load_ps(hx[l]), cells);
                U[rr] = v_zero;
                const __mmask16 nz = _mm512_cmp_ps_mask(cells, v_zero, _CMP_NEQ_UQ);
                if (nz) pos = append16(s_pix, s_w, s_g, pos, end, nz, (qy0 + rr) * w_lo + qx0, cells, s.g);
            }
        }
        tile_len[t] = pos - tile_start[t];
    }
    return pos - start;
}

#else /* AVX2 + FMA: 8 lanes, a tile row is two halves */

/* The lanes set in an 8-bit mask as a vector mask. */
static inline __m256 bits_to_mask(uint32_t bits)
{
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), sel), sel));
}

static inline uint32_t cmp_bits(__m256 a, __m256 b, uint32_t m, int pred_nlt_ngt_le_neq)
{
    __m256 c;
    switch (pred_nlt_ngt_le_neq) {
    case 0: c = _mm256_cmp_ps(a, b, _CMP_NLT_UQ); break;
    case 1: c = _mm256_cmp_ps(a, b, _CMP_NGT_UQ); break;
    case 2: c = _mm256_cmp_ps(a, b, _CMP_LE_OQ); break;
    default: c = _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); break;
    }
    return m & (uint32_t)_mm256_movemask_ps(c);
}

/* compress-store emulation: for each 8-bit mask, the indices of its set lanes first. */
static int32_t compress_perm[256][8];
static int compress_ready = 0;

static void compress_init(void)
{
    if (__atomic_load_n(&compress_ready, __ATOMIC_ACQUIRE)) return;
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int l = 0; l < 8; l++)
            if ((m >> l) & 1) compress_perm[m][k++] = l;
        for (; k < 8; k++) compress_perm[m][k] = 0;
    }
    __atomic_store_n(&compress_ready, 1, __ATOMIC_RELEASE); /* every thread writes the same table */
}

/* Append the lanes of (pix0 + l, v[l]) set in the 16-bit m at pos, or one by one near the end of the slice. */
static inline int64_t append16(int32_t *s_pix, float *s_w, int32_t *s_g, int64_t pos, int64_t end, uint32_t m,
                               int64_t pix0, const __m256 v[2], int32_t g)
{
    if (pos + 16 <= end) {
        const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (int h = 0; h < 2; h++) {
            const uint32_t b = (m >> (8 * h)) & 0xff;
            if (!b) continue;
            const __m256i perm = _mm256_loadu_si256((const __m256i *)compress_perm[b]);
            const __m256i pix = _mm256_add_epi32(iota, _mm256_set1_epi32((int)(pix0 + 8 * h)));
            _mm256_storeu_si256((__m256i *)(s_pix + pos), _mm256_permutevar8x32_epi32(pix, perm));
            _mm256_storeu_ps(s_w + pos, _mm256_permutevar8x32_ps(v[h], perm));
            _mm256_storeu_si256((__m256i *)(s_g + pos), _mm256_set1_epi32(g));
            pos += __builtin_popcount(b);
        }
        return pos;
    }
    float v16[16];
    _mm256_storeu_ps(v16, v[0]);
    _mm256_storeu_ps(v16 + 8, v[1]);
    return append_tail(s_pix, s_w, s_g, pos, end, m, pix0, v16, g);
}

int64_t gw_store_job(STORE_JOB_ARGS)
{
    const __m256 v_one = _mm256_set1_ps(1.0f), v_half = _mm256_set1_ps(0.5f), v_zero = _mm256_setzero_ps();
    const __m256 v_amax = _mm256_set1_ps(0.999f), v_thr = _mm256_set1_ps(1.0f / 255.0f), v_tmin = _mm256_set1_ps(1e-4f);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int64_t start = pos;
    float T[NPX] __attribute__((aligned(32)));
    float hx[TILE][16] __attribute__((aligned(32)));
    __m256 U[FOLD_BOX][2];
    compress_init();
    for (int r = 0; r < FOLD_BOX; r++) U[r][0] = U[r][1] = v_zero;
    for (int64_t q = job; q < n_tiles; q += n_jobs) {
        const int64_t t = tile_order[q];
        struct tile tl;
        tile_begin(&tl, T, hx, t, tiles_x, width, height, valid_px, fold, ty0, tx0, tx1, tlx);
        const int64_t i0 = tl.i0, j0 = tl.j0, i1 = tl.i1, j1 = tl.j1, npx = tl.npx, qy0 = tl.qy0, qx0 = tl.qx0;
        uint32_t *done = tl.done, *valid_rows = tl.valid_rows;
        __m256 xs[2];
        for (int h = 0; h < 2; h++)
            xs[h] = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(iota, _mm256_set1_epi32((int)(j0 + 8 * h)))), v_half);
        tile_start[t] = pos;
        int64_t ndone = 0;
        const int64_t k_end = offsets[t + 1];
        for (int64_t k = offsets[t]; k < k_end; k++) {
            if (ndone == npx) break;
            prefetch_splat(ranks, gauss, order, k, k_end);
            struct splat s;
            splat_load(&s, gauss, order, ranks[k], i0, i1);
            __m256 adxdx[2], bdx[2];
            for (int h = 0; h < 2; h++) {
                const __m256 dx = _mm256_sub_ps(_mm256_set1_ps(s.mx), xs[h]);
                adxdx[h] = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(s.ca), dx), dx);
                bdx[h] = _mm256_mul_ps(_mm256_set1_ps(s.cb), dx);
            }
            const __m256 v_skip = _mm256_set1_ps(s.skip), v_op = _mm256_set1_ps(s.op);
            int64_t u_lo = FOLD_BOX, u_hi = -1;
            for (int64_t i = s.ia; i < s.ib; i++) {
                float dy;
                int64_t ja, jb;
                if (!row_span(&s, i, j0, j1, &dy, &ja, &jb)) continue;
                const int64_t row = i - i0;
                const uint32_t m16 = lane_range(ja - j0, jb - j0) & ~done[row];
                if (!m16) continue;
                const float ccdydy = s.cc * dy * dy;
                __m256 w[2] = {v_zero, v_zero};
                uint32_t m = 0;
                for (int h = 0; h < 2; h++) {
                    uint32_t b = (m16 >> (8 * h)) & 0xff;
                    if (!b) continue;
                    const __m256 sigma = _mm256_add_ps(
                        _mm256_mul_ps(v_half, _mm256_add_ps(adxdx[h], _mm256_set1_ps(ccdydy))),
                        _mm256_mul_ps(bdx[h], _mm256_set1_ps(dy)));
                    b = cmp_bits(sigma, v_skip, cmp_bits(sigma, v_zero, b, 0), 1);
                    if (!b) continue;
                    const __m256 alpha = _mm256_min_ps(_mm256_mul_ps(v_op, exp_neg(_mm256_sub_ps(v_zero, sigma))), v_amax);
                    b = cmp_bits(alpha, v_thr, b, 0);
                    if (!b) continue;
                    float *Trow = T + row * TILE + 8 * h;
                    const __m256 Tv = _mm256_load_ps(Trow);
                    const __m256 Tn = _mm256_mul_ps(Tv, _mm256_sub_ps(v_one, alpha));
                    const uint32_t sat = cmp_bits(Tn, v_tmin, b, 2);
                    done[row] |= sat << (8 * h);
                    ndone += __builtin_popcount(sat);
                    b &= ~sat;
                    _mm256_store_ps(Trow, _mm256_blendv_ps(Tv, Tn, bits_to_mask(b)));
                    b &= valid_rows[row] >> (8 * h);
                    w[h] = _mm256_and_ps(_mm256_mul_ps(alpha, Tv), bits_to_mask(b));
                    m |= b << (8 * h);
                }
                if (!m) continue;
                if (!fold) {
                    pos = append16(s_pix, s_w, s_g, pos, end, m, i * width + j0, w, s.g);
                    continue;
                }
                const float ly = tly[i];
                const int64_t r0 = ty0[i] - qy0, r1 = ty1[i] - qy0;
                for (int h = 0; h < 2; h++) {
                    U[r0][h] = _mm256_add_ps(U[r0][h], _mm256_mul_ps(w[h], _mm256_set1_ps(1.0f - ly)));
                    U[r1][h] = _mm256_add_ps(U[r1][h], _mm256_mul_ps(w[h], _mm256_set1_ps(ly)));
                }
                u_lo = imin(u_lo, r0);
                u_hi = imax(u_hi, r1);
            }
            for (int64_t rr = u_lo; rr <= u_hi; rr++) {
                __m256 cells[2] = {v_zero, v_zero};
                for (int l = 0; l < TILE; l++) {
                    const __m256 u = _mm256_permutevar8x32_ps(U[rr][l >> 3], _mm256_set1_epi32(l & 7));
                    cells[0] = _mm256_fmadd_ps(u, _mm256_load_ps(hx[l]), cells[0]);
                    cells[1] = _mm256_fmadd_ps(u, _mm256_load_ps(hx[l] + 8), cells[1]);
                }
                U[rr][0] = U[rr][1] = v_zero;
                const uint32_t nz = cmp_bits(cells[0], v_zero, 0xff, 3) | (cmp_bits(cells[1], v_zero, 0xff, 3) << 8);
                if (nz) pos = append16(s_pix, s_w, s_g, pos, end, nz, (qy0 + rr) * w_lo + qx0, cells, s.g);
            }
        }
        tile_len[t] = pos - tile_start[t];
    }
    return pos - start;
}

#endif

/* One run (entries m..e of one Gaussian) times the features, columns j .. j + VL CB, added to out: each column's
 * sum is formed in registers (FMA, entries in store order) and added to out once. */
#define RUN_BLOCK(CB)                                                                                                 \
    do {                                                                                                              \
        vf acc[CB];                                                                                                   \
        for (int b = 0; b < CB; b++) acc[b] = V_ZERO;                                                                \
        for (int64_t k = m; k < e; k++) {                                                                             \
            const vf w = V_SET1(weight[k]);                                                                           \
            const float *f = feats + (int64_t)pixel[k] * D + j;                                                       \
            for (int b = 0; b < CB; b++) acc[b] = V_FMA(w, V_LOADU(f + VL * b), acc[b]);                              \
        }                                                                                                             \
        for (int b = 0; b < CB; b++) V_STOREU(out + j + VL * b, V_ADD(V_LOADU(out + j + VL * b), acc[b]));            \
        j += VL * CB;                                                                                                 \
    } while (0)

/* One thread's share of `accumulate_store`: numer[g, d0:d1] += sum w F[pixel] over every run, tiles in seg_order;
 * denom[g] += sum w (float64) for the Gaussians with g % nchunks == c. Every column's sum is the same sequence of
 * FMAs whatever the vector width (the last < VL columns: scalar fmaf), so both builds give the same bits. */
void gw_product(float *numer, double *denom, int64_t D, int64_t d0, int64_t d1, const int64_t *seg_order,
                int64_t nseg, const int64_t *seg_start, const int64_t *seg_len, const int32_t *pixel,
                const int32_t *gaussian, const float *weight, const float *feats, int64_t c, int64_t nchunks)
{
    for (int64_t si = 0; si < nseg; si++) {
        const int64_t s = seg_order[si];
        int64_t m = seg_start[s];
        const int64_t M = m + seg_len[s];
        while (m < M) {
            const int32_t g = gaussian[m];
            int64_t e = m + 1;
            while (e < M && gaussian[e] == g) e++;
            if (m + RUN_AHEAD < M) {
                const char *p = (const char *)(numer + (int64_t)gaussian[m + RUN_AHEAD] * D + d0);
                for (int64_t k = 0; k < (d1 - d0) * 4; k += 64) _mm_prefetch(p + k, _MM_HINT_T0);
            }
            if (g % nchunks == c) {
                double sw = 0;
                for (int64_t k = m; k < e; k++) sw += weight[k];
                denom[g] += sw;
            }
            float *out = numer + (int64_t)g * D;
            int64_t j = d0;
            while (d1 - j >= VL * MAX_CB) RUN_BLOCK(MAX_CB);
            if (d1 - j >= VL * 8) RUN_BLOCK(8);
            if (d1 - j >= VL * 4) RUN_BLOCK(4);
            if (d1 - j >= VL * 2) RUN_BLOCK(2);
            if (d1 - j >= VL) RUN_BLOCK(1);
            for (; j < d1; j++) {
                float a = 0;
                for (int64_t k = m; k < e; k++) a = fmaf(weight[k], feats[(int64_t)pixel[k] * D + j], a);
                out[j] += a;
            }
            m = e;
        }
    }
}

#else
int gw_isa(void) { return 0; }
#endif
