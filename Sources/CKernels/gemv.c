// Decoding's matrix-vector product over a bf16 weight (see ckernels.h).
//
// A bf16 value is the top half of an f32, so 16 bf16 weights loaded as eight 32-bit lanes give
// the even-numbered ones by a shift and the odd-numbered ones by a mask: two instructions widen
// 16 values. The dot product therefore runs over blocks of 16 columns in "pair order": lane j
// holds column 2j in one vector and 2j+1 in the other, and x is rearranged to match once per call
// (kd_pair_order). Per row: 32 columns a step into four accumulators (even and odd of two
// blocks), a last whole block of 16 into the first two, then (a0 + a1) + (a2 + a3), its lanes
// summed as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), and the last cols % 16 products
// added one by one. Four rows share each load of x and have their lanes summed together. Without
// AVX2 the same order runs in scalar code.
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

static inline void store(float *y, float sum, int accumulate, float scale) {
    *y = accumulate ? *y + scale * sum : scale * sum;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

// Columns 0..15 from p as (even, odd) vectors in pair order.
static inline void block(const uint16_t *p, __m256 *even, __m256 *odd) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
}

// The lane sums of four vectors at once, in the order above: two rounds of pairwise horizontal
// adds, then the two halves.
static inline __m128 lanes4(const __m256 v[4]) {
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Rows [o, o + count) for count ≤ 4 (the missing rows of a last group repeat its first row).
static void rows(const uint16_t *w, long o, int count, long cols, const float *x, const float *xp, float *y,
                 int accumulate, float scale) {
    long whole = cols / 16 * 16;
    const uint16_t *r[4];
    for (int k = 0; k < 4; k++) r[k] = w + (o + (k < count ? k : 0)) * cols;
    __m256 a[4][4];
    for (int k = 0; k < 4; k++)
        for (int q = 0; q < 4; q++) a[k][q] = _mm256_setzero_ps();
    long i = 0;
    for (; i + 32 <= whole; i += 32) {
        __m256 x0 = _mm256_loadu_ps(xp + i), x1 = _mm256_loadu_ps(xp + i + 8);
        __m256 x2 = _mm256_loadu_ps(xp + i + 16), x3 = _mm256_loadu_ps(xp + i + 24);
        for (int k = 0; k < 4; k++) {
            __m256 e0, o0, e1, o1;
            // Read ahead at the same column eight rows further on (16-64 KiB ahead at Qwen3's
            // widths): the hardware prefetcher alone leaves decoding well short of the bandwidth.
            _mm_prefetch((const char *)(r[k] + 8 * cols + i), _MM_HINT_T0);
            block(r[k] + i, &e0, &o0);
            block(r[k] + i + 16, &e1, &o1);
            a[k][0] = _mm256_fmadd_ps(e0, x0, a[k][0]);
            a[k][1] = _mm256_fmadd_ps(o0, x1, a[k][1]);
            a[k][2] = _mm256_fmadd_ps(e1, x2, a[k][2]);
            a[k][3] = _mm256_fmadd_ps(o1, x3, a[k][3]);
        }
    }
    if (i < whole) {
        __m256 x0 = _mm256_loadu_ps(xp + i), x1 = _mm256_loadu_ps(xp + i + 8);
        for (int k = 0; k < 4; k++) {
            __m256 e0, o0;
            block(r[k] + i, &e0, &o0);
            a[k][0] = _mm256_fmadd_ps(e0, x0, a[k][0]);
            a[k][1] = _mm256_fmadd_ps(o0, x1, a[k][1]);
        }
    }
    __m256 v[4];
    for (int k = 0; k < 4; k++) v[k] = _mm256_add_ps(_mm256_add_ps(a[k][0], a[k][1]), _mm256_add_ps(a[k][2], a[k][3]));
    float sums[4];
    _mm_storeu_ps(sums, lanes4(v));
    for (int k = 0; k < count; k++) {
        float sum = sums[k];
        for (long j = whole; j < cols; j++) sum += bf16_value(r[k][j]) * x[j];
        store(y + o + k, sum, accumulate, scale);
    }
}

void kd_gemv_bf16(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
                  int accumulate, float scale) {
    for (long o = first; o < end; o += 4) rows(w, o, end - o < 4 ? (int)(end - o) : 4, cols, x, xp, y, accumulate, scale);
}

#else
#include <math.h>

// The same order one lane at a time: in lane j of a block at column c, "even" is column c + 2j
// and "odd" column c + 2j + 1; a 32-column step fills accumulators 0-1 and 2-3, a last whole
// block of 16 accumulators 0-1.
void kd_gemv_bf16(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
                  int accumulate, float scale) {
    long whole = cols / 16 * 16;
    for (long o = first; o < end; o++) {
        const uint16_t *row = w + o * cols;
        float a[4][8] = {{0}};
        for (long i = 0; i < whole; i += 16) {
            int q = (i % 32 == 16) ? 2 : 0;
            for (int j = 0; j < 8; j++) {
                a[q][j] = fmaf(bf16_value(row[i + 2 * j]), xp[i + j], a[q][j]);
                a[q + 1][j] = fmaf(bf16_value(row[i + 2 * j + 1]), xp[i + 8 + j], a[q + 1][j]);
            }
        }
        float s[8];
        for (int j = 0; j < 8; j++) s[j] = (a[0][j] + a[1][j]) + (a[2][j] + a[3][j]);
        float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        for (long j = whole; j < cols; j++) sum += bf16_value(row[j]) * x[j];
        store(y + o, sum, accumulate, scale);
    }
}
#endif
