"""The shared-memory object store (pyactor/_private/store.py over csrc/), in one process."""

from __future__ import annotations

import gc
import os
import random
import threading

import numpy as np
import pytest

from pyactor._private.store import (
    OBJECT_ID_SIZE, ObjectState, ObjectStore, StoreErrorCode, default_capacity_bytes,
    new_segment_name, unlink_segment)
from pyactor._store_cffi import ffi, lib
from pyactor.exceptions import ObjectStoreError, ObjectStoreFullError

MiB = 1 << 20


def oid(n: int) -> bytes:
    return n.to_bytes(OBJECT_ID_SIZE, "big")


@pytest.fixture
def make_store():
    """Factory of stores with unique names; every segment is destroyed at the end."""
    made = []

    def make(capacity_bytes: int = 4 * MiB, **kwargs) -> ObjectStore:
        store = ObjectStore.create(new_segment_name("test"), capacity_bytes, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.destroy()
        assert not os.path.exists(f"/dev/shm/{store.name}")


@pytest.fixture
def store(make_store) -> ObjectStore:
    return make_store()


def put(store: ObjectStore, object_id: bytes, data: bytes, **kwargs) -> None:
    store.put_bytes(object_id, data, **kwargs)


# ---- segments ----

def test_create_makes_a_sparse_named_segment(make_store):
    """The segment is /dev/shm/pyactor-..., sized at creation, with (almost) no page touched."""
    store = make_store(4 << 30)
    path = f"/dev/shm/{store.name}"
    assert store.name.startswith("pyactor-") and os.path.exists(path)
    st = os.stat(path)
    assert st.st_size >= 4 << 30
    assert st.st_blocks * 512 < 8 * MiB
    assert store.capacity_bytes == 4 << 30


def test_segment_names_must_start_with_pyactor():
    """Names outside the pyactor- namespace are refused before anything is made."""
    with pytest.raises(ValueError, match="pyactor-"):
        ObjectStore.create("other-name", MiB)
    with pytest.raises(ValueError):
        ObjectStore.attach("pyactor-a/b")


def test_create_refuses_an_existing_segment(store):
    """Two nodes never share a segment by accident."""
    with pytest.raises(ObjectStoreError) as info:
        ObjectStore.create(store.name, MiB)
    assert info.value.code == StoreErrorCode.SEGMENT_EXISTS


def test_attach_to_missing_or_foreign_segment_fails():
    """attach names the reason: no such segment, or not a store."""
    name = new_segment_name("missing")
    with pytest.raises(ObjectStoreError) as info:
        ObjectStore.attach(name)
    assert info.value.code == StoreErrorCode.NO_SEGMENT
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"\x01" * 8192)
    try:
        with pytest.raises(ObjectStoreError) as info:
            ObjectStore.attach(name)
        assert info.value.code == StoreErrorCode.BAD_SEGMENT
    finally:
        unlink_segment(name)
    unlink_segment(name)  # absent: no error


def test_attach_sees_the_same_objects(store):
    """A second client of the same segment reads what the first wrote."""
    put(store, oid(1), b"hello")
    other = ObjectStore.attach(store.name)
    try:
        assert bytes(other.get(oid(1))) == b"hello"
        assert store.stats().client_count == 2
    finally:
        other.close()
    assert store.stats().client_count == 1


def test_context_manager_destroys_what_it_created():
    """`with ObjectStore.create(...)` removes the segment on exit."""
    name = new_segment_name("ctx")
    with ObjectStore.create(name, MiB) as store:
        put(store, oid(1), b"x")
    assert not os.path.exists(f"/dev/shm/{name}")


def test_close_is_idempotent_and_later_calls_fail(make_store):
    """After close, every call raises ObjectStoreError(CLOSED); close again is a no-op."""
    store = make_store()
    store.close()
    store.close()
    with pytest.raises(ObjectStoreError) as info:
        store.get(oid(1))
    assert info.value.code == StoreErrorCode.CLOSED


