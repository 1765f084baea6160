/* See net.h. */
#include "net.h"

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

static int64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

long pa_recv_spin(int fd, char *buf, long len, long spin_ns) {
    const int64_t deadline = monotonic_ns() + spin_ns;
    for (;;) {
        ssize_t got = recv(fd, buf, (size_t)len, MSG_DONTWAIT);
        if (got >= 0) {
            return (long)got;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return -(long)errno;
        }
        if (monotonic_ns() >= deadline) {
            return PA_NET_NOTHING_YET;
        }
    }
}

/* ---- The worker's hot wait after an answer (pa_poll_spin; see net.h) ---------------------- */

#include <poll.h>
#include <sched.h>

#define SPIN_POLL_CHUNK 64 /* fds polled per poll() call: a stack array, any count in chunks */

/* One non-blocking look at fds[0..nfds): how many are readable (or closed, or in error), or
 * -errno. */
static long poll_once(const int *fds, long nfds) {
    struct pollfd chunk[SPIN_POLL_CHUNK];
    long ready = 0;
    for (long start = 0; start < nfds; start += SPIN_POLL_CHUNK) {
        long count = nfds - start < SPIN_POLL_CHUNK ? nfds - start : SPIN_POLL_CHUNK;
        for (long i = 0; i < count; i++) {
            chunk[i].fd = fds[start + i];
            chunk[i].events = POLLIN;
            chunk[i].revents = 0;
        }
        int got = poll(chunk, (nfds_t)count, 0);
        if (got < 0) {
            if (errno == EINTR) {
                continue; /* a signal: its handler runs once we return, the bound is short */
            }
            return -(long)errno;
        }
        ready += got;
    }
    return ready;
}

long pa_poll_spin(const int *fds, long nfds, long spin_ns, int yield_cpu) {
    if (nfds <= 0) {
        return 0;
    }
    const int64_t deadline = monotonic_ns() + spin_ns;
    for (;;) {
        long ready = poll_once(fds, nfds);
        if (ready != 0) {
            return ready;
        }
        if (monotonic_ns() >= deadline) {
            return 0;
        }
        if (yield_cpu) {
            sched_yield(); /* whoever else is runnable on this CPU goes first */
        }
    }
}
