"""A kernel timer the IO thread watches, armed by user threads without waking anyone.

direct.py sends a call at `.remote()` and leaves its answer on the calling thread's connection
for that thread's `get`. Should the thread go off to do something else, the answer must still be
read, so this timer, a Linux timerfd registered with the IO thread's loop, ticks while calls
are sent that way: the IO thread wakes once a tick to take the answers left unread too long,
where waking it on every call would cost a context switch, its CPU and a GIL hand-over. A
ticking timer needs no syscall per call (re-arming a one-shot timer per call did: two, ~7 us
on a VM, where reprogramming the timer traps to the host).

    user thread:  send at submit --tick (if it is not ticking)-------> [timerfd]
    IO thread:    [timerfd] readable --> take the late answers (direct.py: _on_timer);
                  nothing sent since the last tick, nothing unread --disarm--> [timerfd]

timerfd is Linux-only and reached through cffi's ABI mode (no compiled code): `WakeTimer.create()`
returns None elsewhere, and nothing is then sent at submit.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("pyactor.wake_timer")

_CLOCK_MONOTONIC = 1
_CDEF = """
struct timespec { long tv_sec; long tv_nsec; };
struct itimerspec { struct timespec it_interval; struct timespec it_value; };
int timerfd_create(int clockid, int flags);
int timerfd_settime(int fd, int flags, const struct itimerspec *new_value,
                    struct itimerspec *old_value);
"""
_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        from cffi import FFI
        ffi = FFI()
        ffi.cdef(_CDEF)
        _libc = (ffi, ffi.dlopen(None))
    return _libc


def _split(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


class WakeTimer:
    """A ticking timer on a file descriptor: tick() and disarm() from any thread, the fd read
    by the loop."""

    __slots__ = ("fd", "_settime", "_ffi", "_spec")

    def __init__(self, fd: int, ffi, libc):
        self.fd = fd
        self._ffi = ffi
        self._settime = libc.timerfd_settime
        self._spec = ffi.new("struct itimerspec *")

    @classmethod
    def create(cls) -> "WakeTimer | None":
        """A one-shot timer, or None where timerfd is missing."""
        if not hasattr(os, "O_NONBLOCK") or not os.uname().sysname == "Linux":
            return None
        try:
            ffi, libc = _load_libc()
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        except Exception as error:  # noqa: BLE001 - no cffi, no symbol: send nothing at submit
            logger.debug("no timerfd: %s", error)
            return None
        if fd < 0:
            return None
        return cls(fd, ffi, libc)

    def tick(self, period_s: float) -> bool:
        """Fire every period_s from now on, until disarmed (any thread). False if the kernel
        refused (the caller then must not count on the timer)."""
        return self._set(period_s, period_s)

    def disarm(self) -> bool:
        """Stop it from firing (any thread)."""
        return self._set(0.0, 0.0)

    def _set(self, first_s: float, period_s: float) -> bool:
        spec = self._spec  # (set under DirectPath.lock: one thread at a time)
        spec.it_value.tv_sec, spec.it_value.tv_nsec = _split(first_s)
        spec.it_interval.tv_sec, spec.it_interval.tv_nsec = _split(period_s)
        return self._settime(self.fd, 0, spec, self._ffi.NULL) == 0

    def clear(self) -> None:
        """The loop saw the fd readable: consume the expiry count."""
        try:
            os.read(self.fd, 8)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
