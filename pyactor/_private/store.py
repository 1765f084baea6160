"""The shared-memory object store, as Python sees it: a thin wrapper over csrc/ (via cffi).

Each node makes one segment (`ObjectStore.create`); every process on the host maps it
(`ObjectStore.attach`) and reads sealed objects in place, with no copy:

    writer                               segment /dev/shm/pyactor-...            reader
    create_object(id, n) -> writable  ->  [ CREATED: bytes being written ]
    (fill it: copy_into / numpy)
    seal(id)                          ->  [ SEALED: immutable ]  <- get(id): read-only view, pinned
                                                                   while the view (or a numpy
                                                                   array on it) is alive
    delete(id)                        ->  id gone; bytes freed at the last unpin

Every C return code becomes one exception: `ObjectStoreFullError` when there is no space even after
evicting, `ObjectStoreError` (with `.code`, a `StoreErrorCode`) for the rest. Bad arguments raise
`TypeError`/`ValueError` before reaching C.

Pins and lifetimes. `get` pins the object for this client and returns a read-only memoryview whose
exporter is a cffi buffer over a cdata with a gc destructor that unpins: the pin lasts exactly as
long as the view or anything made from it (slices, `np.frombuffer` arrays) and is released once.
The mapping itself is unmapped only when the `ObjectStore` is closed and no view into it is left,
so a view never points into unmapped memory. A process that dies with pins is cleaned up by any
other client's `reap_dead_clients`. A forked child must `attach` for itself.

`get(timeout_s=...)`: an absent id returns None at once. An unsealed object raises
`ObjectStoreError(NOT_SEALED)` when `timeout_s == 0`; with a positive timeout (or None: forever)
`get` polls with backoff until it is sealed, and returns None if it is still unsealed at the
deadline or vanishes (aborted) meanwhile.
"""

from __future__ import annotations

import atexit
import enum
import functools
import os
import secrets
import shutil
import threading
import time
import weakref
from dataclasses import dataclass

from pyactor._store_cffi import ffi, lib
from pyactor.exceptions import ObjectStoreError, ObjectStoreFullError

OBJECT_ID_SIZE = lib.PA_OBJECT_ID_SIZE
ALIGNMENT = lib.PA_ALIGNMENT
SEGMENT_PREFIX = "pyactor-"
# Below this many bytes a put copies with one ffi.memmove (thread start-up would cost more).
PARALLEL_COPY_MIN_BYTES = 4 << 20


class StoreErrorCode(enum.IntEnum):
    """`ObjectStoreError.code` values (the C PA_ERR_* codes)."""

    NOT_FOUND = lib.PA_ERR_NOT_FOUND
    EXISTS = lib.PA_ERR_EXISTS
    NOT_SEALED = lib.PA_ERR_NOT_SEALED
    SEALED = lib.PA_ERR_SEALED
    FULL = lib.PA_ERR_FULL
    TABLE_FULL = lib.PA_ERR_TABLE_FULL
    PINS_FULL = lib.PA_ERR_PINS_FULL
    CLIENTS_FULL = lib.PA_ERR_CLIENTS_FULL
    BAD_SEGMENT = lib.PA_ERR_BAD_SEGMENT
    VERSION = lib.PA_ERR_VERSION
    SEGMENT_EXISTS = lib.PA_ERR_SEGMENT_EXISTS
    NO_SEGMENT = lib.PA_ERR_NO_SEGMENT
    SYS = lib.PA_ERR_SYS
    INVALID = lib.PA_ERR_INVALID
    NOT_PINNED = lib.PA_ERR_NOT_PINNED
    CLOSED = lib.PA_ERR_CLOSED
    CORRUPT = lib.PA_ERR_CORRUPT


class ObjectState(enum.IntEnum):
    """Lifecycle of an object (debug_object_info); the writer moves it CREATED -> SEALED, a delete
    of a pinned object moves it to DELETED until its last unpin."""

    FREE = lib.PA_STATE_FREE
    CREATED = lib.PA_STATE_CREATED
    SEALED = lib.PA_STATE_SEALED
    DELETED = lib.PA_STATE_DELETED


@dataclass(frozen=True)
class StoreStats:
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    largest_free_bytes: int
    object_count: int
    pinned_count: int
    evictions: int
    evicted_bytes: int
    client_count: int
    max_objects: int = 0
    recoveries: int = 0  # times a lock left by a dead process was repaired

    @property
    def fragmentation(self) -> float:
        """1 - largest free block / free bytes: 0 when the free space is one block."""
        return 1.0 - self.largest_free_bytes / self.free_bytes if self.free_bytes else 0.0


