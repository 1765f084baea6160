"""ActorPool: spread work over a fixed set of actors, as ray.util.ActorPool does.

Each submitted value is handed, with an idle actor, to the user's `fn(actor, value)`, which
returns the ObjectRef of the call it made; the actor is busy until that ref's result is taken
with get_next (in submission order) or get_next_unordered (whichever finished first). Values
submitted while every actor is busy wait in a FIFO and go out as actors come back.

    submit(fn, v) --idle actor?--> fn(actor, v) -> ref   (else: queued in _pending)
    get_next*()   --pa.wait/pa.get--> value; the actor goes back to idle -> next queued value

Like Ray's, the pool is not thread-safe, and an actor whose call raised ActorDiedError is
dropped from the pool instead of being handed more work.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Iterator

import pyactor as pa


class ActorPool:
    """A fixed pool of actor handles taking work in turn."""

    def __init__(self, actors: Iterable):
        self._idle: list = list(actors)
        self._busy: dict = {}                    # ref -> (index, actor)
        self._ref_at: dict[int, Any] = {}        # submission index -> ref, until returned
        self._next_index = 0                     # index the next submitted value gets
        self._next_return = 0                    # index get_next returns next
        self._pending: collections.deque = collections.deque()  # (fn, value) waiting

    # -------------------------------------------------------------- submitting
    def map(self, fn: Callable, values: Iterable) -> Iterator:
        """Results of fn(actor, v) for each v, in the order of `values` (lazily fetched).
        Results still pending from earlier submits are dropped first, as in Ray."""
        return self._map(fn, values, self.get_next)

    def map_unordered(self, fn: Callable, values: Iterable) -> Iterator:
        """Like map, but each result comes as soon as it is ready."""
        return self._map(fn, values, self.get_next_unordered)

    def _map(self, fn: Callable, values: Iterable, take: Callable) -> Iterator:
        self._drop_outstanding()
        for value in values:
            self.submit(fn, value)

        def results():
            while self.has_next():
                yield take()
        return results()

    def submit(self, fn: Callable, value: Any) -> None:
        """Run fn(actor, value) on an idle actor now, or when one becomes idle."""
        if not self._idle:
            self._pending.append((fn, value))
            return
        actor = self._idle.pop()
        ref = fn(actor, value)
        if not isinstance(ref, pa.ObjectRef):
            self._idle.append(actor)
            raise TypeError(f"ActorPool's fn must return the ObjectRef of an actor call, "
                            f"got {type(ref).__name__}")
        self._busy[ref] = (self._next_index, actor)
        self._ref_at[self._next_index] = ref
        self._next_index += 1

    # -------------------------------------------------------------- results
    def has_next(self) -> bool:
        """Whether any submitted result has not been returned yet."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order; TimeoutError if not ready within `timeout`
        (with ignore_if_timedout=True that result is given up and its actor freed)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_index:
            raise ValueError("get_next() cannot follow get_next_unordered(): the order "
                             "is lost")
        ref = self._ref_at[self._next_return]
        if timeout is not None:
            ready, _ = pa.wait([ref], timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError("Timed out waiting for result")
                self._forget(ref)
                raise TimeoutError(f"Timed out waiting for result; {ref} was given up")
        return self._take(ref)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Any finished result (the first to finish); TimeoutError if none is ready in time."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = pa.wait(list(self._busy), num_returns=1, timeout=timeout)
        if not ready:
            if not ignore_if_timedout:
                raise TimeoutError("Timed out waiting for result")
            ref = next(iter(self._busy))
            self._forget(ref)
            raise TimeoutError(f"Timed out waiting for result; {ref} was given up")
        return self._take(ready[0])

    def _take(self, ref) -> Any:
        index, actor = self._busy.pop(ref)
        del self._ref_at[index]
        self._next_return = max(self._next_return, index + 1)
        alive = True
        try:
            return pa.get(ref)
        except pa.ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(actor, alive)

    def _forget(self, ref) -> None:
        index, actor = self._busy.pop(ref)
        del self._ref_at[index]
        self._next_return = max(self._next_return, index + 1)
        self._return_actor(actor, True)

    def _drop_outstanding(self) -> None:
        while self._busy:
            self._forget(next(iter(self._busy)))

    def _return_actor(self, actor, alive: bool) -> None:
        if alive:
            self._idle.append(actor)
        if self._pending and self._idle:
            self.submit(*self._pending.popleft())

    # -------------------------------------------------------------- membership
    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted value waits for one."""
        return bool(self._idle) and not self._pending

    def pop_idle(self):
        """Take an idle actor out of the pool, or None when none is free."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add an actor to the pool (it takes a waiting value at once, if any)."""
        if actor in self._idle or any(actor == a for _, a in self._busy.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor, True)
