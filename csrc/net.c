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
