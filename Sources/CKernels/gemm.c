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
// vector loads and each x[i, p] one broadcast. A micro-kernel runs six rows of x against the
// panel in 12 ymm accumulators. The panel (16 KiB) stays in L1 while every block of six rows
// reads it, and each weight is read from memory and widened once per MC rows of x. The sums of a
// panel's rows are carried from one k-block to the next in a small tile (MC × 16 floats), and
// written to y, scaled, after the last. Both buffers are on the stack: no allocation, and any
// number of threads may call at once.
//
// The scalar path (always built, and the reference for the others) is the same chain written as
// fmaf in three loops.
#include "ckernels.h"
#include <math.h>

// Rows of x per micro-kernel, columns per panel, columns of W per k-block and rows of x per
// row block (a multiple of MR).
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

// In-lane transpose of four vectors: afterwards lane q of each half of v[r] holds what lane r of
// that half of v[q] held.
static inline void transpose4(__m256 v[4]) {
    __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    v[0] = _mm256_shuffle_ps(t0, t2, 0x44), v[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    v[2] = _mm256_shuffle_ps(t1, t3, 0x44), v[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}

// panel[p * 16 + c] = W[row c, column p] for p < kc and c < 16 (as f32), where row c starts at
// `rows` + c * ldw (elements), for 16 whole rows. Eight rows and eight columns at a time: vector
// r of a half holds columns p..p+3 of row r in its low half and of row r + 4 in its high half, so
// a 4 × 4 transpose in each half leaves column p + q of rows 0..7 in vector q.
static void pack16(const void *rows, int w_is_bf16, long ldw, long kc, float *panel) {
    long whole = kc / 8 * 8;
    for (int h = 0; h < NR; h += 8) {
        for (long p = 0; p < whole; p += 8) {
            __m256 lo[4], hi[4];  // columns p..p+3, p+4..p+7
            if (w_is_bf16) {
                const uint16_t *r = (const uint16_t *)rows + h * ldw + p;
                const __m256i zero = _mm256_setzero_si256();
                for (int q = 0; q < 4; q++) {
                    __m256i v = _mm256_inserti128_si256(
                        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(r + q * ldw))),
                        _mm_loadu_si128((const __m128i *)(r + (q + 4) * ldw)), 1);
                    // A bf16 in the high 16 bits of a zero 32-bit lane is its f32.
                    lo[q] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
                    hi[q] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
                }
            } else {
                const float *r = (const float *)rows + h * ldw + p;
                for (int q = 0; q < 4; q++) {
                    lo[q] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r + q * ldw)),
                                                 _mm_loadu_ps(r + (q + 4) * ldw), 1);
                    hi[q] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r + q * ldw + 4)),
                                                 _mm_loadu_ps(r + (q + 4) * ldw + 4), 1);
                }
            }
            transpose4(lo);
            transpose4(hi);
            for (int q = 0; q < 4; q++) {
                _mm256_store_ps(panel + (p + q) * NR + h, lo[q]);
                _mm256_store_ps(panel + (p + 4 + q) * NR + h, hi[q]);
            }
        }
        for (long p = whole; p < kc; p++)
            for (int c = h; c < h + 8; c++) panel[p * NR + c] = weight(rows, w_is_bf16, c * ldw + p);
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
    size_t size = w_is_bf16 ? 2 : 4;
    for (long i0 = 0; i0 < m; i0 += MC) {
        long mc = m - i0 < MC ? m - i0 : MC;
        for (long j0 = 0; j0 < n; j0 += NR) {
            long cols = n - j0 < NR ? n - j0 : NR;
            for (long b = 0; b < blocks; b++) {
                long p0 = b * KC, kc = k - p0 < KC ? k - p0 : KC;
                const void *rows = (const char *)w + (j0 * ldw + p0) * size;
                if (cols == NR) pack16(rows, w_is_bf16, ldw, kc, panel);
                else pack_edge(rows, w_is_bf16, ldw, cols, kc, panel);
                int first = b == 0, last = b == blocks - 1;
                for (long i = 0; i < mc; i += MR) {
                    const float *xi = x + (i0 + i) * ldx + p0;
                    float *yi = y + (i0 + i) * ldy + j0, *ti = tile + i * NR;
                    switch (mc - i < MR ? mc - i : MR) {
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
