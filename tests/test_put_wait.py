"""A put into a store full of pinned objects (a zero-copy view of each is alive, so nothing can
be spilled): fails at once by default, waits for room with a timeout."""

from __future__ import annotations

import asyncio
import gc
import threading

import numpy as np
import pytest

import pyactor as pa
from pyactor.exceptions import ObjectStoreFullError

STORE_BYTES = 8 << 20
HOLDER_BYTES = 6 << 20   # held by a ref and pinned by a view: leaves too little room for ...
WANTED_BYTES = 4 << 20   # ... this one


@pytest.fixture
def small_store(pa_fresh):
    pa.init(num_cpus=1, object_store_memory=STORE_BYTES)
    yield pa


def _array(size_bytes, fill=1):
    return np.full(size_bytes // 8, fill, dtype=np.int64)


def _pinned_holder():
    """A ref and a zero-copy view of its value: the object can be neither freed nor spilled."""
    ref = pa.put(_array(HOLDER_BYTES))
    return ref, pa.get(ref)


def test_full_store_fails_at_once_by_default(small_store):
    holder = _pinned_holder()
    with pytest.raises(ObjectStoreFullError) as full:
        pa.put(_array(WANTED_BYTES))
    assert full.value.requested_bytes >= WANTED_BYTES
    assert full.value.capacity_bytes > 0
    del holder


def test_put_waits_until_room_is_freed(small_store):
    """A put with a timeout is still waiting after a while; freeing the holder lets it in."""
    holder = _pinned_holder()
    results = []
    putter = threading.Thread(target=lambda: results.append(
        pa.put(_array(WANTED_BYTES, 7), timeout=30)))
    putter.start()
    putter.join(0.3)
    assert putter.is_alive() and results == []  # it did not fail: it waits
    del holder
    gc.collect()
    putter.join(30)
    assert not putter.is_alive()
    value = pa.get(results[0])
    assert value.nbytes == WANTED_BYTES and (value == 7).all()


def test_put_gives_up_at_its_deadline_with_the_sizes(small_store):
    holder = _pinned_holder()
    with pytest.raises(ObjectStoreFullError, match="after waiting 0.2 s") as full:
        pa.put(_array(WANTED_BYTES), timeout=0.2)
    assert full.value.requested_bytes >= WANTED_BYTES
    assert full.value.used_bytes >= HOLDER_BYTES
    del holder


def test_object_larger_than_the_store_fails_without_waiting(small_store):
    """No wait can help an object bigger than the whole store, even with timeout=None."""
    with pytest.raises(ObjectStoreFullError):
        pa.put(_array(2 * STORE_BYTES), timeout=None)


async def test_put_async_waits_without_blocking_the_loop(small_store):
    holder = [_pinned_holder()]
    waiting = asyncio.create_task(pa.put_async(_array(WANTED_BYTES, 3), timeout=30))
    # The loop keeps running while the put waits: this coroutine frees the room.
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    holder.clear()
    gc.collect()
    ref = await asyncio.wait_for(waiting, 30)
    assert (pa.get(ref) == 3).all()


async def test_put_async_small_values_and_deadline(small_store):
    assert await (await pa.put_async({"a": 1})) == {"a": 1}
    holder = _pinned_holder()
    with pytest.raises(ObjectStoreFullError):
        await pa.put_async(_array(WANTED_BYTES), timeout=0.1)
    del holder


def test_bad_timeout_is_refused(small_store):
    with pytest.raises(ValueError, match="timeout"):
        pa.put(1, timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        pa.put(1, timeout="soon")
