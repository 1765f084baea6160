"""Object spilling, from the user's side: a store much smaller than the working set spills its
least recently used unpinned objects to disk and reads them back on get, never spills what a
zero-copy view pins, removes a spilled object's file when it is freed and the whole directory at
shutdown, and fails with ObjectStoreFullError, naming the sizes and the reason, when nothing can
be spilled."""

from __future__ import annotations

import asyncio
import gc
import os

import numpy as np
import pytest

import pyactor as pa
from pyactor.exceptions import ObjectStoreFullError
from conftest import wait_until
from helpers import identity

STORE_BYTES = 8 << 20
OBJECT_BYTES = 1 << 20
WORKING_SET = 4 * STORE_BYTES // OBJECT_BYTES  # objects: four times what the store holds


def _array(fill: int, size_bytes: int = OBJECT_BYTES) -> np.ndarray:
    return np.full(size_bytes // 8, fill, dtype=np.int64)


def _store_info() -> dict:
    return pa.nodes()[0]["ObjectStore"]


def _spill_files() -> set[str]:
    directory = _store_info()["spill_directory"]
    return set(os.listdir(directory)) if os.path.isdir(directory) else set()


@pytest.fixture
def small_store(pa_fresh, tmp_path):
    pa.init(num_cpus=1, object_store_memory=STORE_BYTES, spill_dir=str(tmp_path / "spill"))
    yield pa


@pytest.mark.slow
def test_working_set_four_times_the_store_keeps_every_value(small_store):
    """Puts of 4x the store's size all succeed; every value reads back intact, from the driver,
    from a task, and awaited."""
    refs = [pa.put(_array(i)) for i in range(WORKING_SET)]
    info = _store_info()
    assert info["spilled_objects"] >= WORKING_SET - STORE_BYTES // OBJECT_BYTES
    assert info["spilled_bytes"] >= info["spilled_objects"] * OBJECT_BYTES
    for i, ref in enumerate(refs):
        value = pa.get(ref)
        assert value.shape == (OBJECT_BYTES // 8,) and (value == i).all()
        del value
    # a task reads a spilled argument; an awaiting coroutine a spilled value
    assert (pa.get(identity.remote(refs[0])) == 0).all()

    async def await_first():
        return await refs[1]
    assert (asyncio.run(await_first()) == 1).all()
    assert _store_info()["restores"] >= WORKING_SET // 2


def test_least_recently_used_objects_are_spilled_first(small_store):
    """Reading an object makes it recent: the next spills take older ones."""
    refs = [pa.put(_array(i)) for i in range(STORE_BYTES // OBJECT_BYTES - 1)]
    assert pa.get(refs[0])[0] == 0  # read (and let go of) the oldest: now the most recent
    pa.put(_array(99))
    pa.put(_array(98))
    spilled = _spill_files()
    assert refs[0].hex() not in spilled
    assert refs[1].hex() in spilled


def test_pinned_view_is_never_spilled(small_store):
    """An array returned by get views the store (zero-copy): its object stays in memory however
    many puts need room, and the view reads the same bytes throughout."""
    pinned_ref = pa.put(_array(7))
    view = pa.get(pinned_ref)
    others = []
    for i in range(2 * STORE_BYTES // OBJECT_BYTES):
        others.append(pa.put(_array(i)))
        assert pinned_ref.hex() not in _spill_files()
    assert (view == 7).all()
    assert len(_spill_files()) > 0


def test_freeing_a_spilled_object_removes_its_file(small_store):
    first = pa.put(_array(1))
    rest = [pa.put(_array(i)) for i in range(STORE_BYTES // OBJECT_BYTES + 1)]
    name = first.hex()
    assert name in _spill_files()
    del first
    gc.collect()
    assert wait_until(lambda: name not in _spill_files(), 10)
    assert _store_info()["spilled_objects"] == len(_spill_files())
    del rest


def test_shutdown_removes_the_spill_directory(pa_fresh, tmp_path):
    pa.init(num_cpus=1, object_store_memory=STORE_BYTES, spill_dir=str(tmp_path / "spill"))
    refs = [pa.put(_array(i)) for i in range(STORE_BYTES // OBJECT_BYTES + 2)]
    directory = _store_info()["spill_directory"]
    assert directory.startswith(str(tmp_path / "spill")) and os.listdir(directory)
    del refs
    pa.shutdown()
    assert wait_until(lambda: not os.path.exists(directory), 10)


def test_full_store_with_a_spill_limit_fails_with_the_sizes(pa_fresh, tmp_path):
    """A spill limit smaller than one object: nothing can be spilled, so the put fails, and says
    how big it was, what the store holds and why spilling could not help."""
    pa.init(num_cpus=1, object_store_memory=STORE_BYTES, spill_dir=str(tmp_path / "spill"),
            spill_limit_bytes=OBJECT_BYTES // 2)
    refs = [pa.put(_array(i)) for i in range(STORE_BYTES // OBJECT_BYTES - 1)]
    with pytest.raises(ObjectStoreFullError, match="spill limit") as full:
        for i in range(2):
            refs.append(pa.put(_array(i)))
    assert full.value.requested_bytes >= OBJECT_BYTES
    assert full.value.capacity_bytes > 0 and full.value.used_bytes > 0
    assert str(OBJECT_BYTES // 2) in str(full.value)


def test_unwritable_spill_directory_fails_with_the_reason(pa_fresh, tmp_path):
    """A spill directory that cannot be made (a file is in its way) is reported, not hidden."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    pa.init(num_cpus=1, object_store_memory=STORE_BYTES, spill_dir=str(blocker / "spill"))
    refs = [pa.put(_array(i)) for i in range(STORE_BYTES // OBJECT_BYTES - 1)]
    with pytest.raises(ObjectStoreFullError, match="spill directory .* is unusable"):
        for i in range(2):
            refs.append(pa.put(_array(i)))
    assert [int(pa.get(ref)[0]) for ref in refs[:3]] == [0, 1, 2]  # the store still serves


def test_an_object_larger_than_the_store_is_never_spilled_for(small_store):
    """No spilling can make room for more than the whole store: the error says so at once."""
    refs = [pa.put(_array(i)) for i in range(3)]
    with pytest.raises(ObjectStoreFullError, match="exceeds the capacity"):
        pa.put(_array(0, 2 * STORE_BYTES))
    assert not _spill_files()
    del refs


def test_spill_options_are_checked(pa_fresh):
    with pytest.raises(ValueError, match="spill_limit_bytes"):
        pa.init(spill_limit_bytes=-1)
    with pytest.raises(TypeError, match="spill_dir"):
        pa.init(spill_dir=3)


def test_spilled_objects_show_in_the_memory_report_and_metrics(small_store):
    """`pyactor memory` says an object is SPILLED (with its size and owner) once it is on disk;
    the node's metrics count the spilled bytes."""
    from pyactor.util import state
    first = pa.put(_array(1))
    rest = [pa.put(_array(i)) for i in range(STORE_BYTES // OBJECT_BYTES + 1)]
    assert first.hex() in _spill_files()
    rows = {row.object_id: row for row in state.memory_summary().objects}
    row = rows[first.hex()]
    assert row.location == "SPILLED"
    assert row.size_bytes >= OBJECT_BYTES
    assert row.owner_pid == os.getpid()
    assert any(rows[ref.hex()].location == "STORE" for ref in rest)
    del rest


def test_node_metrics_report_spilled_bytes_and_waiting_leases():
    """The node's gauges include what its spiller holds and the leases waiting for a worker
    (counted over every runtime_env's queue)."""
    from collections import deque
    from types import SimpleNamespace

    from pyactor._private.metrics_export import NodeMetrics
    spiller = SimpleNamespace(stats=lambda: {"spilled_bytes": 3 << 20, "spilled_objects": 3,
                                             "spilled_total_bytes": 5 << 20,
                                             "restored_total_bytes": 2 << 20})
    node = SimpleNamespace(store=None, spiller=spiller, workers={},
                           waiting_for_worker={"": deque([1, 2]), "env": deque([3])})
    gauges = {row[0]: row[5][0][1][0] for row in NodeMetrics(node).node_rows()
              if row[0] != "pyactor_workers"}
    assert gauges["pyactor_object_store_spilled_bytes"] == 3 << 20
    assert gauges["pyactor_object_store_spilled_objects"] == 3
    assert gauges["pyactor_object_store_restored_total_bytes"] == 2 << 20
    assert gauges["pyactor_leases_waiting"] == 3
