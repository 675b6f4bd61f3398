// The product of a few rows of activations with a weight held as f32 or bf16 (see ckernels.h),
// for MoE experts, which see from one to a few dozen tokens each: y = scale · x · Wᵀ (+ y).
//
// Every output element is one chain of fused multiply-adds over p = 0, 1, …, k − 1 in order,
// starting from +0, then scale times the sum, plus y when accumulating. That one order makes the
// f32 and bf16 weights give the same bits (widening a bf16 is exact), the paths give the same
// bits, and so does any split of the rows or columns between calls or threads.
//
// The AVX2 path keeps that order while vectorising across output columns: it copies 16 rows of W
// over a block of KC columns into a panel where the 16 weights of one p lie next to each other
// (widened to f32 when bf16, zero past the last row of W), so a 16-column step of the sum is two
// vector loads and each x[i, p] one broadcast. A micro-kernel runs up to six rows of x against
// the panel in up to 12 ymm accumulators; the panel (16 KiB) stays in L1 while every group of
// rows reads it. Panels go in order of W's rows, and within a panel's 16 rows in order of k, so
// the sums are carried from one k-block to the next in a small tile (MC × 16 floats) and written
// to y, scaled, after the last. Each weight is read from memory and widened once per MC rows of
// x; the next panel's weights are fetched (software prefetch) while this one's micro-kernels run.
// Both buffers are on the stack (25 KiB): no allocation, and any number of threads may call at
// once. CPUs with AVX-512 take this path too: a wider one could not be measured here.
//
// The scalar path (always built, and the reference for the others) is the same chain written as
// fmaf in three loops.
#include "ckernels.h"
#include <math.h>

// Rows of x per micro-kernel (at most), columns per panel, columns of W per k-block and rows of
// x per row block (whose weights are packed once).
enum { MR = 6, NR = 16, KC = 256, MC = 144 };

