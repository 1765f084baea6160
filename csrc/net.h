/* pyactor: socket helpers that must run without the Python GIL.
 *
 * A thread waiting for an answer that comes within tens of microseconds should poll for it
 * rather than sleep and be woken (on a virtual machine each wake-up costs tens of
 * microseconds). The functions here are called through cffi, which releases the GIL for the
 * call: other Python threads run while one polls or sleeps. Errors are return codes.
 *
 * Like store.h, this file is also cffi cdef source (see pyactor/_private/store_build.py).
 */
#ifndef PYACTOR_NET_H
#define PYACTOR_NET_H

#define PA_NET_NOTHING_YET -1000000  /* nothing (whole) came in time */

/* ---- The direct lane's frames (BlockingConnection): one C call per frame each way ----------
 *
 * A frame is a 4-byte big-endian body length and the body (transport.py). A thread that waits for
 * one answer on its own connection reads the whole frame here, header and body, polling for up to
 * spin_ns and then sleeping in the kernel until the deadline, all without the GIL; and it writes
 * header and body with one sendmsg. Bytes read past the frame stay in the buffer for the next call.
 */

/* What pa_recv_frame returns besides a body length (>= 0) and -errno. */
#define PA_NET_CLOSED -1000001      /* the peer closed (also in the middle of a frame) */
#define PA_NET_TOO_LARGE -1000002   /* the header declares more than max_frame_bytes, or raw */
#define PA_NET_GROW -1000003        /* the frame does not fit in capacity: grow and call again */
#define PA_NET_INTERRUPTED -1000004 /* a signal came while it slept: run handlers, call again */

/* What a connection's inbox holds: `filled` bytes read, of which the first `consumed` are the
 * frame the last call returned (dropped by the next call). Kept in C, not in Python variables,
 * so that a signal handler raising between two Python statements cannot put them out of step. */
typedef struct {
    long filled;
    long consumed;
} pa_inbox;

/* Read one whole frame from fd into buf (capacity bytes), after dropping the frame the last
 * call returned. On success the frame is at buf[0 .. 4 + result) and inbox->filled counts it and
 * whatever followed it. Polls without sleeping for up to spin_ns, then sleeps until deadline_s
 * (CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic()); deadline_s < 0 sleeps
 * without limit, one already past never sleeps. PA_NET_NOTHING_YET when no whole frame came in
 * time (what did come is kept); -EINVAL if inbox does not describe buf. */
long pa_recv_frame(int fd, char *buf, long capacity, pa_inbox *inbox, long max_frame_bytes,
                   long spin_ns, double deadline_s);

/* Write the frame of body (its header first) to fd, from byte `offset` of the frame on: returns
 * the frame bytes written in all, which is 4 + body_len unless a signal interrupted the write
 * (then call again with that offset after running the handlers), or -errno. Waits for room in
 * the socket's buffer also when fd is non-blocking. */
long pa_send_frame(int fd, const char *body, long body_len, long offset);

/* ---- The worker's hot wait after an answer ---------------------------------------------------
 *
 * pa_poll_spin polls the sockets fds[0..nfds) without blocking, again and again, for up to
 * spin_ns nanoseconds, and returns as soon as any of them is readable (data, the peer's close,
 * or an error), so that a worker whose next call comes within that time is not put to sleep
 * and woken again. A spinning thread must not hold a CPU that another runnable task waits for:
 * with loadavg_fd (an open /proc/loadavg, or -1 not to look) it gives up, returning
 * PA_SPIN_CROWDED, as soon as more than max_runnable tasks are runnable system-wide (pass the
 * number of CPUs; the spinner itself is one of them), looking at the start and every 20 us.
 * Called through cffi, which releases the GIL. Returns how many fds are readable (> 0), 0 when
 * none became readable in time, PA_SPIN_CROWDED, or -errno. */
#define PA_SPIN_CROWDED -1000001
long pa_poll_spin(const int *fds, long nfds, long spin_ns, int loadavg_fd, long max_runnable);

#endif