def test_views_outlive_close(make_store):
    """A view taken before close stays readable; the mapping goes with the last view."""
    store = make_store()
    put(store, oid(1), b"abc" * 100)
    observer = ObjectStore.attach(store.name)
    try:
        view = store.get(oid(1))
        store.close()
        assert bytes(view) == b"abc" * 100
        assert observer.stats().pinned_count == 1
        del view
        gc.collect()
        assert observer.stats().pinned_count == 0
        assert observer.stats().client_count == 1
    finally:
        observer.close()


def test_default_capacity_is_a_fraction_of_ram():
    """30% of RAM, capped by /dev/shm, 64-byte multiple."""
    capacity = default_capacity_bytes()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < capacity <= 0.3 * ram + 64 and capacity % 64 == 0


# ---- lifecycle ----

def test_create_seal_get_roundtrip(store):
    """create gives a writable, 64-byte aligned view of exactly the size; get a read-only copy-free view."""
    view = store.create_object(oid(1), 1000)
    assert len(view) == 1000 and not view.readonly
    assert store.offset_of(view) % 64 == 0
    view[:] = bytes(range(250)) * 4
    store.seal(oid(1))
    got = store.get(oid(1))
    assert got.readonly and bytes(got) == bytes(range(250)) * 4
    assert store.offset_of(got) == store.offset_of(view)
    with pytest.raises(TypeError):
        got[0] = 1
    assert store.contains(oid(1))


def test_zero_sized_object(store):
    """An empty object is a valid object."""
    assert len(store.create_object(oid(1), 0)) == 0
    store.seal(oid(1))
    assert bytes(store.get(oid(1))) == b""


def test_object_ids_are_validated(store):
    """Ids are 20 bytes; anything else fails at the boundary with TypeError/ValueError."""
    with pytest.raises(ValueError, match="20 bytes"):
        store.create_object(b"short", 10)
    with pytest.raises(TypeError):
        store.get("x" * 20)
    with pytest.raises(ValueError):
        store.create_object(oid(1), -1)


def test_unsealed_objects_are_never_read(store):
    """get of an unsealed object raises NOT_SEALED (timeout 0) or returns None at the deadline."""
    store.create_object(oid(1), 10)
    with pytest.raises(ObjectStoreError) as info:
        store.get(oid(1))
    assert info.value.code == StoreErrorCode.NOT_SEALED
    assert store.get(oid(1), timeout_s=0.02) is None
    assert not store.contains(oid(1))
    assert store.get(oid(2)) is None


def test_waiting_get_returns_once_sealed(store):
    """A get with a timeout returns the object when the writer seals it."""
    view = store.create_object(oid(1), 3)
    view[:] = b"abc"
    results = []
    reader = threading.Thread(target=lambda: results.append(bytes(store.get(oid(1), timeout_s=None))))
    reader.start()
    store.seal(oid(1))
    reader.join()
    assert results == [b"abc"]


def test_duplicate_create_is_refused(store):
    """An id names one object at a time."""
    put(store, oid(1), b"a")
    with pytest.raises(ObjectStoreError) as info:
        store.create_object(oid(1), 1)
    assert info.value.code == StoreErrorCode.EXISTS


def test_abort_drops_an_unsealed_object(store):
    """abort frees the space of an unsealed object; sealed objects cannot be aborted."""
    store.create_object(oid(1), 1000)
    store.abort(oid(1))
    assert store.stats().used_bytes == 0 and store.get(oid(1)) is None
    put(store, oid(2), b"x")
    with pytest.raises(ObjectStoreError) as info:
        store.abort(oid(2))
    assert info.value.code == StoreErrorCode.SEALED


