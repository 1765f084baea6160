"""A put into a full store: spill, then wait for room up to the deadline, then fail.

`pa.put(value, timeout=...)`, `await pa.put_async(value, timeout=...)` and a task's large return
all create their object through here when the store has no room:

    create --ObjectStoreFullError--> can it ever fit? no -> raise now (the object is bigger
       ^                                   | yes            than the whole store)
       |                             ask the node to spill (MakeRoom: spilling.py)
       +------------ freed some? yes ------+
       |                                   | no (all pinned, disk full, spill limit)
       +-- sleep (1 ms, doubling to 50 ms) <-- deadline left? no -> raise, with the sizes and
                                                                    why nothing was spilled

With the default timeout of 0 a put fails as soon as nothing can be spilled (as in Ray). Frees
happen in other processes (an owner's FreeObjects, handled by the node) and nothing signals them
to a writer, so the wait polls; the backoff keeps a long wait at ~20 tries a second.
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
    """store.create_object until it fits: yields ("room", bytes) and is sent back what the
    node's MakeRoom answered, or yields ("sleep", seconds); returns the view."""
    waiter = None
    retried = False  # one more try after a spill round that freed nothing: its owner may have
    while True:      # deleted what it was about to spill
        try:
            return store.create_object(object_id, size_bytes, evictable=False)
        except ObjectStoreFullError as error:
            if error.capacity_bytes and error.requested_bytes > error.capacity_bytes:
                raise  # neither spilling nor waiting can help
            freed, why = yield "room", store.alloc_bytes_for(size_bytes)
            if freed or not retried:
                retried = not freed
                continue
            if why:
                error = ObjectStoreFullError(f"{error.args[0]}; spilling: {why}",
                                             error.requested_bytes, error.used_bytes,
                                             error.capacity_bytes)
            waiter = waiter or RoomWaiter(timeout_s)
            yield "sleep", waiter.retry_after(error)
            retried = False


def create_waiting(store, object_id: bytes, size_bytes: int, timeout_s: float | None,
                   make_room):
    """Create, spilling (`make_room(bytes)` -> [freed, why]) and retrying while the store is
    full (blocking the calling thread)."""
    steps = _create_steps(store, object_id, size_bytes, timeout_s)
    try:
        kind, amount = next(steps)
        while True:
            if kind == "room":
                kind, amount = steps.send(make_room(amount))
            else:
                time.sleep(amount)
                kind, amount = next(steps)
    except StopIteration as done:
        return done.value


async def create_waiting_async(store, object_id: bytes, size_bytes: int,
                               timeout_s: float | None, make_room):
    """The same, awaiting `make_room(bytes)` and sleeping on the caller's event loop."""
    steps = _create_steps(store, object_id, size_bytes, timeout_s)
    try:
        kind, amount = next(steps)
        while True:
            if kind == "room":
                kind, amount = steps.send(await make_room(amount))
            else:
                await asyncio.sleep(amount)
                kind, amount = next(steps)
    except StopIteration as done:
        return done.value
