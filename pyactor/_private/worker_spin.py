"""The worker's hot wait: after answering, look for the next call before sleeping in epoll.

A worker that writes an answer and goes straight back to `epoll_wait` is put to sleep, and
woken again by the kernel when the next call comes: on a virtual machine that wake-up costs
tens of microseconds of the caller's round trip. When calls come back to back (a caller doing
`pa.get(actor.f.remote())` in a loop), the worker instead polls its sockets for a short bound
first. The poll runs in C without the GIL (csrc/net.c, `pa_poll_spin`), so the worker's other
threads run meanwhile; it watches every connection of the task endpoint and its listener, so
another caller's call (or a new caller) ends the wait as well as the next call of the one just
answered. Once something is readable it returns, and the event loop reads it as usual (its
`epoll_wait` then finds it at once, without sleeping).

    main thread: data_received -> calls run, answers written -> after_batch()
        spinning:  pa_poll_spin(task endpoint sockets + listener, SPIN_NS)    [C, no GIL]
                   something readable  -> return, the loop reads it
                   nothing in time     -> a miss; MISSES_TO_REST misses in a row: rest
                   others need the CPU -> return at once (crowded; not a miss), and skip
                                          the next 1, 2, 4... 64 batches' waits
        resting:   note when the batch ended; a batch that ends within SPIN_NS of the
                   previous one (its call came sooner still) starts spinning again

So spinning costs nothing where calls do not come back quickly (a few misses, then one clock
read per batch; a worker whose calls each run longer than the bound stays resting, where a
saved wake-up would matter least), and
it never holds a CPU that another task waits for: the spin reads how many tasks are runnable
system-wide (/proc/loadavg, every 20 us) and gives up as soon as there are more than CPUs. On a
busy machine (a Pool of many workers, other programs) the wait is then a few microseconds, and
the worker sleeps in epoll as it did without spinning. (Yielding the CPU between polls instead,
sched_yield, did not help: a spinning worker on a loaded 2-core machine made round trips 2.2x
slower with or without it; docs/worker-path.md.)

Only sync work on the main thread spins (tasks, plain actors): an async actor's coroutines and a
threaded actor's answers need the event loop, which a spin would hold. A signal that arrives
during a spin is handled when the spin ends, at most SPIN_NS later.
"""

from __future__ import annotations

import os
import time

try:  # the compiled part (csrc/net.c)
    from pyactor._store_cffi import ffi as _ffi, lib as _lib
    _CROWDED = _lib.PA_SPIN_CROWDED
except ImportError:  # pragma: no cover - the extension is built by every install
    _ffi = _lib = _CROWDED = None

# How long a worker polls after an answer, in microseconds (0 turns spinning off). The round
# trip of a call made right after the previous answer is the caller's Python turn, 50-100 us;
# see docs/worker-path.md for the measurement behind the default.
SPIN_NS = int(float(os.environ.get("PYACTOR_WORKER_SPIN_US", "200")) * 1000)
MISSES_TO_REST = 3  # waits in a row that caught nothing: stop spinning until calls come quickly
# After a wait cut short by a crowded machine, skip the next 1, 2, 4... up to this many batches'
# waits before looking again (each look costs ~3 us: a poll and a read of /proc/loadavg).
MAX_CROWDED_SKIP = 64


def _open_loadavg() -> int:
    """/proc/loadavg, where a spin reads how many tasks are runnable (-1: not Linux)."""
    try:
        return os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


class CallSpinner:
    """Decides whether the worker polls after an answer, and polls. Main thread only."""

    def __init__(self, spin_ns: int = SPIN_NS, clock=time.monotonic_ns):
        if spin_ns < 0:
            raise ValueError(f"spin_ns must be >= 0, not {spin_ns}")
        self.spin_ns = spin_ns
        self._clock = clock  # monotonic nanoseconds (tests pass their own)
        self.usable = spin_ns > 0 and _lib is not None
        self.spinning = self.usable  # on until it misses; `resting` is the other state
        self.resting = False
        self.misses = 0
        self.caught = 0   # waits that ended with something readable (counters for tests and
        self.missed = 0   # docs/worker-path.md; not on any decision path)
        self.crowded = 0  # waits given up because another task waited for a CPU
        self._skip = 0  # batches whose wait is skipped: the machine was crowded a moment ago
        self._next_skip = 1
        self._loadavg_fd = _open_loadavg() if self.usable else -1
        self.max_runnable = os.cpu_count() or 1
        self._ended_ns = 0
        self._listener_fds: list[int] = []
        self._connection_fds: dict[object, int] = {}
        self._fds = _ffi.new("int[]", 0) if _ffi is not None else None
        self._fd_count = 0

    # -- which sockets to watch ------------------------------------------------------------
    def watch_listeners(self, fds: list[int]) -> None:
        self._listener_fds = list(fds)
        self._rebuild()

    def watch(self, connection, fd: int) -> None:
        self._connection_fds[connection] = fd
        self._rebuild()

    def unwatch(self, connection) -> None:
        if self._connection_fds.pop(connection, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        if _ffi is None:
            return
        fds = list(self._connection_fds.values())
        fds.extend(self._listener_fds)
        self._fds = _ffi.new("int[]", fds)
        self._fd_count = len(fds)

    # -- the decision ------------------------------------------------------------------------
    def stop_for_good(self) -> None:
        """This worker became an async or threaded actor: its loop must never be held."""
        self.usable = self.spinning = self.resting = False
        self.close()

    def close(self) -> None:
        if self._loadavg_fd >= 0:
            os.close(self._loadavg_fd)
            self._loadavg_fd = -1

    def after_batch(self) -> None:
        """The connection's received calls are answered; the loop is about to sleep."""
        if self.resting:
            # Calls come quickly again when this batch ended within the bound of the last one
            # (its call arrived sooner still): spin from now on, starting with this wait.
            now = self._clock()
            if now - self._ended_ns > self.spin_ns:
                self._ended_ns = now
                return
            self.spinning, self.resting, self.misses = True, False, 0
        elif not self.spinning:
            return
        elif self._skip:
            self._skip -= 1
            return
        ready = _lib.pa_poll_spin(self._fds, self._fd_count, self.spin_ns, self._loadavg_fd,
                                  self.max_runnable)
        if ready == _CROWDED:  # says nothing about when calls come
            self.crowded += 1
            self._skip = self._next_skip
            self._next_skip = min(2 * self._next_skip, MAX_CROWDED_SKIP)
            return
        self._next_skip = 1
        if ready > 0:
            self.misses = 0
            self.caught += 1
            return
        self.missed += 1
        self.misses += 1
        if self.misses >= MISSES_TO_REST:
            self.spinning, self.resting = False, True
            self._ended_ns = self._clock()
