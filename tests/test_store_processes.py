"""The object store shared by real processes: zero-copy reads, and processes killed mid-use.

Children are started with the spawn method and report each step on a pipe, so the parent acts
only after the child has done what it said (no sleeping to synchronise).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import numpy as np
import pytest

from pyactor._private.store import ObjectStore, new_segment_name
from pyactor.exceptions import ObjectStoreError

MiB = 1 << 20
BIG_BYTES = 200 * MiB
SPAWN = multiprocessing.get_context("spawn")


def oid(n: int) -> bytes:
    return n.to_bytes(20, "big")


@pytest.fixture
def store():
    store = ObjectStore.create(new_segment_name("proc"), 512 * MiB)
    try:
        yield store
    finally:
        store.destroy()
        assert not os.path.exists(f"/dev/shm/{store.name}")


def _rss_anon_bytes() -> int:
    """Private memory of this process (shared-memory pages of the store are not counted)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


# ---- children (module-level so spawn can import them) ----

def _read_big_object(name: str, conn) -> None:
    import tracemalloc

    store = ObjectStore.attach(name)
    report = {}
    anon_before = _rss_anon_bytes()
    tracemalloc.start()
    for attempt in range(2):
        view = store.get(oid(1))
        array = np.frombuffer(view, dtype=np.uint8)
        report[f"inside_{attempt}"] = (store.contains_address(array.ctypes.data)
                                      and store.contains_address(array.ctypes.data + array.nbytes - 1))
        report[f"sum_{attempt}"] = int(array[:: 4096].sum(dtype=np.uint64)) + int(array[-1])
        report[f"checksum_{attempt}"] = int(array.sum(dtype=np.uint64))
        del array, view
    report["traced_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    report["anon_delta"] = _rss_anon_bytes() - anon_before
    store.close()
    conn.send(report)


def _pin_and_wait(name: str, conn) -> None:
    store = ObjectStore.attach(name)
    view = store.get(oid(1))
    conn.send(("pinned", bytes(view[:4])))
    conn.recv()  # never comes: the parent kills this process


def _lock_and_wait(name: str, conn) -> None:
    store = ObjectStore.attach(name)
    store.debug_lock_forever()
    conn.send("locked")
    conn.recv()


def _tear_and_wait(name: str, how: int, conn) -> None:
    store = ObjectStore.attach(name)
    store.debug_tear(how)
    conn.send("torn")
    conn.recv()


def _create_unsealed_and_wait(name: str, conn) -> None:
    store = ObjectStore.attach(name)
    store.create_object(oid(7), 1000)
    conn.send("created")
    conn.recv()


def _churn(name: str, seed: int, conn) -> None:
    store = ObjectStore.attach(name)
    rng = random.Random(seed)
    conn.send("started")
    held = []
    i = 0
    while True:
        i += 1
        object_id = oid(seed * 10_000_000 + i)
        try:
            store.put_bytes(object_id, bytes([i % 256]) * rng.randint(1, 50_000))
        except ObjectStoreError:
            continue
        held.append(store.get(object_id))
        if len(held) > 5:
            held.pop(0)
        if rng.random() < 0.7:
            store.delete(object_id)


def _start(target, *args):
    parent_conn, child_conn = SPAWN.Pipe()
    process = SPAWN.Process(target=target, args=(*args, child_conn), daemon=True)
    process.start()
    return process, parent_conn


def _kill(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.join()


# ---- tests ----

def test_reader_process_maps_a_big_object_without_copying(store):
    """A 200 MB array put by one process is read by another in place: its bytes lie inside the
    reader's mapping of the segment and reading it twice allocates nothing."""
    data = np.random.default_rng(0).integers(0, 256, BIG_BYTES, dtype=np.uint8)
    store.put_bytes(oid(1), data)
    process, conn = _start(_read_big_object, store.name)
    assert conn.poll(120), "reader did not report"
    report = conn.recv()
    process.join()
    assert report["inside_0"] and report["inside_1"]
    expected_sum = int(data[::4096].sum(dtype=np.uint64)) + int(data[-1])
    assert report["sum_0"] == report["sum_1"] == expected_sum
    assert report["checksum_0"] == int(data.sum(dtype=np.uint64))
    assert report["traced_peak"] < MiB
    assert report["anon_delta"] < 20 * MiB
    assert store.stats().pinned_count == 0 and store.stats().client_count == 1


def test_killed_process_pin_is_released_by_reaping(store):
    """A process SIGKILLed while pinning an object does not leak it: reap_dead_clients releases the
    pin (and its client slot), and a deferred delete then frees the space."""
    store.put_bytes(oid(1), b"data" * 1000)
    process, conn = _start(_pin_and_wait, store.name)
    assert conn.recv() == ("pinned", b"data")
    assert store.stats().pinned_count == 1 and store.stats().client_count == 2
    _kill(process)
    assert store.delete(oid(1))
    assert store.stats().used_bytes > 0
    assert store.reap_dead_clients() == 1
    stats = store.stats()
    assert stats.pinned_count == 0 and stats.client_count == 1 and stats.used_bytes == 0
    assert store.reap_dead_clients() == 0
    store.debug_check()


def test_killed_process_holding_the_lock_does_not_wedge_the_store(store):
    """The robust mutex hands the lock on when its holder dies; the store repairs and goes on."""
    store.put_bytes(oid(1), b"kept")
    process, conn = _start(_lock_and_wait, store.name)
    assert conn.recv() == "locked"
    _kill(process)
    assert bytes(store.get(oid(1))) == b"kept"
    assert store.stats().recoveries == 1
    store.debug_check()
    store.put_bytes(oid(2), b"more")
    assert store.reap_dead_clients() == 1
    assert store.stats().client_count == 1
    store.debug_check()


@pytest.mark.parametrize("how", [0, 1, 2, 3])
def test_death_mid_update_is_repaired(store, how):
    """A process killed halfway through an update (leaked block, emptied free lists, wrong
    counters, half-built entry) leaves a state the next locker repairs from the object table."""
    for i in range(20):
        store.put_bytes(oid(i), bytes([i]) * (i * 1000 + 1))
    pinned = store.get(oid(3))
    store.delete(oid(5))
    process, conn = _start(_tear_and_wait, store.name, how)
    assert conn.recv() == "torn"
    _kill(process)
    store.debug_check()  # takes the lock: repairs first
    stats = store.stats()
    assert stats.recoveries == 1 and stats.object_count == 19 and stats.pinned_count == 1
    assert stats.used_bytes == sum(store.alloc_bytes_for(i * 1000 + 1) for i in range(20) if i != 5)
    for i in range(20):
        if i != 5:
            assert bytes(store.get(oid(i))) == bytes([i]) * (i * 1000 + 1)
    assert bytes(pinned) == bytes([3]) * 3001
    store.put_bytes(oid(99), b"z" * 100_000)
    del pinned
    store.debug_check()
    assert store.reap_dead_clients() == 1


def test_killed_writer_unsealed_object_is_aborted_by_reaping(store):
    """An object whose writer died before sealing it is dropped when the writer is reaped."""
    process, conn = _start(_create_unsealed_and_wait, store.name)
    assert conn.recv() == "created"
    _kill(process)
    assert store.stats().object_count == 1
    assert store.reap_dead_clients() == 1
    assert store.stats().object_count == 0 and store.stats().used_bytes == 0
    store.create_object(oid(7), 10)  # the id is free again


def test_processes_killed_at_random_points_leave_a_consistent_store(store):
    """Busy writers SIGKILLed at random moments (inside critical sections or not) never leave the
    store inconsistent; reaping returns everything they held."""
    store.put_bytes(oid(1), b"survivor")
    rng = random.Random(1)
    for round_ in range(8):
        process, conn = _start(_churn, store.name, round_ + 1)
        assert conn.recv() == "started"
        time.sleep(rng.uniform(0.0, 0.05))  # not synchronisation: a random kill moment
        _kill(process)
        store.debug_check()
        store.reap_dead_clients()
        store.debug_check()
        stats = store.stats()
        assert stats.pinned_count == 0 and stats.client_count == 1
    assert bytes(store.get(oid(1))) == b"survivor"


def _attach_and_vanish(name: str) -> int:
    """In a forked child: attach, then exit without detaching (as a killed process does)."""
    pid = os.fork()
    if pid == 0:
        try:
            ObjectStore.attach(name)
            code = 0
        except Exception:  # noqa: BLE001 - the exit code tells the parent
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.slow
def test_dead_clients_never_fill_the_client_table(store):
    """More processes than the table has slots may attach over time: slots of clients that died
    without detaching are taken back when the table is full (a node's workers come and go)."""
    from pyactor._private.store import lib
    codes = [_attach_and_vanish(store.name) for _ in range(lib.PA_MAX_CLIENTS + 20)]
    assert codes == [0] * len(codes)
    assert store.stats().client_count <= lib.PA_MAX_CLIENTS
