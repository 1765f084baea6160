"""Waiting for room in a full store: `pa.put(value, timeout=...)` and `put_async`.

A put into a store full of objects that are still referenced fails at once by default (as in
Ray). With a timeout, it retries until other owners free enough, or the deadline passes:

    create --ObjectStoreFullError--> can it ever fit? no -> raise now (the object is bigger
       ^                                   | yes            than the whole store)
       +------ sleep (1 ms, doubling to 50 ms) <-- deadline left? no -> raise, with the sizes

Frees happen in other processes (an owner's FreeObjects, handled by the node) and nothing
signals them to a writer, so the wait polls; the backoff keeps a long wait at ~20 tries a second.
"""

from __future__ import annotations

import asyncio
import time

from pyactor.exceptions import ObjectStoreFullError

FIRST_BACKOFF_S = 0.001
MAX_BACKOFF_S = 0.05


def check_put_timeout(timeout) -> float | None:
    """0 (the default): fail at once when full; None: wait as long as it takes; else seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a non-negative number of seconds, "
                         f"got {timeout!r}")
    return float(timeout)


class RoomWaiter:
    """One put's retries: `retry_after(error)` says how long to sleep, or raises."""

    def __init__(self, timeout_s: float | None):
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.backoff_s = FIRST_BACKOFF_S

    def retry_after(self, error: ObjectStoreFullError) -> float:
        if error.capacity_bytes and error.requested_bytes > error.capacity_bytes:
            raise error  # waiting cannot help
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            if self.timeout_s:
                raise ObjectStoreFullError(
                    f"{error.args[0]}; still full after waiting {self.timeout_s:g} s",
                    error.requested_bytes, error.used_bytes, error.capacity_bytes) from None
            raise error
        sleep_s = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
        return sleep_s if self.deadline is None else min(sleep_s, self.deadline - now)


def _create_steps(store, object_id: bytes, size_bytes: int, timeout_s: float | None):
    """store.create_object until it fits: yields how long to sleep, returns the view."""
    waiter = None
    while True:
        try:
            return store.create_object(object_id, size_bytes, evictable=False)
        except ObjectStoreFullError as error:
            waiter = waiter or RoomWaiter(timeout_s)
            yield waiter.retry_after(error)


def create_waiting(store, object_id: bytes, size_bytes: int, timeout_s: float | None):
    """Create, retrying while the store is full (blocking the calling thread)."""
    steps = _create_steps(store, object_id, size_bytes, timeout_s)
    try:
        while True:
            time.sleep(next(steps))
    except StopIteration as done:
        return done.value


async def create_waiting_async(store, object_id: bytes, size_bytes: int,
                               timeout_s: float | None):
    """The same, sleeping on the caller's event loop."""
    steps = _create_steps(store, object_id, size_bytes, timeout_s)
    try:
        while True:
            await asyncio.sleep(next(steps))
    except StopIteration as done:
        return done.value
