"""ObjectRef: the future of a remote value, counted so the owner knows when to free it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from typing import Any

from pyactor._private import serialization

# The process's Runtime, set by runtime.py; kept here so the hot path reads one global.
_runtime = None
# Where each live ObjectRef was made, for `pyactor memory`: id(ref) -> (object id, "file:line"),
# or None when not recording (the default: finding the caller's frame costs ~1 us per ref).
# On with pa.init(record_ref_call_sites=True) or PYACTOR_RECORD_REF_CALL_SITES=1.
_call_sites: dict | None = {} if os.environ.get("PYACTOR_RECORD_REF_CALL_SITES") == "1" else None
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


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
        if _call_sites is not None:
            _call_sites[id(self)] = (object_id, _caller_site())

    def __del__(self):
        if _call_sites is not None:
            _call_sites.pop(id(self), None)
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


def record_call_sites(enabled: bool) -> None:
    """Start (or stop) noting where each new ObjectRef is made."""
    global _call_sites
    if enabled and _call_sites is None:
        _call_sites = {}
    elif not enabled:
        _call_sites = None


def _caller_site() -> str:
    """file:line of the first frame outside pyactor's own package (the program's line)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is None:
        return "(pyactor internals)"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def call_sites_by_object() -> dict[bytes, dict[str, int]]:
    """object id -> {"file:line": live refs made there} (empty when not recording)."""
    sites = _call_sites
    if not sites:
        return {}
    out: dict[bytes, dict[str, int]] = {}
    for object_id, site in list(sites.values()):
        counts = out.setdefault(object_id, {})
        counts[site] = counts.get(site, 0) + 1
    return out


def _rebuild(object_id: bytes, owner_address: list) -> ObjectRef:
    return ObjectRef(object_id, owner_address)


def _require_runtime():
    if _runtime is None:
        raise RuntimeError("pyactor is not initialized: call pyactor.init() first")
    return _runtime
