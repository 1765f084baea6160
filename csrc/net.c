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
#include <unistd.h>

#define SPIN_POLL_CHUNK 64 /* fds polled per poll() call: a stack array, any count in chunks */
#define SPIN_CROWD_CHECK_NS 20000 /* how often a spin looks whether others wait for a CPU */

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

/* How many scheduling entities are runnable system-wide now: the numerator of the fourth field
 * of /proc/loadavg ("0.52 0.94 1.23 3/96 2759"), read from an open fd; -1 if unreadable. */
static long runnable_now(int loadavg_fd) {
    char text[128];
    ssize_t got = pread(loadavg_fd, text, sizeof text - 1, 0);
    if (got <= 0) {
        return -1;
    }
    text[got] = '\0';
    const char *at = text;
    for (int spaces = 0; spaces < 3; at++) {
        if (*at == '\0') {
            return -1;
        }
        if (*at == ' ') {
            spaces++;
        }
    }
    long runnable = 0;
    for (; *at >= '0' && *at <= '9'; at++) {
        runnable = runnable * 10 + (*at - '0');
    }
    return *at == '/' ? runnable : -1;
}

long pa_poll_spin(const int *fds, long nfds, long spin_ns, int loadavg_fd, long max_runnable) {
    if (nfds <= 0) {
        return 0;
    }
    const int64_t started = monotonic_ns();
    const int64_t deadline = started + spin_ns;
    int64_t next_crowd_check = started;
    for (;;) {
        long ready = poll_once(fds, nfds);
        if (ready != 0) {
            return ready;
        }
        int64_t now = monotonic_ns();
        if (now >= deadline) {
            return 0;
        }
        if (loadavg_fd >= 0 && now >= next_crowd_check) {
            if (runnable_now(loadavg_fd) > max_runnable) {
                return PA_SPIN_CROWDED; /* someone waits for a CPU: do not hold one */
            }
            next_crowd_check = now + SPIN_CROWD_CHECK_NS;
        }
    }
}
