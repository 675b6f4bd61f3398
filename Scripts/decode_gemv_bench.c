// The matrix-vector products of one decoded token of Qwen3-0.6B (28 layers of q, k, v, o, gate,
// up and down, and the 151,936 × 1,024 head), once with sgemv on f32 weights and once with kd's
// bf16 kernel (Sources/CKernels) on bf16 weights, on one thread: the bandwidth each reaches
// when every weight streams from memory, without the rest of decoding.
// Build and run from the project root:
//   gcc -O3 -mavx2 -mfma -ffp-contract=off -ISources/CKernels/include Scripts/decode_gemv_bench.c \
//       Sources/CKernels/gemv.c -o decode_gemv_bench -lopenblas && ./decode_gemv_bench [REPS]
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "ckernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 7;
    openblas_set_num_threads(1);
    const long layer[7][2] = {{2048, 1024}, {1024, 1024}, {1024, 1024}, {1024, 2048}, {3072, 1024}, {3072, 1024}, {1024, 3072}};
    enum { LAYERS = 28, COUNT = LAYERS * 7 + 1 };
    long shape[COUNT][2], elements = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < 7; k++) shape[l * 7 + k][0] = layer[k][0], shape[l * 7 + k][1] = layer[k][1];
    shape[COUNT - 1][0] = 151936, shape[COUNT - 1][1] = 1024;
    float *f32[COUNT];
    uint16_t *bf16[COUNT];
    for (int j = 0; j < COUNT; j++) {
        long n = shape[j][0] * shape[j][1];
        elements += n;
        f32[j] = malloc(4 * n), bf16[j] = malloc(2 * n);
        for (long i = 0; i < n; i++) f32[j][i] = 1.0f + (i % 13) * 0.0078125f, bf16[j][i] = 0x3F80 + (i % 13);
    }
    float *x = malloc(4 * 4096), *xp = malloc(4 * 4096), *y = malloc(4 * 151936);
    for (int i = 0; i < 4096; i++) x[i] = (i % 7) * 0.1f;
    kd_pair_order(x, 4096, xp);
    for (int kind = 0; kind < 2; kind++) {
        double best = 1e9;
        for (int r = 0; r < reps; r++) {
            double t = now();
            for (int j = 0; j < COUNT; j++) {
                if (kind == 0) cblas_sgemv(CblasRowMajor, CblasNoTrans, shape[j][0], shape[j][1], 1, f32[j], shape[j][1], x, 1, 0, y, 1);
                else kd_gemv_bf16(bf16[j], 0, shape[j][0], shape[j][1], x, xp, y, 0, 1);
            }
            t = now() - t;
            if (t < best) best = t;
        }
        double bytes = (kind == 0 ? 4.0 : 2.0) * elements;
        printf("{\"weights\": \"%s\", \"ms_per_token\": %.1f, \"read_gb_per_s\": %.1f}\n", kind == 0 ? "f32 (sgemv)" : "bf16 (kd)",
               best * 1e3, bytes / best * 1e-9);
    }
    return 0;
}
