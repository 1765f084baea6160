/* Multi-threaded, cache-bypassing memcpy for large puts.
 *
 * Two things limit a large copy into the store on one thread: the number of cache misses one core
 * keeps in flight, and the read-for-ownership traffic of ordinary stores (each destination line is
 * read before it is overwritten). Above a few megabytes (more than the caches hold, and the bytes
 * are meant for another process anyway) we use non-temporal stores, which skip both the read and
 * the cache: measured here, one thread goes from ~19 GB/s (glibc memcpy, as numpy.copyto uses) to
 * ~24 GB/s. Above `parallel_threshold` bytes per thread, several threads copy 8 MB pieces that
 * they claim one at a time (the caller's thread is one of them). Threads are created per call: at
 * these sizes their ~20 us start-up is noise, and there is no pool to leak or to fork with.
 * bench/store_bench.py measures the thresholds.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "internal.h"

#define MAX_THREADS 16
#define SLICE_ALIGN 4096u
/* Source bytes requested ahead of the copy. The hardware prefetcher alone leaves bandwidth unused:
 * measured here, two streaming threads went from ~24.6 to ~27 GB/s with 4 KiB of software
 * prefetch (1 and 2 KiB gave less). A prefetch never faults, so reading past the end is fine. */
#define PREFETCH_AHEAD 4096

/* Below this many bytes per thread, one thread copies everything. */
static uint64_t parallel_threshold = 32u << 20;
/* Below this many bytes, plain memcpy (the data fits in cache, where streaming stores lose). */
static const uint64_t stream_threshold = 4u << 20;

uint64_t pa_parallel_copy_threshold(void) { return parallel_threshold; }
void pa_set_parallel_copy_threshold(uint64_t n) { parallel_threshold = n ? n : 1; }

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void stream_avx512(uint8_t *d, const uint8_t *s, uint64_t n) {
    for (; n >= 256; n -= 256, d += 256, s += 256) {
        for (int line = 0; line < 256; line += 64) {
            _mm_prefetch((const char *)s + PREFETCH_AHEAD + line, _MM_HINT_NTA);
        }
        __m512i a = _mm512_loadu_si512(s), b = _mm512_loadu_si512(s + 64);
        __m512i c = _mm512_loadu_si512(s + 128), e = _mm512_loadu_si512(s + 192);
        _mm512_stream_si512((void *)d, a);
        _mm512_stream_si512((void *)(d + 64), b);
        _mm512_stream_si512((void *)(d + 128), c);
        _mm512_stream_si512((void *)(d + 192), e);
    }
    _mm_sfence();
    memcpy(d, s, n);
}

__attribute__((target("avx2"))) static void stream_avx2(uint8_t *d, const uint8_t *s, uint64_t n) {
    for (; n >= 128; n -= 128, d += 128, s += 128) {
        _mm_prefetch((const char *)s + PREFETCH_AHEAD, _MM_HINT_NTA);
        _mm_prefetch((const char *)s + PREFETCH_AHEAD + 64, _MM_HINT_NTA);
        __m256i a = _mm256_loadu_si256((const __m256i *)s);
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_stream_si256((__m256i *)d, a);
        _mm256_stream_si256((__m256i *)(d + 32), b);
        _mm256_stream_si256((__m256i *)(d + 64), c);
        _mm256_stream_si256((__m256i *)(d + 96), e);
    }
    _mm_sfence();
    memcpy(d, s, n);
}

static void stream_sse2(uint8_t *d, const uint8_t *s, uint64_t n) {
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32)), e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    _mm_sfence();
    memcpy(d, s, n);
}
#endif

/* One thread's copy: memcpy for small sizes, else streaming stores from a 64-byte aligned dst. */
static void copy_one(uint8_t *d, const uint8_t *s, uint64_t n) {
#if defined(__x86_64__)
    if (n >= stream_threshold) {
        uint64_t head = (64u - ((uintptr_t)d & 63u)) & 63u;
        memcpy(d, s, head);
        d += head, s += head, n -= head;
        if (__builtin_cpu_supports("avx512f")) stream_avx512(d, s, n);
        else if (__builtin_cpu_supports("avx2")) stream_avx2(d, s, n);
        else stream_sse2(d, s, n);
        return;
    }
#endif
    memcpy(d, s, n);
}

/* A copy shared by its threads: each claims the next CHUNK-byte piece until none is left, so a
 * thread that the scheduler parks (other processes share the cores) delays nobody. */
#define CHUNK (8u << 20)
typedef struct {
    uint8_t *dst;
    const uint8_t *src;
    uint64_t n;
    uint64_t next; /* atomic: offset of the next unclaimed piece */
} shared_copy;

static void *copy_pieces(void *arg) {
    shared_copy *c = arg;
    for (;;) {
        uint64_t pos = __atomic_fetch_add(&c->next, CHUNK, __ATOMIC_RELAXED);
        if (pos >= c->n) return NULL;
        uint64_t len = c->n - pos < CHUNK ? c->n - pos : CHUNK;
        copy_one(c->dst + pos, c->src + pos, len);
    }
}

static int cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int pa_memcpy_parallel(void *dst, const void *src, uint64_t n, int nthreads) {
    if (nthreads <= 0) {
        uint64_t by_size = n / parallel_threshold;
        int cpus = cpu_count();
        nthreads = by_size < (uint64_t)cpus ? (int)by_size : cpus;
    }
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads <= 1 || n < 2u * CHUNK) {
        copy_one(dst, src, n);
        return PA_OK;
    }
    /* pieces start on destination page boundaries */
    uint64_t head = (SLICE_ALIGN - ((uintptr_t)dst & (SLICE_ALIGN - 1))) & (SLICE_ALIGN - 1);
    memcpy(dst, src, head);
    shared_copy c = {(uint8_t *)dst + head, (const uint8_t *)src + head, n - head, 0};
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < nthreads; t++)
        started[t] = pthread_create(&threads[t], NULL, copy_pieces, &c) == 0;
    copy_pieces(&c); /* returns when every piece is claimed; threads that failed to start are fine */
    for (int t = 1; t < nthreads; t++)
        if (started[t]) pthread_join(threads[t], NULL);
    return PA_OK;
}
