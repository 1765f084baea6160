"""Identifiers: fixed-size binary ids, cheap to make on the hot path.

An object id is 20 bytes (the store's key size): the 8-byte random prefix of the process that made
it, an 8-byte counter of that process, and a 4-byte return index. A task's returns share the first
16 bytes (the task id) and differ in the index, so an owner can tell every return of a task apart
without a lookup. Counters, not `os.urandom` per id: making an id is on every submit.
"""

from __future__ import annotations

import itertools
import os
import struct

OBJECT_ID_SIZE = 20
TASK_ID_SIZE = 16
PUT_INDEX = 0xFFFFFFFF  # the return index of objects made by `put`

_pack_counter = struct.Struct(">Q").pack
_pack_index = struct.Struct(">I").pack


class _IdSource:
    """Per-process id prefix and counter; re-seeded in a forked child so ids never collide."""

    def __init__(self) -> None:
        self._reseed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self.prefix = os.urandom(8)
        self.counter = itertools.count(1)  # next() on itertools.count is atomic under the GIL
        self.pid = os.getpid()

    def task_id(self) -> bytes:
        return self.prefix + _pack_counter(next(self.counter))


_source = _IdSource()


def new_task_id() -> bytes:
    """A process-unique 16-byte task id."""
    return _source.task_id()


def object_id_for(task_id: bytes, index: int) -> bytes:
    """The id of return number `index` of task `task_id`."""
    return task_id + _pack_index(index)


def new_put_id() -> bytes:
    """The id of an object made by `put`."""
    return _source.task_id() + _pack_index(PUT_INDEX)


def new_actor_id() -> bytes:
    return os.urandom(16)


def new_worker_id() -> bytes:
    return os.urandom(16)


def new_node_id() -> bytes:
    return os.urandom(16)