def test_delete_of_unsealed_or_absent(store):
    """delete returns False for an absent id and refuses an unsealed object (use abort)."""
    assert store.delete(oid(1)) is False
    store.create_object(oid(1), 10)
    with pytest.raises(ObjectStoreError) as info:
        store.delete(oid(1))
    assert info.value.code == StoreErrorCode.NOT_SEALED


def test_seal_twice_fails(store):
    """Sealing is a one-way step."""
    put(store, oid(1), b"x")
    with pytest.raises(ObjectStoreError) as info:
        store.seal(oid(1))
    assert info.value.code == StoreErrorCode.SEALED


# ---- pins ----

def test_pin_lives_as_long_as_any_derived_view(store):
    """The pin taken by get lasts while the view, a numpy array on it, or a slice lives."""
    put(store, oid(1), np.arange(100, dtype=np.int64).tobytes())
    view = store.get(oid(1))
    array = np.frombuffer(view, dtype=np.int64)
    tail = memoryview(array)[50:]
    del view
    gc.collect()
    assert store.debug_object_info(oid(1))["pin_count"] == 1
    del array
    gc.collect()
    assert store.debug_object_info(oid(1))["pin_count"] == 1
    assert tail.tolist()[0] == 50
    del tail
    gc.collect()
    assert store.debug_object_info(oid(1))["pin_count"] == 0
    assert store.stats().pinned_count == 0


def test_each_get_is_one_pin_released_once(store):
    """Two gets are two pins; dropping each releases exactly one."""
    put(store, oid(1), b"data")
    first, second = store.get(oid(1)), store.get(oid(1))
    assert store.debug_object_info(oid(1))["pin_count"] == 2
    del first
    assert store.debug_object_info(oid(1))["pin_count"] == 1
    del second
    assert store.debug_object_info(oid(1))["pin_count"] == 0
    store.debug_check()


def test_delete_of_pinned_object_defers_the_free(store):
    """The id vanishes at once (and can be reused); the bytes go at the last release."""
    put(store, oid(1), b"old" * 1000)
    view = store.get(oid(1))
    used = store.stats().used_bytes
    assert store.delete(oid(1)) is True
    assert store.get(oid(1)) is None and not store.contains(oid(1))
    assert store.stats().used_bytes == used and store.stats().object_count == 0
    put(store, oid(1), b"new")
    assert bytes(store.get(oid(1))) == b"new"
    assert bytes(view) == b"old" * 1000
    store.debug_check()
    del view
    assert store.stats().used_bytes == store.alloc_bytes_for(3)
    store.debug_check()


def test_release_client_drops_its_pins(store):
    """release_client frees another client's pins and slot."""
    put(store, oid(1), b"x")
    other = ObjectStore.attach(store.name)
    try:
        view = other.get(oid(1))
        assert store.stats().pinned_count == 1
        store.release_client(other.client_id)
        assert store.stats().pinned_count == 0 and store.stats().client_count == 1
        assert store.delete(oid(1))
        del view  # its release is now a no-op
        store.debug_check()
    finally:
        other.close()


# ---- full store, eviction ----

def test_full_store_raises_with_sizes_and_recovers(make_store):
    """A create that cannot fit raises ObjectStoreFullError(requested, used, capacity); nothing is
    corrupted and the space comes back after a delete."""
    store = make_store(MiB)
    for i in range(3):
        put(store, oid(i), b"x" * (300 * 1024), evictable=False)
    with pytest.raises(ObjectStoreFullError) as info:
        store.create_object(oid(9), 300 * 1024)
    error = info.value
    assert error.requested_bytes == 300 * 1024
    assert error.capacity_bytes == MiB and error.used_bytes == store.stats().used_bytes
    assert str(300 * 1024) in str(error) and str(error.used_bytes) in str(error)
    assert isinstance(error, MemoryError)
    store.debug_check()
    assert store.delete(oid(0))
    put(store, oid(9), b"y" * (300 * 1024))
    assert bytes(store.get(oid(1))) == b"x" * (300 * 1024)
    store.debug_check()


