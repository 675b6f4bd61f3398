// Decoding's matrix-vector product over a bf16 weight (see ckernels.h).
//
// A bf16 value is the top half of an f32, so 16 bf16 weights loaded as eight 32-bit lanes give
// the even-numbered ones by a shift and the odd-numbered ones by a mask: two instructions widen
// 16 values. The dot product therefore runs over blocks of 16 columns in "pair order": lane j
// holds column 2j in one vector and 2j+1 in the other, and x is rearranged to match once per call
// (kd_pair_order). Per row: 32 columns a step into four accumulators (even and odd of two
// blocks), a last whole block of 16 into the first two, then (a0 + a1) + (a2 + a3), its lanes
// added pairwise, and the last cols % 16 products added one by one. Four rows share each load of
// x; rows are read 1 KiB ahead of use. Without AVX2 the same order runs in scalar code.
#include "ckernels.h"

void kd_pair_order(const float *x, long cols, float *xp) {
    for (long b = 0; b + 16 <= cols; b += 16)
        for (int j = 0; j < 8; j++) {
            xp[b + j] = x[b + 2 * j];
            xp[b + 8 + j] = x[b + 2 * j + 1];
        }
}

static inline float bf16_value(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

// Columns 0..15 from p as (even, odd) vectors in pair order.
static inline void block_bf16(const uint16_t *p, __m256 *even, __m256 *odd) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
}
static inline float one_bf16(const uint16_t *p) { return bf16_value(*p); }

static inline float lanes(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

#define AHEAD 1024
#define PREFETCH(p) _mm_prefetch((const char *)(p) + AHEAD, _MM_HINT_T0)

#define GEMV(NAME, T, BLOCK, ONE)                                                               \
    void NAME(const T *w, long first, long end, long cols, const float *x, const float *xp,    \
              float *y, int accumulate, float scale) {                                          \
        long whole = cols / 16 * 16;                                                            \
        long o = first;                                                                         \
        for (; o + 4 <= end; o += 4) {                                                          \
            const T *r[4] = {w + o * cols, w + (o + 1) * cols, w + (o + 2) * cols, w + (o + 3) * cols}; \
            __m256 a[4][4];                                                                     \
            for (int k = 0; k < 4; k++)                                                         \
                for (int q = 0; q < 4; q++) a[k][q] = _mm256_setzero_ps();                      \
            long i = 0;                                                                         \
            for (; i + 32 <= whole; i += 32) {                                                  \
                __m256 x0 = _mm256_loadu_ps(xp + i), x1 = _mm256_loadu_ps(xp + i + 8);          \
                __m256 x2 = _mm256_loadu_ps(xp + i + 16), x3 = _mm256_loadu_ps(xp + i + 24);    \
                for (int k = 0; k < 4; k++) {                                                   \
                    __m256 e0, o0, e1, o1;                                                      \
                    PREFETCH(r[k] + i);                                                         \
                    BLOCK(r[k] + i, &e0, &o0);                                                  \
                    BLOCK(r[k] + i + 16, &e1, &o1);                                             \
                    a[k][0] = _mm256_fmadd_ps(e0, x0, a[k][0]);                                 \
                    a[k][1] = _mm256_fmadd_ps(o0, x1, a[k][1]);                                 \
                    a[k][2] = _mm256_fmadd_ps(e1, x2, a[k][2]);                                 \
                    a[k][3] = _mm256_fmadd_ps(o1, x3, a[k][3]);                                 \
                }                                                                               \
            }                                                                                   \
            if (i < whole) {                                                                    \
                __m256 x0 = _mm256_loadu_ps(xp + i), x1 = _mm256_loadu_ps(xp + i + 8);          \
                for (int k = 0; k < 4; k++) {                                                   \
                    __m256 e0, o0;                                                              \
                    BLOCK(r[k] + i, &e0, &o0);                                                  \
                    a[k][0] = _mm256_fmadd_ps(e0, x0, a[k][0]);                                 \
                    a[k][1] = _mm256_fmadd_ps(o0, x1, a[k][1]);                                 \
                }                                                                               \
            }                                                                                   \
            for (int k = 0; k < 4; k++) {                                                       \
                float sum = lanes(_mm256_add_ps(_mm256_add_ps(a[k][0], a[k][1]),                \
                                                _mm256_add_ps(a[k][2], a[k][3])));              \
                for (long j = whole; j < cols; j++) sum += ONE(r[k] + j) * x[j];                \
                y[o + k] = accumulate ? y[o + k] + scale * sum : scale * sum;                   \
            }                                                                                   \
        }                                                                                       \
        for (; o < end; o++) {                                                                  \
            const T *row = w + o * cols;                                                        \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e, d;                   \
            long i = 0;                                                                         \
            for (; i + 32 <= whole; i += 32) {                                                  \
                BLOCK(row + i, &e, &d);                                                         \
                a0 = _mm256_fmadd_ps(e, _mm256_loadu_ps(xp + i), a0);                           \
                a1 = _mm256_fmadd_ps(d, _mm256_loadu_ps(xp + i + 8), a1);                       \
                BLOCK(row + i + 16, &e, &d);                                                    \
                a2 = _mm256_fmadd_ps(e, _mm256_loadu_ps(xp + i + 16), a2);                      \
                a3 = _mm256_fmadd_ps(d, _mm256_loadu_ps(xp + i + 24), a3);                      \
            }                                                                                   \
            if (i < whole) {                                                                    \
                BLOCK(row + i, &e, &d);                                                         \
                a0 = _mm256_fmadd_ps(e, _mm256_loadu_ps(xp + i), a0);                           \
                a1 = _mm256_fmadd_ps(d, _mm256_loadu_ps(xp + i + 8), a1);                       \
            }                                                                                   \
            float sum = lanes(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));     \
            for (long j = whole; j < cols; j++) sum += ONE(row + j) * x[j];                     \
            y[o] = accumulate ? y[o] + scale * sum : scale * sum;                               \
        }                                                                                       \
    }

