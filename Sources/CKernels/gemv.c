// Decoding's matrix-vector product over a bf16 weight (see ckernels.h).
//
// A bf16 value is the top half of an f32, so 16 bf16 weights loaded as eight 32-bit lanes give
// the even-numbered ones by a shift and the odd-numbered ones by a mask: two instructions widen
// 16 values. The dot product therefore runs over blocks of 16 columns in "pair order": lane j
// holds column 2j in one vector and 2j+1 in the other, and x is rearranged to match once per call
// (kd_pair_order). Per row, every whole block adds its even products into one accumulator and its
// odd ones into another; then even + odd, its lanes summed as ((l0 + l1) + (l2 + l3)) + ((l4 +
// l5) + (l6 + l7)), and the last cols % 16 products added one by one. Eight rows go together:
// they share each load of x, and each is read ahead eight rows further on. (Four rows with four
// accumulators each read 30% slower: Scripts/decode_gemv_bench.c.) Without AVX2 the same order
// runs in scalar code.
#include "ckernels.h"

enum { ROWS = 8 };

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

// The lane sums of four vectors at once, in the order above: two rounds of pairwise horizontal
// adds, then the two halves.
static inline __m128 lanes4(const __m256 *v) {
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

static inline float lanes(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

static inline float tail(const uint16_t *row, long whole, long cols, const float *x, float sum) {
    for (long j = whole; j < cols; j++) sum += bf16_value(row[j]) * x[j];
    return sum;
}

// Rows [o, o + ROWS).
static void group(const uint16_t *w, long o, long cols, const float *x, const float *xp, float *y, int accumulate,
                  float scale) {
    const __m256i odd_mask = _mm256_set1_epi32((int)0xFFFF0000u);
    const uint16_t *r = w + o * cols;
    long whole = cols / 16 * 16;
    __m256 even[ROWS], odd[ROWS];
    for (int k = 0; k < ROWS; k++) even[k] = odd[k] = _mm256_setzero_ps();
    for (long i = 0; i < whole; i += 16) {
        __m256 x0 = _mm256_loadu_ps(xp + i), x1 = _mm256_loadu_ps(xp + i + 8);
        for (int k = 0; k < ROWS; k++) {
            // One cache line (32 columns) per row, at the same column eight rows on: the hardware
            // prefetcher alone leaves decoding well short of the bandwidth.
            if ((i & 31) == 0) _mm_prefetch((const char *)(r + (k + ROWS) * cols + i), _MM_HINT_T0);
            __m256i v = _mm256_loadu_si256((const __m256i *)(r + k * cols + i));
            even[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), x0, even[k]);
            odd[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, odd_mask)), x1, odd[k]);
        }
    }
    float sums[ROWS];
    for (int k0 = 0; k0 < ROWS; k0 += 4) {
        __m256 v[4];
        for (int k = 0; k < 4; k++) v[k] = _mm256_add_ps(even[k0 + k], odd[k0 + k]);
        _mm_storeu_ps(sums + k0, lanes4(v));
    }
    for (int k = 0; k < ROWS; k++) store(y + o + k, tail(r + k * cols, whole, cols, x, sums[k]), accumulate, scale);
}

// Row o alone, in the same order.
static void single(const uint16_t *w, long o, long cols, const float *x, const float *xp, float *y, int accumulate,
                   float scale) {
    const __m256i odd_mask = _mm256_set1_epi32((int)0xFFFF0000u);
    const uint16_t *r = w + o * cols;
    long whole = cols / 16 * 16;
    __m256 even = _mm256_setzero_ps(), odd = even;
    for (long i = 0; i < whole; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(r + i));
        even = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(xp + i), even);
        odd = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, odd_mask)), _mm256_loadu_ps(xp + i + 8), odd);
    }
    store(y + o, tail(r, whole, cols, x, lanes(_mm256_add_ps(even, odd))), accumulate, scale);
}

void kd_gemv_bf16(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
                  int accumulate, float scale) {
    long o = first;
    for (; o + ROWS <= end; o += ROWS) group(w, o, cols, x, xp, y, accumulate, scale);
    for (; o < end; o++) single(w, o, cols, x, xp, y, accumulate, scale);
}

#else
#include <math.h>

// The same order one lane at a time: in lane j of a block at column c, "even" is column c + 2j
// and "odd" column c + 2j + 1.
void kd_gemv_bf16(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
                  int accumulate, float scale) {
    long whole = cols / 16 * 16;
    for (long o = first; o < end; o++) {
        const uint16_t *row = w + o * cols;
        float even[8] = {0}, odd[8] = {0}, s[8];
        for (long i = 0; i < whole; i += 16)
            for (int j = 0; j < 8; j++) {
                even[j] = fmaf(bf16_value(row[i + 2 * j]), xp[i + j], even[j]);
                odd[j] = fmaf(bf16_value(row[i + 2 * j + 1]), xp[i + 8 + j], odd[j]);
            }
        for (int j = 0; j < 8; j++) s[j] = even[j] + odd[j];
        float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        for (long j = whole; j < cols; j++) sum += bf16_value(row[j]) * x[j];
        store(y + o, sum, accumulate, scale);
    }
}
#endif