def new_segment_name(tag: str = "") -> str:
    """A fresh segment name, `pyactor-<tag->pid-random`."""
    middle = f"{tag}-" if tag else ""
    return f"{SEGMENT_PREFIX}{middle}{os.getpid()}-{secrets.token_hex(6)}"


def unlink_segment(name: str) -> None:
    """Remove a leftover segment by name; no error if it does not exist."""
    code = lib.pa_store_unlink(_segment_name(name))
    if code not in (lib.PA_OK, lib.PA_ERR_NO_SEGMENT):
        raise _error(code, f"unlink segment {name!r}")


def default_capacity_bytes() -> int:
    """30% of physical memory, capped by the free space of /dev/shm."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    capacity = int(ram * 0.3)
    try:
        capacity = min(capacity, shutil.disk_usage("/dev/shm").free)
    except OSError:
        pass
    return capacity // ALIGNMENT * ALIGNMENT


def _segment_name(name: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"segment name must be a str, not {type(name).__name__}")
    if not name.startswith(SEGMENT_PREFIX) or len(name) == len(SEGMENT_PREFIX) or "/" in name:
        raise ValueError(f"segment name must look like 'pyactor-<something>' (no '/'), got {name!r}")
    return name.encode()


def _bad_id(object_id) -> Exception:
    if not isinstance(object_id, bytes):
        return TypeError(f"object id must be bytes, not {type(object_id).__name__}")
    return ValueError(f"object id must be {OBJECT_ID_SIZE} bytes, got {len(object_id)}")


def _error(code: int, what: str) -> ObjectStoreError:
    reason = ffi.string(lib.pa_strerror(code)).decode()
    if code == lib.PA_ERR_SYS:
        errno = ffi.errno
        reason = f"{reason}: {os.strerror(errno)} (errno {errno})"
    try:
        code = StoreErrorCode(code)
    except ValueError:
        pass
    return ObjectStoreError(f"{what}: {reason}", code)


def _address_of(obj) -> int:
    interface = getattr(obj, "__array_interface__", None)
    if interface is not None:
        return interface["data"][0]
    return int(ffi.cast("uintptr_t", ffi.from_buffer(obj)))


def _keep_alive(_cdata, _owner) -> None:
    """gc destructor of the region pointer: it only holds its owner (the store handle)."""


# Hot-path bindings.
_pa_create = lib.pa_create
_pa_seal = lib.pa_seal
_pa_get = lib.pa_get
_pa_release = lib.pa_release
_pa_delete = lib.pa_delete
_ffi_gc = ffi.gc
_ffi_buffer = ffi.buffer
_ffi_memmove = ffi.memmove
_partial = functools.partial
_NOT_FOUND = lib.PA_ERR_NOT_FOUND
_NOT_SEALED = lib.PA_ERR_NOT_SEALED
_FULL = lib.PA_ERR_FULL

_open_handles: "weakref.WeakSet" = weakref.WeakSet()
_open_handles_lock = threading.Lock()


@atexit.register
def _detach_all() -> None:
    """At exit, give back this process's pins and client slots (mappings stay until exit)."""
    with _open_handles_lock:
        handles = list(_open_handles)
    for handle in handles:
        lib.pa_store_detach(handle)


