"""Object spilling: when the store is full, the node writes objects to local disk and reads them
back when they are needed.

Which objects. The store keeps, besides the LRU list of evictable secondary copies, a list of the
objects only the node may spill: sealed, unpinned, not evictable (primary copies, still referenced
by their owner, or their owner would have deleted them), least recently used first (an object
moves to the end when it is sealed and when its last reader lets go). A pinned object (a
zero-copy view alive, a read in progress) is never in it. `pa_spill_candidates` reads its head.

Who does what. The node is the only process that writes or removes spill files, and the only one
that knows which objects are on disk (`Spiller.spilled`); everyone else asks it. Its event loop
does the bookkeeping, a thread does the disk I/O, so heartbeats and leases go on meanwhile. The
I/O itself (csrc/spill_io.c) goes straight between the segment and the disk with direct I/O,
several requests in flight; a file keeps its object's address modulo 4096 (`layouts`).

    writer (driver, worker)               node: Spiller                         spill directory
    create_object -> ObjectStoreFullError
      --MakeRoom(bytes)------------------> one round at a time (self._round):
                                           candidates, least recently used first;
                                           each: pin, write (thread) ----------> <id hex>
                                           spill_done: freed unless someone pinned
                                           it meanwhile (then kept, file removed)
      <--Reply([bytes freed, why not more])
    create_object again; with nothing freed: wait (put timeout) or ObjectStoreFullError

    reader: store.get -> None (spilled)
      --Fetch(id, its own node)----------> restore: create (making room), read the
                                           file into it (thread), seal, remove the file
      <--Reply-------------------------- (the object is a primary copy in the store again)
    store.get again

    owner frees it: store.delete finds nothing --FreeObjects--> remove the file
    another node pulls it (object_transfer.py): streamed from the file, not restored

Races. A spill pins its object while writing: an owner that deletes it meanwhile gets the usual
delete-at-last-unpin, and `spill_done` says so ('gone': the file goes). A FreeObjects that comes
while a restore is writing the object marks it; the restore then deletes what it restored.

Files are removed when their object is freed or restored, and the whole directory when the node
stops. The directory is named after the store's segment (pyactor-<node pid>-...), so a node that
starts finds the directories of nodes that died without cleaning up (SIGKILL) and removes them,
as node_main.py does with their segments.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import shutil

from pyactor._store_cffi import ffi, lib
from pyactor.exceptions import ObjectLostError, ObjectStoreFullError

logger = logging.getLogger("pyactor.spilling")

# How many ids one round asks the store for, at most (a round spills as many as it needs).
MAX_CANDIDATES = 1024
# Stop spilling when the disk would be fuller than this (as Ray's local_fs_capacity_threshold).
DISK_FULL_FRACTION = 0.95


def default_spill_root() -> str:
    from pyactor._private.session import session_dir
    return os.path.join(session_dir(), "spill")


def left_by_dead_node(name: str) -> bool:
    """True for a store segment's (or spill directory's) name, pyactor-<node pid>-..., whose
    node is no longer running."""
    parts = name.split("-")
    if len(parts) < 3 or parts[0] != "pyactor" or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        pass
    return False


def remove_stale_spill_dirs(root: str) -> None:
    """Remove the spill directories of nodes that died without removing them."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if left_by_dead_node(name):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


# Buffered I/O by default: on a quiet 2-core VM (bench/store_bench.py --only spill) it spilled
# 256 MB at 2.45 GB/s (0.90x numpy.save) and restored at 2.50 GB/s (3.3x numpy.load), where
# direct I/O (lib.PA_SPILL_DIRECT_ONLY) ran at 0.33-0.38 GB/s. Direct I/O costs 3x less CPU per GB
# and leaves no second copy in the page cache, which can matter on a host short of memory: it
# stays one constant away (and HYBRID runs one buffered thread beside direct requests).
SPILL_IO_MODE = lib.PA_SPILL_BUFFERED


def _write_file(path: str, view: memoryview, mode: int = SPILL_IO_MODE) -> int:
    """Write the object's bytes to a new file at `path` (spill_io.c: direct I/O where the
    filesystem takes it, several requests in flight, straight from the segment; `mode` is one of
    lib.PA_SPILL_*); returns the file's layout, which reading it needs."""
    layout = ffi.new("uint32_t *")
    if lib.pa_spill_write(path.encode(), ffi.from_buffer(view), view.nbytes, 0, mode, layout):
        raise OSError(ffi.errno, f"cannot write spill file {path}: {os.strerror(ffi.errno)}")
    return layout[0]


