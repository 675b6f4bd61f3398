// A small pool of helper threads that run the parts of one job beside the calling thread, for
// products too short to pay a scheduler's wake-up: a decoded token of Qwen3-0.6B makes ~200
// matrix-vector products of 50-300 µs each, and handing each to Dispatch cost a second core more
// than it gave (2 threads decoded no faster than 1; see Scripts/bench-generate.sh). A helper
// spins for 200 µs after its part, so the next job of the token finds it awake, then sleeps on
// a condition variable. One job at a time: a caller that finds the pool busy (another model's
// thread) runs all its parts itself. Which rows a part covers never depends on the threads, so
// neither do the results.
#include "ckernels.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define PAUSE() _mm_pause()
#else
#define PAUSE() ((void)0)
#endif

enum { MAX_HELPERS = 63 };
// How long a helper spins for the next job before it sleeps: longer than the gaps between a
// decoded token's products (attention, norms, sampling: up to ~100 µs for Qwen3-0.6B here), short
// enough not to take a core from another model's thread for long. A pause lasts from ~10 to ~50 ns
// depending on the CPU, so the spin is timed by the clock, not counted.
static const long SPIN_NS = 200000;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;     // held by the job's caller
static pthread_mutex_t sleeping = PTHREAD_MUTEX_INITIALIZER;  // guards sleepers and the wake-up
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int sleepers;
static int helpers;  // started so far (under busy)
// The job's number (high 32 bits), its part count (next 16) and the next part to claim (low 16):
// whoever claims a part runs it, the caller included, so a helper that is not running (the host
// busy with other processes) never holds the caller up; a part is claimed only while its job is
// current. The count travels in the same word as the number so that a helper still looking at a
// finished job compares that job's own count (a count kept apart could already be the next job's,
// and a late helper would claim a part of the old job past its end while the next is set up).
static atomic_long posted;  // the number of the newest job, for helpers to wake on
static atomic_ullong claim;
static atomic_int finished;  // parts of the current job that have returned
static void (*job_fn)(void *, int);
static void *job_context;

// Claims and runs parts of job `job` until none is left.
static void run_claimed(unsigned long long job) {
    unsigned long long value = atomic_load_explicit(&claim, memory_order_acquire);
    for (;;) {
        if (value >> 32 != job || (value & 0xFFFFu) >= ((value >> 16) & 0xFFFFu)) return;
        if (!atomic_compare_exchange_weak_explicit(&claim, &value, value + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        job_fn(job_context, (int)(value & 0xFFFFu));
        atomic_fetch_add_explicit(&finished, 1, memory_order_release);
        value = atomic_load_explicit(&claim, memory_order_acquire);
    }
}

static void *helper(void *argument) {
    (void)argument;
    long seen = 0;
    for (;;) {
        long now = seen, start = now_ns();
        for (int i = 1; (now = atomic_load_explicit(&posted, memory_order_acquire)) == seen; i++) {
            PAUSE();
            if (i % 256 == 0 && now_ns() - start > SPIN_NS) break;
        }
        if (now == seen) {
            pthread_mutex_lock(&sleeping);
            sleepers++;
            while ((now = atomic_load_explicit(&posted, memory_order_acquire)) == seen) pthread_cond_wait(&wake, &sleeping);
            sleepers--;
            pthread_mutex_unlock(&sleeping);
        }
        seen = now;
        run_claimed((unsigned long long)now);
    }
    return 0;
}

void kd_run_parts(int parts, void (*fn)(void *context, int part), void *context) {
    if (parts <= 1 || parts > 0xFFFF || pthread_mutex_trylock(&busy) != 0) {
        for (int part = 0; part < parts; part++) fn(context, part);
        return;
    }
    while (helpers < parts - 1 && helpers < MAX_HELPERS) {
        pthread_t thread;
        if (pthread_create(&thread, 0, helper, 0) != 0) break;
        pthread_detach(thread);
        helpers++;
    }
    long job = atomic_load_explicit(&posted, memory_order_relaxed) + 1;
    job_fn = fn;
    job_context = context;
    atomic_store_explicit(&finished, 0, memory_order_relaxed);
    atomic_store_explicit(&claim, (unsigned long long)job << 32 | (unsigned long long)parts << 16, memory_order_release);
    atomic_store_explicit(&posted, job, memory_order_release);
    pthread_mutex_lock(&sleeping);
    if (sleepers > 0) pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleeping);
    run_claimed((unsigned long long)job);
    // Parts claimed by helpers are running; wait for them, yielding the core after a while in case
    // a helper was descheduled mid-part.
    long start = now_ns();
    for (int i = 1; atomic_load_explicit(&finished, memory_order_acquire) < parts; i++) {
        if (i % 256 == 0 && now_ns() - start > 50000) sched_yield(); else PAUSE();
    }
    pthread_mutex_unlock(&busy);
}