def test_too_large_object_is_full_not_evicting(make_store):
    """A request above capacity fails without evicting anything."""
    store = make_store(MiB)
    put(store, oid(1), b"x" * 1000)
    with pytest.raises(ObjectStoreFullError):
        store.create_object(oid(2), 2 * MiB)
    assert store.contains(oid(1)) and store.stats().evictions == 0


def test_eviction_takes_least_recently_used_evictable_unpinned(make_store):
    """Only sealed, evictable, unpinned objects go, least recently used first."""
    store = make_store(MiB)
    chunk = 200 * 1024
    put(store, oid(1), b"1" * chunk)                    # oldest evictable
    put(store, oid(2), b"2" * chunk)
    put(store, oid(3), b"3" * chunk, evictable=False)   # never evicted
    put(store, oid(4), b"4" * chunk)
    pinned = store.get(oid(4))                          # pinned: never evicted
    touched = store.get(oid(1))                         # use oid(1): now newer than oid(2)
    del touched
    put(store, oid(5), b"5" * chunk)                    # store now nearly full
    put(store, oid(6), b"6" * chunk)                    # must evict one: oid(2)
    assert not store.contains(oid(2))
    assert all(store.contains(oid(i)) for i in (1, 3, 4, 5, 6))
    stats = store.stats()
    assert stats.evictions == 1 and stats.evicted_bytes == store.alloc_bytes_for(chunk)
    put(store, oid(7), b"7" * chunk)                    # next: oid(1)
    assert not store.contains(oid(1)) and store.contains(oid(5))
    assert bytes(pinned) == b"4" * chunk
    store.debug_check()


def test_set_evictable_protects_and_releases(make_store):
    """set_evictable(False) keeps an object; set_evictable(True) lets it go."""
    store = make_store(MiB)
    chunk = 300 * 1024
    put(store, oid(1), b"1" * chunk)
    put(store, oid(2), b"2" * chunk)
    put(store, oid(3), b"3" * chunk)
    store.set_evictable(oid(1), False)
    store.set_evictable(oid(2), False)
    store.set_evictable(oid(3), False)
    with pytest.raises(ObjectStoreFullError):
        store.create_object(oid(4), chunk)
    store.set_evictable(oid(2), True)
    put(store, oid(4), b"4" * chunk)
    assert not store.contains(oid(2)) and store.contains(oid(1)) and store.contains(oid(3))
    store.debug_check()


def test_object_table_full(make_store):
    """max_objects bounds the number of objects; the error says so."""
    store = make_store(MiB, max_objects=16)
    for i in range(16):
        put(store, oid(i), b"x")
    with pytest.raises(ObjectStoreError) as info:
        store.create_object(oid(99), 1)
    assert info.value.code == StoreErrorCode.TABLE_FULL
    store.delete(oid(0))
    put(store, oid(99), b"y")
    store.debug_check()


# ---- allocator ----

def test_random_workload_at_high_fill_then_full_coalescing(make_store):
    """Random create/delete at ~80% fill keeps the heap valid; freeing everything leaves one block."""
    capacity = 8 * MiB
    store = make_store(capacity, max_objects=4096)
    rng = random.Random(7)
    live: dict[bytes, int] = {}
    next_id = 0
    for step in range(3000):
        used = store.stats().used_bytes
        if live and (used > 0.8 * capacity or rng.random() < 0.4):
            victim = rng.choice(list(live))
            assert store.delete(victim)
            del live[victim]
        else:
            size = int(rng.choice([64, 1000, 4096, 30_000, 100_000]) * rng.uniform(0.5, 1.5))
            next_id += 1
            try:
                view = store.create_object(oid(next_id), size, evictable=False)
            except ObjectStoreFullError:
                continue
            view[:8] = next_id.to_bytes(8, "little")
            store.seal(oid(next_id))
            live[oid(next_id)] = size
        if step % 250 == 0:
            store.debug_check()
    stats = store.stats()
    assert stats.used_bytes == sum(store.alloc_bytes_for(s) for s in live.values())
    assert 0.0 <= stats.fragmentation < 1.0
    for object_id in live:
        assert bytes(store.get(object_id)[:8]) == int.from_bytes(object_id, "big").to_bytes(8, "little")
    for object_id in list(live):
        store.delete(object_id)
    store.debug_check()
    stats = store.stats()
    assert stats.used_bytes == 0 and stats.largest_free_bytes == capacity
    assert stats.fragmentation == 0.0
    assert store.debug_heap() == [(0, capacity, True)]


