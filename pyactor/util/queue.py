"""Queue: a FIFO queue held by an actor, shared by every task and actor that gets a copy.

    producer --put(item)--> [_QueueActor: asyncio.Queue(maxsize)] <--get()-- consumer

The actor is async, so a blocked `get` (or a `put` on a full queue) waits on the actor's loop
without holding up the other callers; a timeout becomes `Empty`/`Full` on the actor's side and is
raised here as the plain exception (not wrapped in TaskError), as ray.util.queue does. The Queue
object is picklable: copies passed to tasks all talk to the same actor.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

import pyactor as pa


class Empty(Exception):
    """get() found the queue empty (block=False, or nothing came before the timeout)."""


class Full(Exception):
    """put() found the queue full (block=False, or no room came before the timeout)."""


class _QueueActor:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout_s=None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout_s)
        except asyncio.TimeoutError:
            raise Full(f"no room in the queue (maxsize {self.maxsize}) "
                       f"within {timeout_s} s") from None

    async def get(self, timeout_s=None):
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except asyncio.TimeoutError:
            raise Empty(f"nothing came into the queue within {timeout_s} s") from None

    async def put_nowait(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize {self.maxsize})") from None

    async def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"cannot add {len(items)} items to a queue holding "
                       f"{self.queue.qsize()} of maxsize {self.maxsize}")
        for item in items:
            self.queue.put_nowait(item)

    async def get_nowait(self):
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    async def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"cannot get {num_items} items from a queue holding "
                        f"{self.queue.qsize()}")
        return [self.queue.get_nowait() for _ in range(num_items)]

    async def ping(self) -> None:
        return None


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"'timeout' must be None or a non-negative number, got {timeout!r}")


def _unwrapped(error: BaseException) -> BaseException:
    """The actor's Empty/Full arrive as a TaskError that is also an Empty/Full: give the
    caller the plain one."""
    for plain in (Empty, Full):
        if isinstance(error, plain) and type(error) is not plain:
            return plain(*error.__cause__.args) if isinstance(error.__cause__, plain) \
                else plain(str(error))
    return error


class Queue:
    """A first-in first-out queue on an actor (maxsize 0: unbounded), like ray.util.Queue.

    `actor_options` go to the actor's `.options(...)` (e.g. resources, or a name to find it by).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative int, got {maxsize!r}")
        self.maxsize = maxsize
        self.actor = pa.remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return pa.get(self._handle().qsize.remote())

    qsize = size

    def empty(self) -> bool:
        return pa.get(self._handle().empty.remote())

    def full(self) -> bool:
        return pa.get(self._handle().full.remote())

    # -------------------------------------------------------------- put / get
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; on a full queue wait (up to `timeout` s) or raise Full."""
        self._call_sync(self._put_ref(item, block, timeout))

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:
        await self._call_async(self._put_ref(item, block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; on an empty queue wait (up to `timeout` s) or raise Empty."""
        return self._call_sync(self._get_ref(block, timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        return await self._call_async(self._get_ref(block, timeout))

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all items, or none (Full) when they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError(f"items must be an iterable, got {type(items).__name__}")
        self._call_sync(self._handle().put_nowait_batch.remote(list(items)))

    def get_nowait_batch(self, num_items: int) -> list:
        """Take exactly num_items items, or none (Empty) when fewer are queued."""
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError(f"num_items must be an int, got {type(num_items).__name__}")
        if num_items < 0:
            raise ValueError(f"num_items must be non-negative, got {num_items}")
        return self._call_sync(self._handle().get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor (its items are lost). Without force, calls already sent to it
        get up to grace_period_s to be answered before it is killed."""
        if self.actor is None:
            return
        if not force:
            pa.wait([self.actor.ping.remote()], timeout=grace_period_s)
        pa.kill(self.actor, no_restart=True)
        self.actor = None

    # -------------------------------------------------------------- helpers
    def _handle(self):
        if self.actor is None:
            raise RuntimeError("this Queue was shut down")
        return self.actor

    def _put_ref(self, item, block, timeout):
        if not block:
            return self._handle().put_nowait.remote(item)
        _check_timeout(timeout)
        return self._handle().put.remote(item, timeout)

    def _get_ref(self, block, timeout):
        if not block:
            return self._handle().get_nowait.remote()
        _check_timeout(timeout)
        return self._handle().get.remote(timeout)

    @staticmethod
    def _call_sync(ref):
        try:
            return pa.get(ref)
        except (Empty, Full) as error:
            raise _unwrapped(error) from None

    @staticmethod
    async def _call_async(ref):
        try:
            return await ref
        except (Empty, Full) as error:
            raise _unwrapped(error) from None