def _read_file(path: str, dest: memoryview, layout: int, mode: int = SPILL_IO_MODE) -> None:
    """Fill `dest` from a file `_write_file` wrote with `layout` (any mode reads any file)."""
    if lib.pa_spill_read(path.encode(), ffi.from_buffer(dest, require_writable=True),
                         dest.nbytes, layout, 0, mode):
        raise OSError(ffi.errno, f"cannot read spill file {path}: {os.strerror(ffi.errno)}")


def _offset_of_data(layout: int) -> int:
    """File offset of an object's first byte in a file written with `layout`."""
    return layout & ~lib.PA_SPILL_DIRECT


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Spiller:
    """One per node: spills its store's objects to `root/<store name>` and restores them."""

    def __init__(self, store, root: str, limit_bytes: int | None = None):
        self.store = store
        self.root = root
        self.directory = os.path.join(root, store.name)
        self.limit_bytes = limit_bytes
        self.spilled: dict[bytes, int] = {}  # object id -> size in bytes, of what is on disk
        self.layouts: dict[bytes, int] = {}  # object id -> its file's layout (spill_io.c)
        self.spilled_bytes = 0
        self.spills = self.restores = 0  # counters, for `pyactor status`
        self.spilled_total_bytes = self.restored_total_bytes = 0
        self._round = asyncio.Lock()  # one spill round at a time
        self._restoring: dict[bytes, asyncio.Future] = {}
        self._freed_while_restoring: set[bytes] = set()
        self._made_directory = False

    # ------------------------------------------------------------------ spilling
    async def make_room(self, need_bytes: int) -> tuple[int, str]:
        """Spill least recently used objects until a block of need_bytes could fit. Returns
        (bytes freed, or 1 if it already fits; why nothing more could be spilled, or '')."""
        async with self._round:
            stats = self.store.stats()
            if stats.largest_free_bytes >= need_bytes:
                return 1, ""  # room was made (or freed) while this request waited its turn
            # Free space may be fragmented: ask for enough to cover the whole request then.
            want = need_bytes - stats.free_bytes if stats.free_bytes < need_bytes else need_bytes
            freed, why = 0, ""
            while freed < want:
                ids = self.store.spill_candidates(want - freed, MAX_CANDIDATES)
                if not ids:
                    why = why or (f"nothing more can be spilled ({stats.pinned_count} objects "
                                  f"pinned by readers or being written)")
                    break
                round_freed, why = await self._spill_some(ids)
                freed += round_freed
                if why or not round_freed:
                    break
            return freed, why

    async def _spill_some(self, ids: list[bytes]) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        freed = 0
        for object_id in ids:
            pinned = self.store.pin_for_spill(object_id)
            if pinned is None:  # deleted since it was listed
                continue
            view, handle = pinned
            size = view.nbytes
            why = self._cannot_spill(size)
            path = os.path.join(self.directory, object_id.hex())
            if not why:
                try:
                    layout = await loop.run_in_executor(None, _write_file, path, view)
                except OSError as error:
                    why = f"writing to the spill directory {self.directory} failed: {error}"
            view.release()
            if why:
                self.store.spill_done_keep(handle)
                logger.warning("cannot spill %s: %s", object_id.hex(), why)
                return freed, why
            outcome = self.store.spill_done(handle)
            if outcome == "freed":
                self.spilled[object_id] = size
                self.layouts[object_id] = layout
                self.spilled_bytes += size
                self.spills += 1
                self.spilled_total_bytes += size
                freed += self.store.alloc_bytes_for(size)
            else:  # read by someone meanwhile (kept in memory), or deleted by its owner
                _unlink(path)
        return freed, ""

    def _cannot_spill(self, size: int) -> str:
        """Why an object of `size` bytes cannot go to disk now ('' if it can)."""
        if self.limit_bytes is not None and self.spilled_bytes + size > self.limit_bytes:
            return (f"spilling {size} bytes would pass the spill limit of {self.limit_bytes} "
                    f"bytes ({self.spilled_bytes} spilled)")
        try:
            if not self._made_directory:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                self._made_directory = True
            disk = shutil.disk_usage(self.directory)
        except OSError as error:
            return f"the spill directory {self.directory} is unusable: {error}"
        if disk.used + size > disk.total * DISK_FULL_FRACTION:
            return (f"the disk of {self.directory} would be over {DISK_FULL_FRACTION:.0%} full "
                    f"({disk.free} bytes free, {size} to write)")
        return ""

    # ------------------------------------------------------------------ restoring
    def is_spilled(self, object_id: bytes) -> bool:
        return object_id in self.spilled

    async def restore(self, object_id: bytes) -> None:
        """Bring a spilled object back into the store (a no-op if it is there); raises
        ObjectLostError if it is neither in the store nor on disk, ObjectStoreFullError if no
        room can be made for it."""
        waiting = self._restoring.get(object_id)
        if waiting is not None:
            await asyncio.shield(waiting)
            return
        if self.store.contains(object_id):
            return
        size = self.spilled.get(object_id)
        if size is None:
            raise ObjectLostError(f"object {object_id.hex()} is neither in the store nor "
                                  f"spilled on this node")
        done = asyncio.get_running_loop().create_future()
        self._restoring[object_id] = done
        try:
            await self._restore(object_id, size)
            done.set_result(None)
        except BaseException as error:
            done.set_exception(error)
            done.exception()  # seen, even if nobody else waits
            raise
        finally:
            del self._restoring[object_id]
            self._freed_while_restoring.discard(object_id)

    async def _restore(self, object_id: bytes, size: int) -> None:
        path = os.path.join(self.directory, object_id.hex())
        view = await self._create(object_id, size)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, _read_file, path, view, self.layouts[object_id])
        except BaseException as error:
            view.release()
            self.store.abort(object_id)
            if isinstance(error, OSError):
                raise ObjectLostError(f"object {object_id.hex()} could not be read back from "
                                      f"{path}: {error}") from None
            raise
        view.release()
        self.store.seal(object_id)
        self._forget(object_id)
        self.restores += 1
        self.restored_total_bytes += size
        if object_id in self._freed_while_restoring:  # its owner freed it meanwhile
            self.store.delete(object_id)

    async def _create(self, object_id: bytes, size: int) -> memoryview:
        while True:
            try:
                return self.store.create_object(object_id, size, evictable=False)
            except ObjectStoreFullError as error:
                freed, why = await self.make_room(self.store.alloc_bytes_for(size))
                if not freed:
                    raise ObjectStoreFullError(
                        f"{error.args[0]}; cannot restore spilled object {object_id.hex()}: "
                        f"{why}", error.requested_bytes, error.used_bytes,
                        error.capacity_bytes) from None

    def open_spilled(self, object_id: bytes) -> memoryview | None:
        """A read-only view of a spilled object's file (to send it to another node without
        restoring it here), or None if it is not spilled. Stays valid if the file is removed."""
        size = self.spilled.get(object_id)
        if size is None:
            return None
        if size == 0:
            return memoryview(b"")
        start = _offset_of_data(self.layouts[object_id])
        try:
            with open(os.path.join(self.directory, object_id.hex()), "rb") as f:
                mapped = memoryview(mmap.mmap(f.fileno(), start + size, prot=mmap.PROT_READ))
                return mapped[start:start + size]
        except OSError as error:
            raise ObjectLostError(f"spilled object {object_id.hex()} could not be opened: "
                                  f"{error}") from None

    # ------------------------------------------------------------------ freeing
    def free(self, object_ids) -> None:
        """Their owner freed these objects: remove what is on disk."""
        for object_id in object_ids:
            if object_id in self._restoring:
                self._freed_while_restoring.add(object_id)
            self._forget(object_id)

    def _forget(self, object_id: bytes) -> None:
        size = self.spilled.pop(object_id, None)
        self.layouts.pop(object_id, None)
        if size is not None:
            self.spilled_bytes -= size
            _unlink(os.path.join(self.directory, object_id.hex()))

    def stats(self) -> dict:
        return {"spill_directory": self.directory, "spilled_objects": len(self.spilled),
                "spilled_bytes": self.spilled_bytes, "spills": self.spills,
                "restores": self.restores, "spilled_total_bytes": self.spilled_total_bytes,
                "restored_total_bytes": self.restored_total_bytes}

    def close(self) -> None:
        """Remove every spill file and the directory (the node is stopping)."""
        self.spilled.clear()
        self.layouts.clear()
        self.spilled_bytes = 0
        shutil.rmtree(self.directory, ignore_errors=True)
