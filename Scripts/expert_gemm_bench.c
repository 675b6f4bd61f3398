// The projections of one Qwen3-30B-A3B expert, y[m, n] = x[m, k] · W[n, k]ᵀ with (n, k) = (768,
// 2048) for gate and up (the same shape) and (2048, 768) for down, on one thread, for m tokens
// routed to the expert: OpenBLAS sgemm on an f32 W; a bf16 W widened to f32 in panels of 512 rows,
// each then given to sgemm, as kd's dense products do (WeightProducts.linear, here with the panel
// buffer allocated once; experts used it before kd_gemm_nt); and kd_gemm_nt (Sources/CKernels/gemm.c) on the f32 W and on the bf16 W. The
// four alternate within every repetition, and each call reads the next of COPIES copies of W
// (enough for 64 MiB of f32 by default, more than this CPU's caches), so W comes from memory as
// it does for 128 experts per layer; COPIES = 1 keeps it in cache. For every case it prints the
// best and median GFLOP/s of each kind, by the wall clock and by the thread's CPU time (which
// leaves out the time a shared host runs something else on the core), and the ratios of the
// medians: kd on f32 over sgemm, kd on bf16 over widen-then-sgemm. It checks that kd gives the
// same bits on both weights.
// Build and run from the project root:
//   gcc -O3 -mavx2 -mfma -ffp-contract=off -ISources/CKernels/include Scripts/expert_gemm_bench.c
//       Sources/CKernels/gemm.c -o expert_gemm_bench -lopenblas -lm && ./expert_gemm_bench [REPS] [COPIES]
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ckernels.h"

enum { KINDS = 4, PANEL_ROWS = 512 };
static const char *kind_names[KINDS] = {"sgemm f32", "widen bf16 + sgemm", "kd f32", "kd bf16"};

static double now(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int ascending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// WeightProducts.linear on a bf16 W: each panel of rows widened, then one sgemm for its columns of y.
static void widen_then_sgemm(long m, long n, long k, const float *x, const uint16_t *w, float *panel, float *y) {
    for (long first = 0; first < n; first += PANEL_ROWS) {
        long rows = n - first < PANEL_ROWS ? n - first : PANEL_ROWS;
        const uint16_t *src = w + first * k;
        uint32_t *bits = (uint32_t *)panel;
        for (long i = 0; i < rows * k; i++) bits[i] = (uint32_t)src[i] << 16;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)rows, (int)k, 1, x, (int)k, panel, (int)k, 0,
                    y + first, (int)n);
    }
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 11;
    long copies = argc > 2 ? atol(argv[2]) : 0;
    if (reps < 1 || reps > 1000 || copies < 0 || copies > 1000) {
        fprintf(stderr, "usage: %s [REPS] [COPIES]\n", argv[0]);
        return 2;
    }
    openblas_set_num_threads(1);
    const long shapes[2][2] = {{768, 2048}, {2048, 768}};
    const char *shape_names[2] = {"gate/up", "down"};
    const long ms[] = {8, 16, 32, 64, 128, 512};
    const long elements = 768 * 2048, max_m = 512;
    if (copies == 0) copies = (64L << 20) / (4 * elements) + 1;
    float *f32 = malloc(4 * elements * copies), *panel = malloc(4 * PANEL_ROWS * 2048);
    uint16_t *bf16 = malloc(2 * elements * copies);
    uint32_t seed = 1;
    for (long i = 0; i < elements; i++) {
        seed = seed * 1664525u + 1013904223u;
        bf16[i] = (uint16_t)(0x3C00 + (seed >> 22)) | (uint16_t)((seed >> 16) & 0x8000);  // ±[2^-7, 2^-6)
        uint32_t bits = (uint32_t)bf16[i] << 16;
        memcpy(f32 + i, &bits, 4);
    }
    for (long c = 1; c < copies; c++) {
        memcpy(f32 + c * elements, f32, 4 * elements);
        memcpy(bf16 + c * elements, bf16, 2 * elements);
    }
    float *x = malloc(4 * max_m * 2048), *y[KINDS];
    for (long i = 0; i < max_m * 2048; i++) x[i] = (float)((i * 37) % 101 - 50) * 0.01f;
    for (int kind = 0; kind < KINDS; kind++) y[kind] = malloc(4 * max_m * 2048);
    double *times = malloc(sizeof(double) * KINDS * reps), *cpu_times = malloc(sizeof(double) * KINDS * reps);
    printf("{\"threads\": 1, \"reps\": %d, \"weight_copies\": %ld, \"kd_path\": %d}\n", reps, copies, kd_gemm_nt_widest());
    long call = 0;
    for (int s = 0; s < 2; s++)
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            long m = ms[mi], n = shapes[s][0], k = shapes[s][1];
            for (int r = -1; r < reps; r++)  // r = -1 warms up
                for (int kind = 0; kind < KINDS; kind++) {
                    long c = call++ % copies;
                    const float *w32 = f32 + c * elements;
                    const uint16_t *w16 = bf16 + c * elements;
                    double t = now(CLOCK_MONOTONIC), cpu = now(CLOCK_THREAD_CPUTIME_ID);
                    if (kind == 0)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1, x, (int)k, w32,
                                    (int)k, 0, y[0], (int)n);
                    else if (kind == 1) widen_then_sgemm(m, n, k, x, w16, panel, y[1]);
                    else if (kind == 2) kd_gemm_nt(m, n, k, x, k, w32, 0, k, y[2], n, 0, 1);
                    else kd_gemm_nt(m, n, k, x, k, w16, 1, k, y[3], n, 0, 1);
                    if (r >= 0) {
                        cpu_times[kind * reps + r] = now(CLOCK_THREAD_CPUTIME_ID) - cpu;
                        times[kind * reps + r] = now(CLOCK_MONOTONIC) - t;
                    }
                }
            if (memcmp(y[2], y[3], 4 * m * n) != 0) {
                fprintf(stderr, "expert_gemm_bench: kd_gemm_nt gives different bits on f32 and bf16 weights\n");
                return 1;
            }
            double flops = 2.0 * m * n * k, median[KINDS], cpu_median[KINDS];
            for (int kind = 0; kind < KINDS; kind++) {
                double *t = times + kind * reps, *c = cpu_times + kind * reps;
                qsort(t, reps, sizeof(double), ascending);
                qsort(c, reps, sizeof(double), ascending);
                median[kind] = flops / t[reps / 2] * 1e-9;
                cpu_median[kind] = flops / c[reps / 2] * 1e-9;
                printf("{\"shape\": \"%s\", \"m\": %ld, \"n\": %ld, \"k\": %ld, \"kind\": \"%s\", \"gflops_best\": %.1f, "
                       "\"gflops_median\": %.1f, \"cpu_gflops_best\": %.1f, \"cpu_gflops_median\": %.1f}\n",
                       shape_names[s], m, n, k, kind_names[kind], flops / t[0] * 1e-9, median[kind], flops / c[0] * 1e-9,
                       cpu_median[kind]);
            }
            printf("{\"shape\": \"%s\", \"m\": %ld, \"kd_f32_over_sgemm\": %.2f, \"kd_bf16_over_widen_sgemm\": %.2f, "
                   "\"cpu_kd_f32_over_sgemm\": %.2f, \"cpu_kd_bf16_over_widen_sgemm\": %.2f}\n",
                   shape_names[s], m, median[2] / median[0], median[3] / median[1], cpu_median[2] / cpu_median[0],
                   cpu_median[3] / cpu_median[1]);
            fflush(stdout);
        }
    return 0;
}
