// The matrix-vector products of one decoded token of Qwen3-0.6B (28 layers of q, k, v, o, gate,
// up and down, and the 151,936 × 1,024 head), on THREADS threads (1 by default): sgemv on f32
// weights, and kd's bf16 kernel (Sources/CKernels) on bf16 weights on each of its paths this CPU
// has (AVX-512, AVX2, scalar code only when asked), its rows split over the threads as kd splits
// them (OpenMP here, Dispatch in kd). The kinds alternate within every repetition; it prints the
// fastest and the median ms per token and the read bandwidth of the fastest, when every weight
// streams from memory, without the rest of decoding. It also checks that the paths give the same
// bits.
// Build and run from the project root:
//   gcc -O3 -mavx2 -mfma -ffp-contract=off -fopenmp -ISources/CKernels/include Scripts/decode_gemv_bench.c
//       Sources/CKernels/gemv.c -o decode_gemv_bench -lopenblas && ./decode_gemv_bench [REPS] [THREADS] [scalar]
// On several threads set OMP_WAIT_POLICY=passive: kd's Dispatch workers sleep between products,
// and OpenMP's spinning ones, on a host whose cores something else uses, run many times slower.
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <omp.h>
#include "ckernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int ascending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 7;
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    int scalar = argc > 3 && strcmp(argv[3], "scalar") == 0;
    if (reps < 1 || reps > 1000 || threads < 1 || threads > 64) {
        fprintf(stderr, "usage: %s [REPS] [THREADS] [scalar]\n", argv[0]);
        return 2;
    }
    openblas_set_num_threads(threads);
    const long layer[7][2] = {{2048, 1024}, {1024, 1024}, {1024, 1024}, {1024, 2048}, {3072, 1024}, {3072, 1024}, {1024, 3072}};
    enum { LAYERS = 28, COUNT = LAYERS * 7 + 1 };
    long shape[COUNT][2], elements = 0, outputs = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < 7; k++) shape[l * 7 + k][0] = layer[k][0], shape[l * 7 + k][1] = layer[k][1];
    shape[COUNT - 1][0] = 151936, shape[COUNT - 1][1] = 1024;
    float *f32[COUNT];
    uint16_t *bf16[COUNT];
    uint32_t seed = 1;
    for (int j = 0; j < COUNT; j++) {
        long n = shape[j][0] * shape[j][1];
        elements += n, outputs += shape[j][0];
        f32[j] = malloc(4 * n), bf16[j] = malloc(2 * n);
        for (long i = 0; i < n; i++) {
            seed = seed * 1664525u + 1013904223u;
            uint16_t h = (uint16_t)(0x3C00 + (seed >> 22)) | (uint16_t)((seed >> 16) & 0x8000);  // ±[2^-7, 2^-6)
            bf16[j][i] = h;
            union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
            f32[j][i] = v.f;
        }
    }
    float *x = malloc(4 * 4096), *xp = malloc(4 * 4096);
    for (int i = 0; i < 4096; i++) x[i] = (float)((i * 37) % 101 - 50) * 0.01f;
    kd_pair_order(x, 4096, xp);
    // The kinds: sgemv, then kd's paths from the widest down.
    int widths[3], paths = 0;
    int widest = kd_gemv_bf16_widest();
    if (widest >= 512) widths[paths++] = 512;
    if (widest >= 256) widths[paths++] = 256;
    if (scalar || widest == 0) widths[paths++] = 0;
    int kinds = 1 + paths;
    float *y[4];
    for (int k = 0; k < kinds; k++) y[k] = malloc(4 * outputs);
    double *times = malloc(sizeof(double) * kinds * reps);
    for (int r = 0; r < reps; r++)
        for (int kind = 0; kind < kinds; kind++) {
            float *out = y[kind];
            // OpenBLAS's threads spin for a while after sgemv: let them sleep before kd's own.
            if (kind == 1 && threads > 1) usleep(500000);
            double t = now();
            for (int j = 0; j < COUNT; j++) {
                if (kind == 0) cblas_sgemv(CblasRowMajor, CblasNoTrans, shape[j][0], shape[j][1], 1, f32[j], shape[j][1], x, 1, 0, out, 1);
                else {
                    // As WeightProducts.gemvBF16: at most one part per 256 rows.
                    long rows = shape[j][0], parts = rows / 256 < threads ? (rows / 256 > 0 ? rows / 256 : 1) : threads;
                    long per = (rows + parts - 1) / parts;
#pragma omp parallel for num_threads(parts) if (parts > 1)
                    for (long p = 0; p < parts; p++) {
                        long end = (p + 1) * per < rows ? (p + 1) * per : rows;
                        kd_gemv_bf16_width(widths[kind - 1], bf16[j], p * per, end, shape[j][1], x, xp, out, 0, 1);
                    }
                }
                out += shape[j][0];
            }
            times[kind * reps + r] = now() - t;
        }
    for (int kind = 0; kind < kinds; kind++) {
        double *t = times + kind * reps;
        qsort(t, reps, sizeof(double), ascending);
        char name[32];
        if (kind == 0) snprintf(name, sizeof name, "f32 (sgemv)");
        else snprintf(name, sizeof name, "bf16 (kd, %s)", widths[kind - 1] == 512 ? "avx512" : widths[kind - 1] == 256 ? "avx2" : "scalar");
        double bytes = (kind == 0 ? 4.0 : 2.0) * elements;
        printf("{\"weights\": \"%s\", \"threads\": %d, \"ms_per_token\": %.1f, \"median_ms\": %.1f, \"read_gb_per_s\": %.1f}\n", name, threads, t[0] * 1e3,
               t[reps / 2] * 1e3, bytes / t[0] * 1e-9);
    }
    for (int kind = 2; kind < kinds; kind++)
        if (memcmp(y[1], y[kind], 4 * outputs) != 0) {
            fprintf(stderr, "decode_gemv_bench: the bf16 paths give different bits\n");
            return 1;
        }
    return 0;
}
