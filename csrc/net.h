/* pyactor: socket helpers that must run without the Python GIL.
 *
 * pa_recv_spin polls a socket for up to spin_ns nanoseconds before giving up, so that a thread
 * waiting for an answer that comes within that time is never put to sleep and woken again (on a
 * virtual machine each wake-up costs tens of microseconds). It is called through cffi, which
 * releases the GIL for the call: other Python threads run while it polls.
 *
 * Like store.h, this file is also cffi cdef source (see pyactor/_private/store_build.py).
 */
#ifndef PYACTOR_NET_H
#define PYACTOR_NET_H

/* Receive into buf what the socket fd holds, polling without blocking for up to spin_ns.
 * Returns the bytes read (0: the peer closed), PA_NET_NOTHING_YET when nothing came in time,
 * or -errno for a socket error. */
#define PA_NET_NOTHING_YET -1000000
long pa_recv_spin(int fd, char *buf, long len, long spin_ns);

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
