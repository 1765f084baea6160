"""What this process knows about objects: owned ones, and borrowed ones it has resolved.

Ownership (after Ray's design): the process that creates a ref (by submitting a task or by `put`)
owns it. The owner holds the object's state (pending, ready, failed), its value when small, the
node whose store holds it when large, and who still refers to it:

    local_refs   ObjectRef instances alive in this process (an outer object that contains refs,
                 a put of a list of refs say, keeps their ObjectRefs in `contained`)
    borrowers    other processes that hold refs to it (they register on their first ref)
    task_pins    the task that makes it, until the task has finished

When all three are empty the owner frees it (and deletes it from the store). A borrower keeps an
entry too, as a cache of the resolved value and a count of its own refs.

Thread-safety: user threads create and drop ObjectRefs and wait on entries; the IO thread
resolves them. Every mutation of an entry happens under `ReferenceTable.lock`; callbacks fire on
the IO thread outside the lock.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

PENDING = 0
READY = 1
FAILED = 2


class ObjectEntry:
    __slots__ = ("object_id", "owned", "owner", "state", "inline", "node_id", "local_refs",
                 "borrowers", "task_pins", "callbacks", "fetching", "registered",
                 "contained", "task_id", "kill_actor")

    def __init__(self, object_id: bytes, owned: bool, owner: tuple | None):
        self.object_id = object_id
        self.owned = owned
        self.owner = owner
        self.state = PENDING
        self.inline: bytes | None = None  # the serialized value (or pickled error when FAILED)
        self.node_id: bytes | None = None  # set when the value lives in a node's store
        self.local_refs = 0
        self.borrowers: set | None = None
        self.task_pins = 0
        self.callbacks: list[Callable[[ObjectEntry], None]] | None = None
        self.fetching = False  # a borrower asked the owner for the value
        self.registered = False  # a borrower told the owner it holds a ref
        self.contained: list | None = None  # ObjectRefs held alive by this object's value
        self.task_id: bytes | None = None
        self.kill_actor: bytes | None = None  # an actor handle token: freeing it ends the actor

    def in_use(self) -> bool:
        return bool(self.local_refs or self.borrowers or self.task_pins)


class ReferenceTable:
    """Entries by object id, their reference counts, and waiting for them to resolve."""

    def __init__(self, on_released: Callable[[], None],
                 delete_put: Callable[["ObjectEntry"], bool] | None = None):
        # Reentrant: the garbage collector may run inside any allocation made under the lock
        # and call ObjectRef.__del__ -> decref on the same thread (refs held by dead cycles).
        self.lock = threading.RLock()
        self.entries: dict[bytes, ObjectEntry] = {}
        # Entries whose last reference went away; drained by the IO thread in batches so that
        # dropping a ref from any thread (even inside __del__) never does I/O.
        self._released: deque[ObjectEntry] = deque()
        self._on_released = on_released
        # Deletes a put's object from this node's store on the spot (True if it did), so the
        # next large put can reuse its already-touched pages (runtime.py: _delete_put).
        self._delete_put = delete_put

    # --- counting (any thread) ---
    def add_owned(self, object_id: bytes, task_id: bytes | None = None, *,
                  local_refs: int = 0, task_pins: int = 0) -> ObjectEntry:
        """A new object this process owns; `local_refs` counts ObjectRefs made with
        _counted=True (one lock round instead of one per ref, on the submit path)."""
        entry = ObjectEntry(object_id, True, None)
        entry.task_id = task_id
        entry.local_refs = local_refs
        entry.task_pins = task_pins
        with self.lock:
            self.entries[object_id] = entry
        return entry

    def incref(self, object_id: bytes, owner: tuple | None) -> ObjectEntry | None:
        """A new ObjectRef instance; returns the entry if it is a newly seen borrowed one."""
        with self.lock:
            entry = self.entries.get(object_id)
            if entry is not None:
                entry.local_refs += 1
                return None
            entry = ObjectEntry(object_id, owner is None, owner)
            entry.local_refs = 1
            self.entries[object_id] = entry
            return entry

    def decref(self, object_id: bytes) -> None:
        with self.lock:
            entry = self.entries.get(object_id)
            if entry is None:
                return
            entry.local_refs -= 1
            released = self._unlink_if_unused(entry)
        if released:
            self._release(entry)

    def unpin_task(self, entry: ObjectEntry) -> None:
        """The task that makes the entry finished; frees it when nothing else uses it."""
        with self.lock:
            entry.task_pins -= 1
            released = self._unlink_if_unused(entry)
        if released:
            self._release(entry)

    def remove_borrower(self, entry: ObjectEntry, borrower: tuple) -> None:
        with self.lock:
            if entry.borrowers:
                entry.borrowers.discard(borrower)
            released = self._unlink_if_unused(entry)
        if released:
            self._release(entry)

    def remove_borrower_everywhere(self, borrower: tuple) -> None:
        """A borrower process died: drop its holds on every entry."""
        released = []
        with self.lock:
            for entry in list(self.entries.values()):
                if entry.borrowers and borrower in entry.borrowers:
                    entry.borrowers.discard(borrower)
                    if self._unlink_if_unused(entry):
                        released.append(entry)
        for entry in released:
            self._release(entry)

    def _unlink_if_unused(self, entry: ObjectEntry) -> bool:
        """Under the lock: forget the entry if nothing uses it any more (True if so)."""
        if entry.local_refs or entry.borrowers or entry.task_pins or \
                self.entries.get(entry.object_id) is not entry:  # (in_use, inline: per call)
            return False
        del self.entries[entry.object_id]
        return True

    def _release(self, entry: ObjectEntry) -> None:
        # An owned value held inline, containing no refs, needs no I/O to free: it is gone with
        # the entry. Only the rest (store objects, borrowed refs, contained refs) wakes the IO
        # thread; that keeps a syscall off the common path of every finished task.
        if entry.owned and not entry.contained and entry.kill_actor is None:
            if entry.node_id is None:
                return
            if entry.task_id is None and self._delete_put is not None and \
                    self._delete_put(entry):
                return
        self._released.append(entry)
        self._on_released()

    def drain_released(self) -> list[ObjectEntry]:
        out = []
        released = self._released
        while released:
            out.append(released.popleft())
        return out

    def get(self, object_id: bytes) -> ObjectEntry | None:
        return self.entries.get(object_id)

    # --- resolving (IO thread) ---
    def resolve(self, entry: ObjectEntry, state: int, inline: bytes | None,
                node_id: bytes | None) -> None:
        with self.lock:
            if entry.state != PENDING:
                return
            entry.inline = inline
            entry.node_id = node_id
            entry.state = state
            callbacks, entry.callbacks = entry.callbacks, None
        if callbacks:
            for callback in callbacks:
                callback(entry)

    def resolve_unwatched(self, entry: ObjectEntry, state: int, inline: bytes | None,
                          node_id: bytes | None) -> bool | None:
        """`resolve` from a thread that must not run other waiters' callbacks (they may belong
        to the IO thread): True when resolved, False (nothing done) when callbacks wait, None
        when the entry was already resolved."""
        with self.lock:
            if entry.state != PENDING:
                return None
            if entry.callbacks:
                return False
            entry.inline = inline
            entry.node_id = node_id
            entry.state = state
            return True

    def when_resolved(self, entry: ObjectEntry, callback: Callable[[ObjectEntry], None]) -> bool:
        """Run `callback(entry)` once the entry resolves. Returns False (and does not register)
        when it is already resolved, so the caller goes on at once."""
        with self.lock:
            if entry.state != PENDING:
                return False
            if entry.callbacks is None:
                entry.callbacks = [callback]
            else:
                entry.callbacks.append(callback)
            return True

    def forget_callback(self, entry: ObjectEntry, callback: Callable) -> None:
        with self.lock:
            if entry.callbacks and callback in entry.callbacks:
                entry.callbacks.remove(callback)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            owned = sum(1 for e in self.entries.values() if e.owned)
            return {"entries": len(self.entries), "owned": owned,
                    "borrowed": len(self.entries) - owned}


class CountdownWaiter:
    """Wakes a thread blocked in get/wait once `needed` entries have resolved."""

    __slots__ = ("needed", "event", "ready", "_lock")

    def __init__(self, needed: int):
        self.needed = needed
        self.event = threading.Event()
        self.ready: list[bytes] = []
        self._lock = threading.Lock()
        if needed <= 0:
            self.event.set()

    def __call__(self, entry: ObjectEntry) -> None:
        with self._lock:
            self.ready.append(entry.object_id)
            self.needed -= 1
            if self.needed == 0:
                self.event.set()
