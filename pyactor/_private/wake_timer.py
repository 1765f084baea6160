"""A kernel timer the IO thread watches, armed by user threads without waking anyone.

direct.py sends a call at `.remote()` and leaves its answer on the calling thread's connection
for that thread's `get`. Should the thread go off to do something else, the answer must still be
read, so the sender arms this timer: a Linux timerfd registered with the IO thread's loop.
Arming and disarming are one syscall each in the user thread; the IO thread wakes only if the
timer fires (an answer was left unclaimed too long), where waking it on every call would cost a
context switch, its CPU and a GIL hand-over.

    user thread:  send at submit --arm (first unclaimed answer)--> [timerfd]
                  get claims the answer --disarm (last one)------> [timerfd]
    IO thread:    [timerfd] readable --> take the late answers (direct.py: _on_timer)

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


class WakeTimer:
    """One-shot timer on a file descriptor: arm() from any thread, fd read by the loop."""

    __slots__ = ("fd", "_settime", "_ffi", "_spec", "_delay_s")

    def __init__(self, fd: int, ffi, libc):
        self.fd = fd
        self._ffi = ffi
        self._settime = libc.timerfd_settime
        self._spec = ffi.new("struct itimerspec *")  # it_interval zero: one shot
        self._delay_s = 0.0

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

    def arm(self, delay_s: float) -> bool:
        """Fire delay_s from now (any thread; re-arming moves the deadline). False if the
        kernel refused (the caller then must not count on the timer)."""
        if delay_s != self._delay_s:  # (armed under DirectPath.lock: one at a time)
            self._delay_s = delay_s
            self._spec.it_value.tv_sec = int(delay_s)
            self._spec.it_value.tv_nsec = int((delay_s - int(delay_s)) * 1e9)
        return self._settime(self.fd, 0, self._spec, self._ffi.NULL) == 0

    def disarm(self) -> bool:
        """Stop it from firing (any thread)."""
        self._delay_s = 0.0
        self._spec.it_value.tv_sec = 0
        self._spec.it_value.tv_nsec = 0
        return self._settime(self.fd, 0, self._spec, self._ffi.NULL) == 0

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