static inline float bf16_value(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

static inline float weight(const void *w, int w_is_bf16, long index) {
    return w_is_bf16 ? bf16_value(((const uint16_t *)w)[index]) : ((const float *)w)[index];
}

static inline void store(float *y, float sum, int accumulate, float scale) {
    *y = accumulate ? *y + scale * sum : scale * sum;
}

static void gemm_scalar(long m, long n, long k, const float *x, long ldx, const void *w, int w_is_bf16, long ldw,
                        float *y, long ldy, int accumulate, float scale) {
    for (long i = 0; i < m; i++)
        for (long j = 0; j < n; j++) {
            float sum = 0;
            for (long p = 0; p < k; p++) sum = fmaf(x[i * ldx + p], weight(w, w_is_bf16, j * ldw + p), sum);
            store(y + i * ldy + j, sum, accumulate, scale);
        }
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1

// panel[p * 16 + c] = W[row c, column p] as f32 for p < kc and c < 16, where row c starts at
// `rows` + c * ldw elements, for 16 whole rows. Four rows and eight columns at a time, in 128-bit
// registers: the unpacks of a transpose, 0.5 shuffles per value; a bf16 value becomes its f32
// when unpacked above a zero 16-bit half, the last step of its transpose. On Zen 1, which splits
// 256-bit shuffles in two, this packs a bf16 value in 0.18 ns against 0.24 for 8 × 8 transposes
// in 256-bit registers (0.19 and 0.22 for f32).
// It also asks for the cache lines of the next panel's weights, `next_cols` rows from `next` over
// its first `next_kc` columns (none when `next` is null): they arrive from memory while the
// micro-kernels run on this panel, and the next pack finds them in cache.
static void pack16(const void *rows, int w_is_bf16, long ldw, long kc, float *panel, const void *next, long next_cols,
                   long next_kc) {
    long whole = kc / 8 * 8, size = w_is_bf16 ? 2 : 4;
    for (int h = 0; h < NR; h += 4) {
        for (long p = 0; p < whole; p += 8) {
            if (next && p < next_kc && (p * size) % 64 == 0)
                for (int q = h; q < h + 4 && q < next_cols; q++)
                    _mm_prefetch((const char *)next + (q * ldw + p) * size, _MM_HINT_T0);
            __m128 out[8];  // rows h..h+3 at columns p..p+7
            if (w_is_bf16) {
                const uint16_t *r = (const uint16_t *)rows + h * ldw + p;
                __m128i r0 = _mm_loadu_si128((const __m128i *)r), r1 = _mm_loadu_si128((const __m128i *)(r + ldw));
                __m128i r2 = _mm_loadu_si128((const __m128i *)(r + 2 * ldw));
                __m128i r3 = _mm_loadu_si128((const __m128i *)(r + 3 * ldw));
                // Pairs of rows, then the four rows at two columns per register.
                __m128i a = _mm_unpacklo_epi16(r0, r1), b = _mm_unpackhi_epi16(r0, r1);
                __m128i c = _mm_unpacklo_epi16(r2, r3), d = _mm_unpackhi_epi16(r2, r3);
                __m128i e[4] = {_mm_unpacklo_epi32(a, c), _mm_unpackhi_epi32(a, c), _mm_unpacklo_epi32(b, d),
                                _mm_unpackhi_epi32(b, d)};
                const __m128i zero = _mm_setzero_si128();
                for (int q = 0; q < 4; q++) {
                    out[2 * q] = _mm_castsi128_ps(_mm_unpacklo_epi16(zero, e[q]));
                    out[2 * q + 1] = _mm_castsi128_ps(_mm_unpackhi_epi16(zero, e[q]));
                }
            } else {
                const float *r = (const float *)rows + h * ldw + p;
                for (int half = 0; half < 8; half += 4) {
                    __m128 r0 = _mm_loadu_ps(r + half), r1 = _mm_loadu_ps(r + ldw + half);
                    __m128 r2 = _mm_loadu_ps(r + 2 * ldw + half), r3 = _mm_loadu_ps(r + 3 * ldw + half);
                    __m128 t0 = _mm_unpacklo_ps(r0, r1), t1 = _mm_unpackhi_ps(r0, r1);
                    __m128 t2 = _mm_unpacklo_ps(r2, r3), t3 = _mm_unpackhi_ps(r2, r3);
                    out[half] = _mm_movelh_ps(t0, t2), out[half + 1] = _mm_movehl_ps(t2, t0);
                    out[half + 2] = _mm_movelh_ps(t1, t3), out[half + 3] = _mm_movehl_ps(t3, t1);
                }
            }
            for (int q = 0; q < 8; q++) _mm_store_ps(panel + (p + q) * NR + h, out[q]);
        }
        for (long p = whole; p < kc; p++)
            for (int c = h; c < h + 4; c++) panel[p * NR + c] = weight(rows, w_is_bf16, c * ldw + p);
    }
}

// The same panel for the last `cols` < 16 rows of W, zero in the columns past them.
static void pack_edge(const void *rows, int w_is_bf16, long ldw, long cols, long kc, float *panel) {
    for (long p = 0; p < kc; p++)
        for (int c = 0; c < NR; c++) panel[p * NR + c] = c < cols ? weight(rows, w_is_bf16, c * ldw + p) : 0;
}

// Rows [0, rows) of x (from its k-block's first column) against a panel: the running sums
// start from zero on the first k-block and from `tile` (16 per row) after it; they go back to
// the tile, or, after the last k-block, to the first `cols` columns of y as scale · sum (+ y).
// Inlined with a constant `rows`; the sums are named variables, not an array, so that every
// compiler keeps them in registers.
#define EACH_ROW(DO) DO(0) DO(1) DO(2) DO(3) DO(4) DO(5)
__attribute__((always_inline)) static inline void micro(int rows, long kc, const float *x, long ldx,
                                                        const float *panel, float *tile, int first, int last,
                                                        float *y, long ldy, long cols, int accumulate, float scale) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx, *x4 = x + 4 * ldx, *x5 = x + 5 * ldx;
#define START(r)                                                                          \
    if (rows > r) {                                                                       \
        c##r##0 = first ? _mm256_setzero_ps() : _mm256_loadu_ps(tile + r * NR);           \
        c##r##1 = first ? _mm256_setzero_ps() : _mm256_loadu_ps(tile + r * NR + 8);       \
    }
    EACH_ROW(START)
    for (long p = 0; p < kc; p++) {
        __m256 b0 = _mm256_load_ps(panel + p * NR), b1 = _mm256_load_ps(panel + p * NR + 8);
#define STEP(r)                                                                           \
        if (rows > r) {                                                                   \
            __m256 a = _mm256_broadcast_ss(x##r + p);                                     \
            c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);                                    \
            c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);                                    \
        }
        EACH_ROW(STEP)
    }
    const __m256 s = _mm256_set1_ps(scale);
#define FINISH(r)                                                                         \
    if (rows > r) {                                                                       \
        if (!last) {                                                                      \
            _mm256_storeu_ps(tile + r * NR, c##r##0);                                     \
            _mm256_storeu_ps(tile + r * NR + 8, c##r##1);                                 \
        } else {                                                                          \
            float *out = y + r * ldy;                                                     \
            __m256 v0 = _mm256_mul_ps(s, c##r##0), v1 = _mm256_mul_ps(s, c##r##1);        \
            if (cols == NR) {                                                             \
                if (accumulate) {                                                         \
                    v0 = _mm256_add_ps(_mm256_loadu_ps(out), v0);                         \
                    v1 = _mm256_add_ps(_mm256_loadu_ps(out + 8), v1);                     \
                }                                                                         \
                _mm256_storeu_ps(out, v0);                                                \
                _mm256_storeu_ps(out + 8, v1);                                            \
            } else {                                                                      \
                float v[NR];                                                              \
                _mm256_storeu_ps(v, v0);                                                  \
                _mm256_storeu_ps(v + 8, v1);                                              \
                for (long j = 0; j < cols; j++) out[j] = accumulate ? out[j] + v[j] : v[j]; \
            }                                                                             \
        }                                                                                 \
    }
    EACH_ROW(FINISH)
#undef START
#undef STEP
#undef FINISH
}

static void gemm_avx2(long m, long n, long k, const float *x, long ldx, const void *w, int w_is_bf16, long ldw,
                      float *y, long ldy, int accumulate, float scale) {
    _Alignas(64) float panel[KC * NR];
    _Alignas(64) float tile[MC * NR];
    long blocks = k > 0 ? (k + KC - 1) / KC : 1;  // k = 0 still writes scale · 0 (+ y)
    long size = w_is_bf16 ? 2 : 4;
    for (long i0 = 0; i0 < m; i0 += MC) {
        // The rows in micro-kernels of at most MR rows, as even as they go (8 rows as 4 + 4, not
        // 6 + 2: a micro-kernel of fewer rows has fewer independent sums to hide the latency of
        // an FMA behind).
        long mc = m - i0 < MC ? m - i0 : MC, tiles = (mc + MR - 1) / MR, base = mc / tiles, extra = mc % tiles;
        for (long j0 = 0; j0 < n; j0 += NR) {
            long cols = n - j0 < NR ? n - j0 : NR;
            for (long b = 0; b < blocks; b++) {
                long p0 = b * KC, kc = k - p0 < KC ? k - p0 : KC;
                // The panel after this one: the next k-block, else the first of the next 16 rows of
                // W, else the first panel again for the next block of rows of x.
                long nj = b + 1 < blocks ? j0 : j0 + NR < n ? j0 + NR : 0, nb = b + 1 < blocks ? b + 1 : 0;
                int more = b + 1 < blocks || j0 + NR < n || i0 + MC < m;
                long next_cols = n - nj < NR ? n - nj : NR, next_kc = k - nb * KC < KC ? k - nb * KC : KC;
                const void *rows = (const char *)w + (j0 * ldw + p0) * size;
                const void *next = more ? (const char *)w + (nj * ldw + nb * KC) * size : 0;
                if (cols == NR) pack16(rows, w_is_bf16, ldw, kc, panel, next, next_cols, next_kc);
                else pack_edge(rows, w_is_bf16, ldw, cols, kc, panel);
                int first = b == 0, last = b == blocks - 1;
                for (long t = 0, i = 0; t < tiles; i += base + (t < extra), t++) {
                    const float *xi = x + (i0 + i) * ldx + p0;
                    float *yi = y + (i0 + i) * ldy + j0, *ti = tile + i * NR;
                    switch (base + (t < extra)) {
                    case 6: micro(6, kc, xi, ldx, panel, ti, first, last, yi, ldy, cols, accumulate, scale); break;
                    case 5: micro(5, kc, xi, ldx, panel, ti, first, last, yi, ldy, cols, accumulate, scale); break;
                    case 4: micro(4, kc, xi, ldx, panel, ti, first, last, yi, ldy, cols, accumulate, scale); break;
                    case 3: micro(3, kc, xi, ldx, panel, ti, first, last, yi, ldy, cols, accumulate, scale); break;
                    case 2: micro(2, kc, xi, ldx, panel, ti, first, last, yi, ldy, cols, accumulate, scale); break;
                    default: micro(1, kc, xi, ldx, panel, ti, first, last, yi, ldy, cols, accumulate, scale);
                    }
                }
            }
        }
    }
}
#endif

int kd_gemm_nt_widest(void) {
#if HAVE_AVX2
    return 256;
#else
    return 0;
#endif
}

void kd_gemm_nt_width(int width, long m, long n, long k, const float *x, long ldx, const void *w, int w_is_bf16,
                      long ldw, float *y, long ldy, int accumulate, float scale) {
    if (m <= 0 || n <= 0) return;
#if HAVE_AVX2
    if (width >= 256) return gemm_avx2(m, n, k, x, ldx, w, w_is_bf16, ldw, y, ldy, accumulate, scale);
#endif
    gemm_scalar(m, n, k, x, ldx, w, w_is_bf16, ldw, y, ldy, accumulate, scale);
}

void kd_gemm_nt(long m, long n, long k, const float *x, long ldx, const void *w, int w_is_bf16, long ldw, float *y,
                long ldy, int accumulate, float scale) {
    kd_gemm_nt_width(256, m, n, k, x, ldx, w, w_is_bf16, ldw, y, ldy, accumulate, scale);
}