class ObjectStore:
    """A mapped store segment, registered as one client of it. Use `create` or `attach`."""

    def __init__(self, handle, name: str, created: bool):
        # The C handle is closed (unregister + unmap) when the last reference to it goes: this
        # object, the region pointer below, and every pinned view hold one.
        self._handle = _ffi_gc(handle, lib.pa_store_close)
        self.name = name
        self._created = created
        self.mapped_bytes = lib.pa_mapped_bytes(handle)
        base = ffi.cast("uint8_t *", lib.pa_base(handle))
        self.base_address = int(ffi.cast("uintptr_t", base))
        region_ptr = _ffi_gc(base, _partial(_keep_alive, _owner=self._handle))
        self._region = memoryview(_ffi_buffer(region_ptr, self.mapped_bytes))
        self.capacity_bytes = self.stats().capacity_bytes
        self.client_id = lib.pa_client_id(handle)
        with _open_handles_lock:
            _open_handles.add(self._handle)

    # ---- lifecycle ----

    @classmethod
    def create(cls, name: str, capacity_bytes: int, *, max_objects: int | None = None) -> "ObjectStore":
        """Make segment `name` (an error if it exists) with `capacity_bytes` of object space."""
        raw_name = _segment_name(name)
        if not isinstance(capacity_bytes, int) or capacity_bytes < 4096:
            raise ValueError(f"capacity_bytes must be an int >= 4096, got {capacity_bytes!r}")
        if max_objects is not None and (not isinstance(max_objects, int) or not 16 <= max_objects <= 1 << 26):
            raise ValueError(f"max_objects must be an int in [16, 2**26], got {max_objects!r}")
        out = ffi.new("pa_store **")
        code = lib.pa_store_create(raw_name, capacity_bytes, max_objects or 0, out)
        if code:
            raise _error(code, f"create segment {name!r} of {capacity_bytes} bytes")
        return cls(out[0], name, created=True)

    @classmethod
    def attach(cls, name: str) -> "ObjectStore":
        """Map the existing segment `name` and register this process as a client."""
        out = ffi.new("pa_store **")
        code = lib.pa_store_attach(_segment_name(name), out)
        if code:
            raise _error(code, f"attach segment {name!r}")
        return cls(out[0], name, created=False)

    def close(self) -> None:
        """Stop using the store (idempotent). The client slot is released and the segment unmapped
        as soon as no view returned by this object is alive (at once if none is)."""
        handle = self.__dict__.pop("_handle", None)
        self._region = None
        if handle is not None:
            with _open_handles_lock:
                _open_handles.discard(handle)

    def destroy(self) -> None:
        """Close and remove the segment from /dev/shm (the creating node calls this). Processes
        still mapping it keep their mapping; the memory goes back with the last of them."""
        self.close()
        unlink_segment(self.name)

    def __enter__(self) -> "ObjectStore":
        return self

    def __exit__(self, *exc) -> None:
        if self._created:
            self.destroy()
        else:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"client {self.client_id}"
        return f"<ObjectStore {self.name} {self.capacity_bytes} bytes, {state}>"

    @property
    def closed(self) -> bool:
        return "_handle" not in self.__dict__

    def __getattr__(self, attr):  # only reached for a missing attribute, i.e. `_handle` after close
        if attr == "_handle":
            raise ObjectStoreError(f"object store {self.name} is closed", StoreErrorCode.CLOSED)
        raise AttributeError(attr)

    # ---- objects ----

    def create_object(self, object_id: bytes, size_bytes: int, *, evictable: bool = True) -> memoryview:
        """Allocate an unsealed object; returns a writable view of exactly size_bytes (64-byte
        aligned). Fill it, then `seal` (or `abort`)."""
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
        result = _pa_create(self._handle, object_id, size_bytes, 1 if evictable else 0)
        if result.code:
            raise self._create_error(result.code, object_id, size_bytes)
        offset = result.offset
        return self._region[offset:offset + size_bytes]

    def seal(self, object_id: bytes) -> None:
        """Make the object immutable and visible to readers."""
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        code = _pa_seal(self._handle, object_id)
        if code:
            raise _error(code, f"seal {object_id.hex()}")

    def abort(self, object_id: bytes) -> None:
        """Drop an unsealed object (its writer failed)."""
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        code = lib.pa_abort(self._handle, object_id)
        if code:
            raise _error(code, f"abort {object_id.hex()}")

    def put_bytes(self, object_id: bytes, data, *, evictable: bool = True) -> None:
        """create_object + copy `data` (any C-contiguous buffer) + seal."""
        src = data if type(data) is memoryview else memoryview(data)
        size = src.nbytes
        dest = self.create_object(object_id, size, evictable=evictable)
        try:
            if size < PARALLEL_COPY_MIN_BYTES and src.c_contiguous:
                _ffi_memmove(dest, src, size)
            else:
                self.copy_into(dest, src)
        except BaseException:
            lib.pa_abort(self._handle, object_id)
            raise
        self.seal(object_id)

    def get(self, object_id: bytes, *, timeout_s: float | None = 0.0) -> memoryview | None:
        """A read-only view of a sealed object, pinned while it (or anything built on it) lives;
        None if absent. See the module docstring for unsealed objects and timeout_s."""
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        handle = self._handle
        view = _pa_get(handle, object_id)
        code = view.code
        if code:
            if code == _NOT_FOUND:
                return None
            if code == _NOT_SEALED and timeout_s != 0:
                return self._wait_and_get(object_id, timeout_s)
            raise _error(code, f"get {object_id.hex()}")
        pinned = _ffi_gc(view.data, _partial(_pa_release, handle, view.handle))
        return memoryview(_ffi_buffer(pinned, view.size)).toreadonly()

    def _wait_and_get(self, object_id: bytes, timeout_s: float | None) -> memoryview | None:
        if timeout_s is not None and timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay_s = 50e-6
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            time.sleep(delay_s if remaining is None else min(delay_s, remaining))
            delay_s = min(delay_s * 2, 0.01)
            try:
                return self.get(object_id, timeout_s=0)
            except ObjectStoreError as error:
                if error.code != _NOT_SEALED:
                    raise

    def contains(self, object_id: bytes) -> bool:
        """True if the object is present and sealed."""
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        found = lib.pa_contains(self._handle, object_id)
        if found < 0:
            raise _error(-found, f"contains {object_id.hex()}")
        return found == 1

    def delete(self, object_id: bytes) -> bool:
        """Remove a sealed object; True if it existed. If pinned, its id goes now and its bytes at
        the last release. Deleting an unsealed object raises NOT_SEALED (use `abort`)."""
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        code = _pa_delete(self._handle, object_id)
        if code == 0:
            return True
        if code == _NOT_FOUND:
            return False
        raise _error(code, f"delete {object_id.hex()}")

    def set_evictable(self, object_id: bytes, evictable: bool) -> None:
        """Allow (or forbid) evicting the object when the store is full."""
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        code = lib.pa_set_evictable(self._handle, object_id, 1 if evictable else 0)
        if code:
            raise _error(code, f"set_evictable {object_id.hex()}")

    # ---- store-wide ----

    def stats(self) -> StoreStats:
        out = ffi.new("pa_stats *")
        code = lib.pa_stats_get(self._handle, out)
        if code:
            raise _error(code, "stats")
        return StoreStats(out.capacity_bytes, out.used_bytes, out.free_bytes, out.largest_free_bytes,
                          out.object_count, out.pinned_count, out.evictions, out.evicted_bytes,
                          out.client_count, out.max_objects, out.recoveries)

    def reap_dead_clients(self) -> int:
        """Release the pins, unsealed objects and client slots of processes that died; returns how
        many clients were reaped."""
        out = ffi.new("uint32_t *")
        code = lib.pa_reap_dead_clients(self._handle, out)
        if code:
            raise _error(code, "reap dead clients")
        return out[0]

    def release_client(self, client_id: int) -> None:
        """Release every pin (and abort every unsealed object) of client `client_id`, and free its
        slot. For a node that knows a worker is gone; `reap_dead_clients` finds them itself."""
        code = lib.pa_release_client(self._handle, client_id)
        if code:
            raise _error(code, f"release client {client_id}")

    def copy_into(self, dest, src) -> None:
        """Copy any C-contiguous buffer `src` into the writable buffer `dest` (as large), with
        several threads when it is large."""
        src_view = src if type(src) is memoryview else memoryview(src)
        size = src_view.nbytes
        dest_view = dest if type(dest) is memoryview else memoryview(dest)
        if dest_view.readonly:
            raise ValueError("copy_into: dest is read-only")
        if not (src_view.c_contiguous and dest_view.c_contiguous):
            raise ValueError("copy_into: src and dest must be C-contiguous")
        if dest_view.nbytes < size:
            raise ValueError(f"copy_into: dest holds {dest_view.nbytes} bytes, src {size}")
        if size < PARALLEL_COPY_MIN_BYTES:
            _ffi_memmove(dest_view, src_view, size)
            return
        lib.pa_memcpy_parallel(ffi.from_buffer(dest_view, require_writable=True),
                               ffi.from_buffer(src_view), size, 0)

    # ---- address helpers (tests, zero-copy checks) ----

    def contains_address(self, address: int) -> bool:
        """True if `address` lies inside this process's mapping of the segment."""
        return self.base_address <= address < self.base_address + self.mapped_bytes

    def offset_of(self, view) -> int:
        """Offset of a buffer's first byte from the segment start (ValueError if outside it)."""
        address = _address_of(view)
        if not self.contains_address(address):
            raise ValueError(f"buffer at {address:#x} is not inside segment {self.name}")
        return address - self.base_address

    # ---- debug hooks ----

    def alloc_bytes_for(self, size_bytes: int) -> int:
        """Bytes an object of size_bytes takes from the store (its block, header included)."""
        return lib.pa_alloc_bytes_for(size_bytes)

    def debug_check(self) -> None:
        """Walk the heap and every table; raise ObjectStoreError(CORRUPT) naming the first
        inconsistency."""
        message = ffi.new("char[512]")
        code = lib.pa_debug_check(self._handle, message, 512)
        if code:
            raise ObjectStoreError(f"store {self.name} is inconsistent: {ffi.string(message).decode()}",
                                   StoreErrorCode(code))

    def debug_object_info(self, object_id: bytes) -> dict | None:
        if len(object_id) != OBJECT_ID_SIZE or not isinstance(object_id, bytes):
            raise _bad_id(object_id)
        out = ffi.new("pa_object_info *")
        code = lib.pa_debug_object_info(self._handle, object_id, out)
        if code == _NOT_FOUND:
            return None
        if code:
            raise _error(code, f"debug_object_info {object_id.hex()}")
        return {"state": ObjectState(out.state), "evictable": bool(out.flags & lib.PA_FLAG_EVICTABLE),
                "pin_count": out.pin_count, "creator_client": out.creator_client,
                "offset": out.offset, "size": out.size, "alloc_bytes": out.alloc_bytes}

    def list_objects(self) -> list[dict]:
        """Every object in the store with its size, state, creator and who pins it
        (`pins`: pid -> pin count): what `pyactor memory` shows (state.py). Not a hot path."""
        count = ffi.new("uint64_t *")
        capacity = 1024
        while True:
            rows = ffi.new("pa_listed[]", capacity)
            code = lib.pa_list_objects(self._handle, rows, capacity, count)
            if code:
                raise _error(code, "list_objects")
            if count[0] <= capacity:
                break
            capacity = int(count[0]) + 256  # objects were added meanwhile: room for more
        objects: list[dict] = []
        for i in range(count[0]):
            row = rows[i]
            if row.pin_pid == -1:
                objects.append({"object_id": bytes(ffi.buffer(row.id, OBJECT_ID_SIZE)),
                                "state": ObjectState(row.state).name,
                                "evictable": bool(row.flags & lib.PA_FLAG_EVICTABLE),
                                "size": row.size, "alloc_bytes": row.alloc_bytes,
                                "pin_count": row.pin_count, "creator_pid": row.creator_pid,
                                "pins": {}})
            elif objects:
                pins = objects[-1]["pins"]
                pins[row.pin_pid] = pins.get(row.pin_pid, 0) + row.pins
        return objects

    def debug_heap(self) -> list[tuple[int, int, bool]]:
        """Every heap block as (offset from heap start, size, is_free), in address order."""
        size = 1 << 16
        while True:
            out = ffi.new("char[]", size)
            code = lib.pa_debug_dump_heap(self._handle, out, size)
            if code != lib.PA_ERR_INVALID:
                break
            size *= 4
        if code:
            raise _error(code, "debug_heap")
        rows = ffi.string(out).decode().split()
        return [(int(rows[i]), int(rows[i + 1]), rows[i + 2] == "1") for i in range(0, len(rows), 3)]

    def debug_lock_forever(self) -> None:
        """Take the store lock and never release it (crash tests: the process is then killed)."""
        code = lib.pa_debug_lock(self._handle)
        if code:
            raise _error(code, "debug lock")

    def debug_tear(self, how: int) -> None:
        """Take the lock and leave a half-done update (see pa_debug_tear); crash tests only."""
        code = lib.pa_debug_tear(self._handle, how)
        if code:
            raise _error(code, "debug tear")

    def _create_error(self, code: int, object_id: bytes, size_bytes: int) -> Exception:
        if code != _FULL:
            return _error(code, f"create {object_id.hex()} ({size_bytes} bytes)")
        stats = self.stats()
        need = lib.pa_alloc_bytes_for(size_bytes)
        if need > stats.capacity_bytes:  # no eviction could ever make room: say so
            return ObjectStoreFullError(
                f"a value of {size_bytes} bytes ({need} with its header) exceeds the capacity "
                f"of object store {self.name}, {stats.capacity_bytes} bytes, however empty it "
                f"is; give the node a larger store (object_store_memory=, or "
                f"--object-store-memory) or split the value",
                size_bytes, stats.used_bytes, stats.capacity_bytes)
        return ObjectStoreFullError(
            f"object store {self.name} is full: cannot create {object_id.hex()} of {size_bytes} "
            f"bytes ({need} with its header); {stats.used_bytes} of {stats.capacity_bytes} bytes in "
            f"use, largest free block {stats.largest_free_bytes} bytes, nothing more evictable "
            f"({stats.pinned_count} objects pinned)",
            size_bytes, stats.used_bytes, stats.capacity_bytes)
