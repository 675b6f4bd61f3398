// A small pool of helper threads that run the parts of one job beside the calling thread, for
// products too short to pay a scheduler's wake-up: a decoded token of Qwen3-0.6B makes ~200
// matrix-vector products of 50-300 µs each, and handing each to Dispatch cost a second core more
// than it gave (2 threads decoded no faster than 1; see Scripts/bench-generate.sh). A helper
// spins for a while after its part, so the next job of the token finds it awake, then sleeps on
// a condition variable. One job at a time: a caller that finds the pool busy (another model's
// thread) runs all its parts itself. Which rows a part covers never depends on the threads, so
// neither do the results.
#include "ckernels.h"
#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define PAUSE() _mm_pause()
#else
#define PAUSE() ((void)0)
#endif

enum { MAX_HELPERS = 63, SPIN = 1 << 15 };  // 32k pauses: some tens of microseconds

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;     // held by the job's caller
static pthread_mutex_t sleeping = PTHREAD_MUTEX_INITIALIZER;  // guards sleepers and the wake-up
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int sleepers;
static int helpers;  // started so far (under busy)
// Helper i (1-based) runs part i of job number ticket[i] when it changes, then sets done[i] to it.
static atomic_long ticket[MAX_HELPERS + 1], done[MAX_HELPERS + 1];
static long jobs;  // under busy
static void (*job_fn)(void *, int);
static void *job_context;

static void *helper(void *argument) {
    int part = (int)(long)argument;
    long seen = 0;
    for (;;) {
        long now = seen;
        for (int i = 0; i < SPIN && (now = atomic_load_explicit(&ticket[part], memory_order_acquire)) == seen; i++) PAUSE();
        if (now == seen) {
            pthread_mutex_lock(&sleeping);
            sleepers++;
            while ((now = atomic_load_explicit(&ticket[part], memory_order_acquire)) == seen) pthread_cond_wait(&wake, &sleeping);
            sleepers--;
            pthread_mutex_unlock(&sleeping);
        }
        seen = now;
        job_fn(job_context, part);
        atomic_store_explicit(&done[part], now, memory_order_release);
    }
    return 0;
}

void kd_run_parts(int parts, void (*fn)(void *context, int part), void *context) {
    if (parts <= 1 || pthread_mutex_trylock(&busy) != 0) {
        for (int part = 0; part < parts; part++) fn(context, part);
        return;
    }
    while (helpers < parts - 1 && helpers < MAX_HELPERS) {
        pthread_t thread;
        if (pthread_create(&thread, 0, helper, (void *)(long)(helpers + 1)) != 0) break;
        pthread_detach(thread);
        helpers++;
    }
    int helped = parts - 1 < helpers ? parts - 1 : helpers;
    long job = ++jobs;
    job_fn = fn;
    job_context = context;
    for (int i = 1; i <= helped; i++) atomic_store_explicit(&ticket[i], job, memory_order_release);
    pthread_mutex_lock(&sleeping);
    if (sleepers > 0) pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleeping);
    fn(context, 0);
    for (int part = helped + 1; part < parts; part++) fn(context, part);  // parts without a helper
    for (int i = 1; i <= helped; i++)
        while (atomic_load_explicit(&done[i], memory_order_acquire) != job) PAUSE();
    pthread_mutex_unlock(&busy);
}
