// The f32 FMA peak of one core of this machine, as it runs now: twelve independent chains of
// 256-bit fused multiply-adds on registers (no memory traffic), 16 FLOP each, enough chains to
// cover the FMA latency on Zen and Intel cores alike. No product can run faster than this per
// core; sgemm's GFLOP/s over it is how much of the core a product uses (Scripts/sgemm_bench.c).
// Usage: gcc -O2 -mavx2 -mfma Scripts/fma_peak.c -o fma_peak && ./fma_peak [SECONDS]
// Prints one JSON line: GFLOP/s, best of 1/10-second rounds over SECONDS (default 2).
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2;
    // Twelve named accumulators, so that they stay in registers at any optimisation level.
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    const long iterations = 1 << 22;
    double best = 0, start = now();
    while (now() - start < seconds) {
        double t0 = now();
        for (long n = 0; n < iterations; n++) {
            a0 = _mm256_fmadd_ps(a0, x, y); a1 = _mm256_fmadd_ps(a1, x, y); a2 = _mm256_fmadd_ps(a2, x, y);
            a3 = _mm256_fmadd_ps(a3, x, y); a4 = _mm256_fmadd_ps(a4, x, y); a5 = _mm256_fmadd_ps(a5, x, y);
            a6 = _mm256_fmadd_ps(a6, x, y); a7 = _mm256_fmadd_ps(a7, x, y); a8 = _mm256_fmadd_ps(a8, x, y);
            a9 = _mm256_fmadd_ps(a9, x, y); a10 = _mm256_fmadd_ps(a10, x, y); a11 = _mm256_fmadd_ps(a11, x, y);
        }
        double rate = 12.0 * 16 * iterations / (now() - t0) / 1e9;
        if (rate > best) best = rate;
    }
    __m256 all = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                               _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    all = _mm256_add_ps(all, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float sink = 0, out[8];
    _mm256_storeu_ps(out, all);
    for (int i = 0; i < 8; i++) sink += out[i];
    printf("{\"fma_peak_gflops\": %.2f, \"sink\": %g}\n", best, sink);
    return 0;
}
