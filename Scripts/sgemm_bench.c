// Measures OpenBLAS sgemm GFLOP/s on the shapes of a transformer forward pass, so model
// throughput can be read against what the library delivers on this machine, in the same run.
// Usage: sgemm_bench THREADS M N K [REPS [nt|nn|tn]]: C[M,N] = op(A)·op(B), row-major; nt (the
// default) is x·Wᵀ as kd's forward products, nn is dy·W as their backward, tn is Aᵀ·B as the
// gradients of LoRA's A and B.
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: %s THREADS M N K [REPS]\n", argv[0]); return 2; }
    int threads = atoi(argv[1]), m = atoi(argv[2]), n = atoi(argv[3]), k = atoi(argv[4]);
    int reps = argc > 5 ? atoi(argv[5]) : 20;
    const char *form = argc > 6 ? argv[6] : "nt";
    int transA = form[0] == 't', transB = form[1] == 't';
    openblas_set_num_threads(threads);
    float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * n * k), *c = malloc(sizeof(float) * m * n);
    for (long i = 0; i < (long)m * k; i++) a[i] = (float)(i % 13) * 0.01f;
    for (long i = 0; i < (long)n * k; i++) b[i] = (float)(i % 7) * 0.01f;
    // A is [M, K] (or [K, M] when transposed), B is [N, K] when transposed (kd's W), else [K, N].
    enum CBLAS_TRANSPOSE ta = transA ? CblasTrans : CblasNoTrans, tb = transB ? CblasTrans : CblasNoTrans;
    int lda = transA ? m : k, ldb = transB ? k : n;
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, n);
    double best = 1e30, total = 0;
    for (int r = 0; r < reps; r++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, n);
        t = now() - t;
        total += t;
        if (t < best) best = t;
    }
    double flops = 2.0 * m * n * k;
    printf("{\"threads\": %d, \"m\": %d, \"n\": %d, \"k\": %d, \"form\": \"%s\", \"gflops_best\": %.1f, \"gflops_mean\": %.1f}\n",
           threads, m, n, k, form, flops / best * 1e-9, flops / (total / reps) * 1e-9);
    return 0;
}
