"""Values to bytes and back, with the data of large buffers kept out of band.

Pickle protocol 5 hands every contiguous buffer (numpy arrays, bytearrays, anything exposing the
buffer protocol through `PickleBuffer`) to a callback instead of copying it into the pickle
stream. We lay those buffers out after the pickle stream, each 64-byte aligned, so a value is
written into the shared-memory store with one copy of its data, and read back as numpy arrays that
view the store's memory (read-only, no copy).

Layout of a serialized value (the same for inline bytes and for store objects):

    offset 0   magic b"PA5" + version byte
           4   u32 number of buffers N
           8   u64 length of the pickle stream
          16   N x (u64 offset, u64 length) of each buffer, from the start of the value
               the pickle stream
               buffer 0 at a 64-byte aligned offset, buffer 1 aligned, ...

Functions, lambdas and classes defined in `__main__` must travel by value, so anything that is not
a plain built-in value goes through cloudpickle; plain values take the faster C pickler. Code
shipped by value keeps its file name (cloudpickle 3 writes "<dynamic-code>" instead), so a remote
traceback names the user's file and line, and shows the line where that file exists.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import struct
import threading
import types
from typing import Any, Callable

import cloudpickle

MAGIC = b"PA5\x01"
ALIGNMENT = 64
_HEADER = struct.Struct("<4sIQ")
_BUFFER_ENTRY = struct.Struct("<QQ")

# Values whose serialized size is below this travel inline inside messages; larger ones go to the
# shared-memory store. bench/serialization_bench.py passes an array of each size to a task both
# ways (2 cores): per task, 1 KiB costs 57 us inline vs 87 us via the store, 32 KiB 78 vs 77 (the
# crossover), 64 KiB 120 vs 89, 128 KiB 214 vs 84. Ray uses 100 KiB for the same decision.
INLINE_THRESHOLD_BYTES = 32 * 1024

# Exact types the C pickler handles by value; anything else may be a __main__ class or a closure.
_PLAIN_TYPES = frozenset({int, float, bool, str, bytes, type(None), complex})

_context = threading.local()

_NONE_PICKLE = pickle.dumps(None, protocol=5)
_NONE_BYTES = _HEADER.pack(MAGIC, 0, len(_NONE_PICKLE)) + _NONE_PICKLE


_cloudpickle_reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _filename_position() -> int | None:
    """Where cloudpickle's reduction puts co_filename among the code constructor's arguments
    (it depends on the Python version), found once on a probe."""
    _constructor, args = _cloudpickle_reduce_code(_filename_position.__code__)
    for position, arg in enumerate(args):
        if isinstance(arg, str) and arg in ("<dynamic-code>", __file__):
            return position
    return None


_FILENAME_POSITION = _filename_position()


def _code_with_filename(constructor, args, filename: str) -> types.CodeType:
    return constructor(*args).replace(co_filename=filename)


def _reduce_code(code: types.CodeType):
    """cloudpickle's reduction of a code object, with the file name put back: it is what
    tracebacks print and what linecache reads the source line from."""
    constructor, args = _cloudpickle_reduce_code(code)
    position = _FILENAME_POSITION
    if position is None:  # an unknown layout: rename after building (costs a second copy)
        return _code_with_filename, (constructor, args, code.co_filename)
    return constructor, args[:position] + (code.co_filename,) + args[position + 1:]


class Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, except that code shipped by value keeps its file name."""

    # As flat as cloudpickle's own table (a ChainMap over copyreg's, so later copyreg
    # registrations still count): every non-builtin object pickled looks a reducer up here.
    _dispatch_table = {**cloudpickle.Pickler._dispatch_table, types.CodeType: _reduce_code}
    dispatch_table = collections.ChainMap(_dispatch_table, copyreg.dispatch_table)


def dumps(value: Any, buffer_callback: Callable | None = None, pickler: type = Pickler) -> bytes:
    """`cloudpickle.dumps(value, protocol=5)`, keeping code objects' file names."""
    file = io.BytesIO()
    pickler(file, protocol=5, buffer_callback=buffer_callback).dump(value)
    return file.getvalue()


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