def test_freed_space_is_reused(make_store):
    """A store can be filled and emptied many times over."""
    store = make_store(MiB)
    for round_ in range(20):
        for i in range(4):
            put(store, oid(i), bytes([round_]) * (200 * 1024), evictable=False)
        for i in range(4):
            assert store.delete(oid(i))
    assert store.stats().used_bytes == 0 and store.stats().evictions == 0


# ---- copies ----

@pytest.mark.parametrize("size", [0, 1, 4095, 64 * 1024 + 3, 9 * MiB + 17])
def test_copy_into_copies_exactly(store, size):
    """copy_into (parallel for large sizes) copies every byte of any C-contiguous buffer."""
    src = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    dest = bytearray(size + 5)
    store.copy_into(memoryview(dest)[:size], src)
    assert bytes(dest[:size]) == src.tobytes() and dest[size:] == b"\0" * 5


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_parallel_memcpy_slices_cover_everything(threads):
    """Every thread count and misaligned start copies all bytes."""
    size = 3 * MiB + 123
    src = np.random.default_rng(threads).integers(0, 256, size + 64, dtype=np.uint8)
    dest = np.zeros(size + 64, dtype=np.uint8)
    for shift in (0, 1, 63):
        dest[:] = 0
        lib.pa_memcpy_parallel(ffi.from_buffer(dest[shift:]), ffi.from_buffer(src[shift:]), size, threads)
        assert np.array_equal(dest[shift:shift + size], src[shift:shift + size])
        assert not dest[shift + size:].any()


def test_put_bytes_of_numpy_array(make_store):
    """put_bytes takes any C-contiguous buffer; a non-contiguous one is refused."""
    store = make_store(64 * MiB)
    array = np.arange(6 * MiB // 8, dtype=np.float64).reshape(3, -1)
    store.put_bytes(oid(1), array)
    back = np.frombuffer(store.get(oid(1)), dtype=np.float64).reshape(3, -1)
    assert np.array_equal(back, array)
    with pytest.raises(ValueError):
        store.put_bytes(oid(2), array[:, ::2])
    assert store.get(oid(2)) is None  # aborted


def test_concurrent_threads_keep_the_store_consistent(make_store):
    """Threads putting, reading and deleting at once leave a valid store."""
    store = make_store(16 * MiB)
    errors = []

    def work(thread: int) -> None:
        try:
            for i in range(500):
                object_id = oid(thread * 100_000 + i)
                store.put_bytes(object_id, bytes([thread]) * (i % 50 + 1))
                assert bytes(store.get(object_id))[:1] == bytes([thread])
                assert store.delete(object_id)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store.debug_check()
    assert store.stats().used_bytes == 0


def test_debug_object_info_reports_lifecycle(store):
    """The debug view names the state and the allocated size."""
    store.create_object(oid(1), 100, evictable=False)
    info = store.debug_object_info(oid(1))
    assert info["state"] is ObjectState.CREATED and not info["evictable"]
    assert info["alloc_bytes"] == store.alloc_bytes_for(100) == 64 + 128
    store.seal(oid(1))
    assert store.debug_object_info(oid(1))["state"] is ObjectState.SEALED
    assert store.debug_object_info(oid(2)) is None
