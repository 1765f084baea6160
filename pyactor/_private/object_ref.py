"""ObjectRef: the future of a remote value, counted so the owner knows when to free it."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from pyactor._private import serialization

# The process's Runtime, set by runtime.py; kept here so the hot path reads one global.
_runtime = None


def set_runtime(runtime) -> None:
    global _runtime
    _runtime = runtime


class ObjectRef:
    """A reference to an object that a task returns or `put` stores.

    `pa.get(ref)` or `await ref` gives its value. While any ObjectRef to an object exists in any
    process (or inside a stored value, or as an argument of a pending task), the object is kept.
    """

    __slots__ = ("id", "owner_address", "__weakref__")

    def __init__(self, object_id: bytes, owner_address: list, *, _counted: bool = False):
        self.id = object_id
        self.owner_address = owner_address
        if not _counted:
            runtime = _runtime
            if runtime is not None:
                runtime.incref(object_id, owner_address)

    def __del__(self):
        runtime = _runtime
        if runtime is not None:
            try:
                runtime.refs.decref(self.id)
            except Exception:  # interpreter shutdown
                pass

    def __reduce__(self):
        serialization.record_contained_ref(self)
        return (_rebuild, (self.id, self.owner_address))

    def __copy__(self):
        return ObjectRef(self.id, self.owner_address)

    def __deepcopy__(self, memo):
        return ObjectRef(self.id, self.owner_address)

    def hex(self) -> str:
        return self.id.hex()

    def binary(self) -> bytes:
        return self.id

    def task_id(self) -> bytes:
        return self.id[:16]

    def __repr__(self) -> str:
        return f"ObjectRef({self.id.hex()})"

    def __eq__(self, other: Any) -> bool:
        return type(other) is ObjectRef and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that completes with the value (or the error)."""
        return _require_runtime().future_of(self)

    def __await__(self):
        return _require_runtime().asyncio_future_of(
            self, asyncio.get_running_loop()).__await__()


def _rebuild(object_id: bytes, owner_address: list) -> ObjectRef:
    return ObjectRef(object_id, owner_address)


def _require_runtime():
    if _runtime is None:
        raise RuntimeError("pyactor is not initialized: call pyactor.init() first")
    return _runtime
