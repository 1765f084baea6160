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

/* ---- The direct lane's frames (see net.h) ----------------------------------------------------
 * Why in C: the Python version (recv into a buffer, copy out, FrameDecoder.feed, a header concat
 * and sendall) was ~12-15 us of a ~100 us round trip. The GIL is released by cffi for the whole
 * call; errors are return codes and Python raises (the library never prints or exits). */

#include <math.h>
#include <poll.h>
#include <string.h>
#include <sys/uio.h>

#define PA_FRAME_HEADER_BYTES 4
#define PA_FRAME_RAW_FLAG 0x80000000u  /* a raw payload: never expected on the direct lane */

static uint32_t frame_body_bytes(const char *header) {
    const unsigned char *h = (const unsigned char *)header;
    return ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
}

/* 1: a whole frame is in buf; 0: not yet; or PA_NET_TOO_LARGE / PA_NET_GROW. */
static long frame_state(const char *buf, long filled, long capacity, long max_frame_bytes) {
    if (filled < PA_FRAME_HEADER_BYTES) {
        return 0;
    }
    const uint32_t body = frame_body_bytes(buf);
    if ((body & PA_FRAME_RAW_FLAG) || (int64_t)body > max_frame_bytes) {
        return PA_NET_TOO_LARGE;
    }
    if ((int64_t)body + PA_FRAME_HEADER_BYTES > capacity) {
        return PA_NET_GROW;
    }
    return filled >= (long)body + PA_FRAME_HEADER_BYTES;
}

/* Sleep until fd is readable or the deadline: 1 readable, 0 deadline, PA_NET_INTERRUPTED, or
 * -errno. */
static long wait_readable(int fd, double deadline_s) {
    struct pollfd watched = {.fd = fd, .events = POLLIN};
    struct timespec remaining, *timeout = NULL;
    if (deadline_s >= 0) {
        const int64_t left_ns = (int64_t)llround(deadline_s * 1e9) - monotonic_ns();
        if (left_ns <= 0) {
            return 0;
        }
        remaining.tv_sec = left_ns / 1000000000;
        remaining.tv_nsec = left_ns % 1000000000;
        timeout = &remaining;
    }
    const int ready = ppoll(&watched, 1, timeout, NULL);
    if (ready < 0) {
        return errno == EINTR ? PA_NET_INTERRUPTED : -(long)errno;
    }
    return ready;  /* (POLLHUP / POLLERR count: the recv that follows says what happened) */
}

long pa_recv_frame(int fd, char *buf, long capacity, pa_inbox *inbox, long max_frame_bytes,
                   long spin_ns, double deadline_s) {
    if (fd < 0) {
        return -EBADF;
    }
    if (inbox->consumed < 0 || inbox->consumed > inbox->filled || inbox->filled > capacity) {
        return -EINVAL;
    }
    if (inbox->consumed > 0) {  /* drop the frame the caller has taken */
        inbox->filled -= inbox->consumed;
        if (inbox->filled > 0) {
            memmove(buf, buf + inbox->consumed, (size_t)inbox->filled);
        }
        inbox->consumed = 0;
    }
    const int64_t spin_until = spin_ns > 0 ? monotonic_ns() + spin_ns : 0;
    for (;;) {
        const long state = frame_state(buf, inbox->filled, capacity, max_frame_bytes);
        if (state == 1) {
            const uint32_t body = frame_body_bytes(buf);
            inbox->consumed = (long)body + PA_FRAME_HEADER_BYTES;
            return (long)body;
        }
        if (state < 0) {
            return state;
        }
        const ssize_t got = recv(fd, buf + inbox->filled, (size_t)(capacity - inbox->filled),
                                 MSG_DONTWAIT);
        if (got > 0) {
            inbox->filled += got;
            continue;
        }
        if (got == 0) {
            return PA_NET_CLOSED;
        }
        if (errno == EINTR) {
            continue;  /* (not asleep: a signal's handler runs once we return, at the latest) */
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -(long)errno;
        }
        if (spin_until && monotonic_ns() < spin_until) {
            continue;
        }
        const long ready = wait_readable(fd, deadline_s);
        if (ready == 0) {
            return PA_NET_NOTHING_YET;
        }
        if (ready < 0) {
            return ready;
        }
    }
}

/* Wait for room to write: 0, PA_NET_INTERRUPTED or -errno. */
static long wait_writable(int fd) {
    struct pollfd watched = {.fd = fd, .events = POLLOUT};
    if (poll(&watched, 1, -1) < 0) {
        return errno == EINTR ? PA_NET_INTERRUPTED : -(long)errno;
    }
    return 0;
}

long pa_send_frame(int fd, const char *body, long body_len, long offset) {
    if (fd < 0) {
        return -EBADF;
    }
    const long total = body_len + PA_FRAME_HEADER_BYTES;
    const unsigned char header[PA_FRAME_HEADER_BYTES] = {
        (unsigned char)(body_len >> 24), (unsigned char)(body_len >> 16),
        (unsigned char)(body_len >> 8), (unsigned char)body_len};
    while (offset < total) {
        struct iovec parts[2];
        int count = 0;
        if (offset < PA_FRAME_HEADER_BYTES) {
            parts[count].iov_base = (void *)(header + offset);
            parts[count++].iov_len = (size_t)(PA_FRAME_HEADER_BYTES - offset);
        }
        const long body_offset =
            offset > PA_FRAME_HEADER_BYTES ? offset - PA_FRAME_HEADER_BYTES : 0;
        if (body_len > body_offset) {
            parts[count].iov_base = (void *)(body + body_offset);
            parts[count++].iov_len = (size_t)(body_len - body_offset);
        }
        /* sendmsg, not writev: MSG_NOSIGNAL turns a closed peer into EPIPE, not SIGPIPE. */
        struct msghdr message = {.msg_iov = parts, .msg_iovlen = (size_t)count};
        const ssize_t sent = sendmsg(fd, &message, MSG_NOSIGNAL);
        if (sent >= 0) {
            offset += sent;
            continue;
        }
        if (errno == EINTR) {
            return offset;  /* the caller runs the signal's handler, then continues */
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -(long)errno;
        }
        const long waited = wait_writable(fd);
        if (waited == PA_NET_INTERRUPTED) {
            return offset;
        }
        if (waited < 0) {
            return waited;
        }
    }
    return offset;
}

/* ---- The worker's hot wait after an answer (pa_poll_spin; see net.h) ---------------------- */

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