GEMV(kd_gemv_bf16, uint16_t, block_bf16, one_bf16)

#else
#include <math.h>

static inline float one_bf16(const uint16_t *p) { return bf16_value(*p); }

// The same order as the vector kernels, one lane at a time: in lane j of a block at column c,
// "even" is column c + 2j and "odd" column c + 2j + 1.
#define GEMV(NAME, T, ONE)                                                                      \
    void NAME(const T *w, long first, long end, long cols, const float *x, const float *xp,    \
              float *y, int accumulate, float scale) {                                          \
        long whole = cols / 16 * 16;                                                            \
        for (long o = first; o < end; o++) {                                                    \
            const T *row = w + o * cols;                                                        \
            float a[4][8] = {{0}};                                                              \
            for (long i = 0; i < whole; i += 16) {                                              \
                int q = (i % 32 == 0 && i + 32 <= whole) || i % 32 != 0 ? (int)(i % 32) / 8 : 0; \
                for (int j = 0; j < 8; j++) {                                                   \
                    a[q][j] = fmaf(ONE(row + i + 2 * j), xp[i + j], a[q][j]);                   \
                    a[q + 1][j] = fmaf(ONE(row + i + 2 * j + 1), xp[i + 8 + j], a[q + 1][j]);   \
                }                                                                               \
            }                                                                                   \
            float s[8];                                                                         \
            for (int j = 0; j < 8; j++) s[j] = (a[0][j] + a[1][j]) + (a[2][j] + a[3][j]);       \
            float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));      \
            for (long j = whole; j < cols; j++) sum += ONE(row + j) * x[j];                     \
            y[o] = accumulate ? y[o] + scale * sum : scale * sum;                               \
        }                                                                                       \
    }

GEMV(kd_gemv_bf16, uint16_t, one_bf16)
#endif
