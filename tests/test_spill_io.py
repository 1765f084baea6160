"""Spill files (csrc/spill_io.c): whatever the object's address and size, the bytes written from
one place come back intact into another, with direct I/O and with the buffered fallback; the
file holds the object at the offset its layout names, so another node can map it; a failed
write leaves no file and names the reason."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pyactor._store_cffi import lib
from pyactor._private.spilling import _offset_of_data, _read_file, _write_file

BLOCK = 4096
MODES = [lib.PA_SPILL_HYBRID, lib.PA_SPILL_DIRECT_ONLY, lib.PA_SPILL_BUFFERED]
ARENA = 4 * BLOCK + (1 << 20)


def _arena() -> memoryview:
    """A page-aligned writable buffer (as the store's segment is), so offsets set alignments."""
    return memoryview(mmap.mmap(-1, ARENA))


def _pattern(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 3 * BLOCK + 100) | st.sampled_from([BLOCK - 64, BLOCK, 1 << 20]),
       src_offset=st.integers(0, BLOCK // 64 - 1).map(lambda k: 64 * k),
       dest_offset=st.integers(0, BLOCK // 64 - 1).map(lambda k: 64 * k),
       write_mode=st.sampled_from(MODES), read_mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**16))
def test_bytes_written_from_any_address_read_back_into_any_other(tmp_path_factory, size,
                                                                src_offset, dest_offset,
                                                                write_mode, read_mode, seed):
    """Any size and any 64-byte alignment of source and destination round-trip exactly, whichever
    kinds of I/O wrote and read the file."""
    path = str(tmp_path_factory.mktemp("spill") / "object")
    source, dest = _arena(), _arena()
    data = _pattern(size, seed)
    source[src_offset:src_offset + size] = data.tobytes()
    layout = _write_file(path, source[src_offset:src_offset + size], write_mode)
    _read_file(path, dest[dest_offset:dest_offset + size], layout, read_mode)
    assert dest[dest_offset:dest_offset + size] == data.tobytes()
    with open(path, "rb") as f:  # where the bytes lie in the file (open_spilled maps them)
        on_disk = f.read()
    start = _offset_of_data(layout)
    assert on_disk[start:start + size] == data.tobytes()
    os.unlink(path)


@pytest.mark.parametrize("mode", MODES)
def test_object_of_many_chunks_round_trips_and_leaves_edges_untouched(tmp_path, mode):
    """An object of several 8 MB requests, unaligned at both ends, comes back intact and the
    bytes around its destination are not written."""
    size = (8 << 20) * 2 + 12_345 * 64 + 17
    source = np.frombuffer(mmap.mmap(-1, size + 2 * BLOCK), dtype=np.uint8)
    dest = np.frombuffer(mmap.mmap(-1, size + 2 * BLOCK), dtype=np.uint8)
    data = _pattern(size, 7)
    source[192:192 + size] = data
    dest[:] = 0xEE
    layout = _write_file(str(tmp_path / "big"), memoryview(source)[192:192 + size], mode)
    _read_file(str(tmp_path / "big"), memoryview(dest)[320:320 + size], layout, mode)
    assert np.array_equal(dest[320:320 + size], data)
    assert (dest[:320] == 0xEE).all() and (dest[320 + size:] == 0xEE).all()


def test_write_into_a_missing_directory_fails_with_the_reason_and_leaves_no_file(tmp_path):
    """The OSError carries errno and names the file."""
    path = str(tmp_path / "no-such-dir" / "object")
    with pytest.raises(OSError, match="cannot write spill file") as raised:
        _write_file(path, memoryview(b"x" * 100))
    assert raised.value.errno == 2 and not os.path.exists(path)


def test_reading_a_truncated_file_fails_instead_of_returning_garbage(tmp_path):
    """A spill file shorter than its object is an error, not a partly filled object."""
    path = str(tmp_path / "object")
    source = _arena()
    layout = _write_file(path, source[64:64 + 3 * BLOCK])
    os.truncate(path, BLOCK)
    with pytest.raises(OSError, match="cannot read spill file"):
        _read_file(path, _arena()[:3 * BLOCK], layout)

