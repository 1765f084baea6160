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

#endif
