// Decoding's matrix-vector product over a bf16 weight (see ckernels.h).
//
// A bf16 value is the top half of an f32, so 16 bf16 weights loaded as eight 32-bit lanes give
// the even-numbered ones by a shift and the odd-numbered ones by a mask: two instructions widen
// 16 values. The dot product therefore runs over blocks of 16 columns in "pair order": lane j
// holds column 2j in one vector and 2j+1 in the other, and x is rearranged to match once per call
// (kd_pair_order). Per row, every whole block adds its even products into one accumulator and its
// odd ones into another; then even + odd, its lanes summed as ((l0 + l1) + (l2 + l3)) + ((l4 +
// l5) + (l6 + l7)), and the last cols % 16 products added one by one.
//
// Four rows go together and share each load of x, but not neighbouring rows: the rows [first,
// end) are cut into four equal runs and row j of each run goes with row j of the others, so the
// weight is read as four sequential streams far apart. Rows next to each other (eight at a time,
// each read ahead by software prefetch) interleave lines of one page, which the hardware
// prefetcher of an AMD EPYC (Zen 4) does not follow: 13-14 GB/s there against 27-28 for four
// far streams, the machine's one-stream read bandwidth (Scripts/decode_gemv_bench.c). The rows
// left over go one by one.
//
// Three paths compute exactly this, so all give the same bits: scalar code (always built), AVX2
// (built with -mavx2 -mfma) and AVX-512 (built for its target, taken when the CPU has it), where
// one 512-bit register holds a row's 16 columns of a block in column order.
#include "ckernels.h"
#include <math.h>

enum { STREAMS = 4 };

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

static inline float tail(const uint16_t *row, long whole, long cols, const float *x, float sum) {
    for (long j = whole; j < cols; j++) sum += bf16_value(row[j]) * x[j];
    return sum;
}

// The same order one lane at a time: in lane j of a block at column c, "even" is column c + 2j
// and "odd" column c + 2j + 1.
static void gemv_scalar(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
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
        store(y + o, tail(row, whole, cols, x, sum), accumulate, scale);
    }
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1

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

// Rows o + k * stride for k < STREAMS, whose sums share each load of x.
static void streams(const uint16_t *w, long o, long stride, long cols, const float *x, const float *xp, float *y,
                    int accumulate, float scale) {
    const __m256i odd_mask = _mm256_set1_epi32((int)0xFFFF0000u);
    const uint16_t *r[STREAMS];
    for (int k = 0; k < STREAMS; k++) r[k] = w + (o + k * stride) * cols;
    long whole = cols / 16 * 16;
    __m256 even[STREAMS], odd[STREAMS];
    for (int k = 0; k < STREAMS; k++) even[k] = odd[k] = _mm256_setzero_ps();
    for (long i = 0; i < whole; i += 16) {
        __m256 x0 = _mm256_loadu_ps(xp + i), x1 = _mm256_loadu_ps(xp + i + 8);
        for (int k = 0; k < STREAMS; k++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(r[k] + i));
            even[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), x0, even[k]);
            odd[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, odd_mask)), x1, odd[k]);
        }
    }
    __m256 v[STREAMS];
    for (int k = 0; k < STREAMS; k++) v[k] = _mm256_add_ps(even[k], odd[k]);
    float sums[STREAMS];
    _mm_storeu_ps(sums, lanes4(v));
    for (int k = 0; k < STREAMS; k++) store(y + o + k * stride, tail(r[k], whole, cols, x, sums[k]), accumulate, scale);
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

static void gemv_avx2(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
                      int accumulate, float scale) {
    long stride = (end - first) / STREAMS;
    for (long o = first; o < first + stride; o++) streams(w, o, stride, cols, x, xp, y, accumulate, scale);
    for (long o = first + STREAMS * stride; o < end; o++) single(w, o, cols, x, xp, y, accumulate, scale);
}

#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#define HAVE_AVX512 1
#define AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))