class SerializedValue:
    """A value pickled with its large buffers out of band, ready to be written anywhere."""

    __slots__ = ("pickled", "buffers", "contained_refs", "total_bytes", "_offsets")

    def __init__(self, pickled: bytes, buffers: list[memoryview], contained_refs: list):
        self.pickled = pickled
        self.buffers = buffers
        self.contained_refs = contained_refs
        offset = _HEADER.size + _BUFFER_ENTRY.size * len(buffers) + len(pickled)
        offsets = []
        for buffer in buffers:
            offset = _align(offset)
            offsets.append(offset)
            offset += buffer.nbytes
        self._offsets = offsets
        self.total_bytes = offset

    def write_to(self, dest: memoryview, copy: Callable[[memoryview, Any], None] | None = None
                 ) -> None:
        """Lay the value out in `dest` (at least `total_bytes` long). `copy(dest, src)` copies the
        large buffers (the store passes its multi-threaded copy)."""
        header_end = _HEADER.size + _BUFFER_ENTRY.size * len(self.buffers)
        _HEADER.pack_into(dest, 0, MAGIC, len(self.buffers), len(self.pickled))
        for i, (offset, buffer) in enumerate(zip(self._offsets, self.buffers)):
            _BUFFER_ENTRY.pack_into(dest, _HEADER.size + i * _BUFFER_ENTRY.size, offset,
                                    buffer.nbytes)
        dest[header_end:header_end + len(self.pickled)] = self.pickled
        for offset, buffer in zip(self._offsets, self.buffers):
            target = dest[offset:offset + buffer.nbytes]
            if copy is not None and buffer.nbytes >= 1 << 20:
                copy(target, buffer)
            else:
                target[:] = buffer

    def to_bytes(self) -> bytes:
        """The value as one bytes object, for sending inline in a message."""
        if not self.buffers:  # the common small case: no padding, no copies but one
            return _HEADER.pack(MAGIC, 0, len(self.pickled)) + self.pickled
        out = bytearray(self.total_bytes)
        self.write_to(memoryview(out))
        return bytes(out)


def serialize(value: Any) -> SerializedValue:
    """Pickle `value`, collecting its contiguous buffers and the ObjectRefs it contains."""
    buffers: list[pickle.PickleBuffer] = []
    refs: list = []
    previous = getattr(_context, "refs", None)
    _context.refs = refs
    try:
        if type(value) in _PLAIN_TYPES:
            pickled = pickle.dumps(value, protocol=5)
        else:
            pickled = dumps(value, buffer_callback=buffers.append)
    finally:
        _context.refs = previous
    views = []
    for buffer in buffers:
        try:
            views.append(buffer.raw())
        except BufferError:  # not contiguous: pickle it in band instead
            return _serialize_in_band(value)
    return SerializedValue(pickled, views, refs)


def plain_to_bytes(value: Any) -> bytes | None:
    """`serialize(value).to_bytes()` for a plain built-in value (None, bool, int, float, str,
    bytes, complex: what most calls return), without the general machinery; None for any other
    value. A plain value holds no refs and no out-of-band buffers."""
    if value is None:
        return _NONE_BYTES
    if type(value) not in _PLAIN_TYPES:
        return None
    pickled = pickle.dumps(value, protocol=5)
    return _HEADER.pack(MAGIC, 0, len(pickled)) + pickled


def _serialize_in_band(value: Any) -> SerializedValue:
    refs: list = []
    previous = getattr(_context, "refs", None)
    _context.refs = refs
    try:
        pickled = dumps(value)
    finally:
        _context.refs = previous
    return SerializedValue(pickled, [], refs)


def record_contained_ref(ref: Any) -> None:
    """Called by ObjectRef.__reduce__: note that the value being serialized holds `ref`."""
    refs = getattr(_context, "refs", None)
    if refs is not None:
        refs.append(ref)


def serialize_to_bytes(value: Any) -> bytes:
    return serialize(value).to_bytes()


def deserialize(data) -> Any:
    """Rebuild a value from its layout in `data` (bytes or a memoryview of the store).

    Buffers come back as slices of `data`: for a store view they are read-only views of shared
    memory that keep the object pinned for as long as anything built on them lives.
    """
    view = data if isinstance(data, memoryview) else memoryview(data)
    magic, n_buffers, pickle_len = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError(f"not a pyactor serialized value (magic {bytes(magic)!r})")
    start = _HEADER.size + _BUFFER_ENTRY.size * n_buffers
    if n_buffers == 0:
        return pickle.loads(view[start:start + pickle_len])
    buffers = []
    for i in range(n_buffers):
        offset, length = _BUFFER_ENTRY.unpack_from(view, _HEADER.size + i * _BUFFER_ENTRY.size)
        buffers.append(view[offset:offset + length])
    return pickle.loads(view[start:start + pickle_len], buffers=buffers)


def dumps_function(function: Any) -> bytes:
    """Functions and classes go by value (they may live in __main__ or a closure), with the
    caller's sys.path: what they import by name (a helper module next to the script, a test
    module) must be importable in the worker too, as Ray does with the driver's sys.path."""
    import sys
    return pickle.dumps((list(sys.path), dumps(function)), protocol=5)


def loads_function(blob: bytes) -> Any:
    """The inverse of dumps_function: extend sys.path (appending, so the worker's own modules
    win), then unpickle."""
    import sys
    path, pickled = pickle.loads(blob)
    for entry in path:
        if entry not in sys.path:
            sys.path.append(entry)
    return cloudpickle.loads(pickled)

