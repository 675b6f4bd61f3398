// Measures the read bandwidth of THREADS threads, each summing its part of a 1 GiB buffer (a loop
// the compiler vectorises), so decoding throughput can be read against the bytes a token reads,
// on this machine, in the same run.
// Usage: bandwidth_bench THREADS [REPS]
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BYTES = 1 << 30 };
static float *data;
static int threads;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *part(void *arg) {
    long id = (long)arg, n = BYTES / sizeof(float) / threads;
    const float *p = data + id * n;
    float s[16] = {0};
    for (long i = 0; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) s[j] += p[i + j];
    float total = 0;
    for (int j = 0; j < 16; j++) total += s[j];
    return (void *)(long)(total > 0);  // keep the sum alive
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s THREADS [REPS]\n", argv[0]); return 2; }
    threads = atoi(argv[1]);
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    data = malloc(BYTES);
    memset(data, 1, BYTES);
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        pthread_t t[64];
        double start = now();
        for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, part, (void *)i);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        double s = now() - start;
        if (s < best) best = s;
    }
    printf("{\"threads\": %d, \"read_gb_per_s\": %.1f}\n", threads, BYTES / best * 1e-9);
    return 0;
}