// streams() with each row's 16 columns of a block widened in column order into one register and
// x in column order: lane 2j holds what lane j of "even" holds above, lane 2j + 1 what lane j of
// "odd" holds, so the same products are summed in the same order.
AVX512 static void streams512(const uint16_t *w, long o, long stride, long cols, const float *x, float *y,
                              int accumulate, float scale) {
    const uint16_t *r[STREAMS];
    for (int k = 0; k < STREAMS; k++) r[k] = w + (o + k * stride) * cols;
    long whole = cols / 16 * 16;
    __m512 sum[STREAMS];
    for (int k = 0; k < STREAMS; k++) sum[k] = _mm512_setzero_ps();
    for (long i = 0; i < whole; i += 16) {
        __m512 xv = _mm512_loadu_ps(x + i);
        for (int k = 0; k < STREAMS; k++) {
            __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(r[k] + i)));
            sum[k] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xv, sum[k]);
        }
    }
    // Lane j of even + odd, then the lane sums as above.
    __m256 v[STREAMS];
    for (int k = 0; k < STREAMS; k++) {
        __m256 pairs = _mm256_hadd_ps(_mm512_castps512_ps256(sum[k]),
                                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sum[k]), 1)));
        v[k] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(pairs), 0xD8));
    }
    float sums[STREAMS];
    _mm_storeu_ps(sums, lanes4(v));
    for (int k = 0; k < STREAMS; k++) store(y + o + k * stride, tail(r[k], whole, cols, x, sums[k]), accumulate, scale);
}

AVX512 static void gemv_avx512(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp,
                               float *y, int accumulate, float scale) {
    long stride = (end - first) / STREAMS;
    for (long o = first; o < first + stride; o++) streams512(w, o, stride, cols, x, y, accumulate, scale);
    for (long o = first + STREAMS * stride; o < end; o++) single(w, o, cols, x, xp, y, accumulate, scale);
}
#endif
#endif

int kd_gemv_bf16_widest(void) {
    static int widest = -1;
    int known = __atomic_load_n(&widest, __ATOMIC_RELAXED);
    if (known >= 0) return known;
    int found = 0;
#if HAVE_AVX2
    found = 256;
#if HAVE_AVX512
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        found = 512;
#endif
#endif
    __atomic_store_n(&widest, found, __ATOMIC_RELAXED);
    return found;
}

void kd_gemv_bf16_width(int width, const uint16_t *w, long first, long end, long cols, const float *x, const float *xp,
                        float *y, int accumulate, float scale) {
    int widest = kd_gemv_bf16_widest();
    if (width > widest) width = widest;
#if HAVE_AVX512
    if (width >= 512) return gemv_avx512(w, first, end, cols, x, xp, y, accumulate, scale);
#endif
#if HAVE_AVX2
    if (width >= 256) return gemv_avx2(w, first, end, cols, x, xp, y, accumulate, scale);
#endif
    gemv_scalar(w, first, end, cols, x, xp, y, accumulate, scale);
}

void kd_gemv_bf16(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
                  int accumulate, float scale) {
    kd_gemv_bf16_width(512, w, first, end, cols, x, xp, y, accumulate, scale);
}

struct gemv_job {
    int width, accumulate;
    const uint16_t *w;
    long rows, cols, per_part;
    const float *x, *xp;
    float *y;
    float scale;
};

static void gemv_part(void *context, int part) {
    const struct gemv_job *j = context;
    long first = part * j->per_part, end = first + j->per_part < j->rows ? first + j->per_part : j->rows;
    if (first < end) kd_gemv_bf16_width(j->width, j->w, first, end, j->cols, j->x, j->xp, j->y, j->accumulate, j->scale);
}

void kd_gemv_bf16_parts(int parts, int width, const uint16_t *w, long rows, long cols, const float *x, const float *xp,
                        float *y, int accumulate, float scale) {
    if (parts < 1) parts = 1;
    struct gemv_job job = {width, accumulate, w, rows, cols, (rows + parts - 1) / parts, x, xp, y, scale};
    kd_run_parts(parts, gemv_part, &job);
}
