"""Objects from a user's point of view: put/get/wait, large numpy values in the store, and
reference counting (an object is freed when no ref to it remains anywhere)."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import pyactor as pa
from helpers import identity, wait_for_file
from pyactor._private import api
from pyactor._private.serialization import INLINE_THRESHOLD_BYTES

from conftest import run_python, wait_until

BIG_BYTES = 50 << 20  # 50 MiB


def store_stats() -> dict:
    return pa.nodes()[0]["ObjectStore"]


def owned_entries() -> int:
    return api._runtime.refs.stats()["owned"]


def store_settles_at(object_count: int, timeout_s: float = 10) -> bool:
    """Frees travel asynchronously (other processes drop their refs): poll the node."""
    gc.collect()
    return wait_until(lambda: store_stats()["object_count"] == object_count, timeout_s)


@pytest.fixture
def baseline(pa_module):
    """The store's object count and the owner's table size before the test."""
    gc.collect()
    assert store_settles_at(0)
    return {"objects": 0, "owned": owned_entries()}


# ---------------------------------------------------------------------- put / get
@pytest.mark.parametrize("value", [None, 0, -1.5, "text", b"bytes", [1, [2, {"a": (3,)}]],
                                   {"k": {1, 2}}, np.arange(10)])
def test_put_get_round_trips_values(pa_module, value):
    """get(put(v)) equals v for plain values, containers and small arrays."""
    got = pa.get(pa.put(value))
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(got, value)
    else:
        assert got == value


def test_put_of_an_object_ref_is_a_type_error(pa_module):
    """put(ref) is refused: pass the ref itself instead."""
    with pytest.raises(TypeError):
        pa.put(pa.put(1))


def test_get_of_a_list_keeps_the_order(pa_module):
    """get([r1, r2, ...]) returns the values in the order of the refs."""
    refs = [identity.remote(i) for i in range(20)] + [pa.put("last")]
    assert pa.get(refs) == list(range(20)) + ["last"]
    assert pa.get(tuple(refs[:2])) == [0, 1]


def test_object_ref_equality_and_hash(pa_module):
    """Two refs to the same object compare equal and hash alike; copies stay usable."""
    import copy
    ref = pa.put(1)
    assert copy.copy(ref) == ref and hash(copy.deepcopy(ref)) == hash(ref)
    assert ref != pa.put(1)
    assert pa.get(copy.copy(ref)) == 1


# ---------------------------------------------------------------------- wait
def test_wait_returns_ready_and_not_ready_in_order(pa_module, tmp_path):
    """wait splits refs into (ready, not_ready), each keeping the input order."""
    gate = tmp_path / "gate"
    blocked = wait_for_file.remote(str(gate))
    done = [pa.put(i) for i in range(3)]
    refs = [done[0], blocked, done[1], done[2]]
    ready, not_ready = pa.wait(refs, num_returns=3, timeout=30)
    assert ready == [done[0], done[1], done[2]]
    assert not_ready == [blocked]
    gate.touch()
    ready, not_ready = pa.wait(refs, num_returns=4, timeout=30)
    assert ready == refs and not_ready == []


def test_wait_returns_at_most_num_returns(pa_module):
    """With more refs ready than num_returns, wait returns exactly num_returns of them."""
    refs = [pa.put(i) for i in range(5)]
    ready, not_ready = pa.wait(refs, num_returns=2)
    assert ready == refs[:2] and not_ready == refs[2:]


def test_wait_timeout_returns_what_is_ready(pa_module, tmp_path):
    """When the timeout passes first, wait returns (ready so far, the rest) without raising."""
    gate = tmp_path / "gate"
    blocked = wait_for_file.remote(str(gate))
    ready_ref = pa.put(1)
    ready, not_ready = pa.wait([blocked, ready_ref], num_returns=2, timeout=0.05)
    assert ready == [ready_ref] and not_ready == [blocked]
    gate.touch()
    assert pa.get(blocked, timeout=30) == "gate"


def test_wait_counts_failed_tasks_as_ready(pa_module):
    """A task that raised is 'ready' for wait (get then raises)."""
    @pa.remote
    def fails():
        raise ValueError("x")

    ref = fails.remote()
    ready, _ = pa.wait([ref], timeout=30)
    assert ready == [ref]


def test_wait_rejects_bad_arguments(pa_module):
    """wait validates its arguments with TypeError / ValueError."""
    ref = pa.put(1)
    with pytest.raises(TypeError):
        pa.wait(ref)
    with pytest.raises(ValueError):
        pa.wait([ref, ref])
    with pytest.raises(ValueError):
        pa.wait([ref], num_returns=2)
    assert pa.wait([]) == ([], [])


# ---------------------------------------------------------------------- large values
def test_put_large_array_reads_back_zero_copy_and_read_only(baseline):
    """put(50 MB array) -> get returns a read-only array viewing the store, not a copy."""
    array = np.arange(BIG_BYTES // 8, dtype=np.int64)
    ref = pa.put(array)
    assert store_stats()["object_count"] == 1
    assert store_stats()["used_bytes"] >= BIG_BYTES
    first = pa.get(ref)
    second = pa.get(ref)
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 1
    np.testing.assert_array_equal(first, array)
    # Both reads view the same shared memory: no copy was made.
    assert first.__array_interface__["data"][0] == second.__array_interface__["data"][0]
    del first, second, ref
    assert store_settles_at(0)


def test_task_returning_a_large_array_is_read_from_the_store(baseline):
    """A big result goes through the store: the driver gets a read-only array, freed with its
    ref."""
    @pa.remote
    def make(n):
        return np.full(n, 3, dtype=np.uint8)

    ref = make.remote(BIG_BYTES)
    result = pa.get(ref, timeout=60)
    assert result.shape == (BIG_BYTES,) and int(result[-1]) == 3
    assert not result.flags.writeable
    assert store_stats()["object_count"] == 1
    del result, ref
    assert store_settles_at(0)


def test_large_direct_argument_is_put_implicitly(baseline, tmp_path):
    """A big array passed by value goes to the store once; the task sees a read-only view,
    and the object is freed after the task finishes."""
    gate = tmp_path / "gate"

    @pa.remote
    def inspect(array, gate):
        while not os.path.exists(gate):
            time.sleep(0.01)
        return array.flags.writeable, int(array.sum())

    array = np.ones(4 * INLINE_THRESHOLD_BYTES, dtype=np.uint8)
    ref = inspect.remote(array, str(gate))
    assert store_stats()["object_count"] == 1  # the argument, held for the task
    gate.touch()
    assert pa.get(ref, timeout=30) == (False, array.size)
    assert store_settles_at(0)


def test_large_array_inside_a_container_round_trips(pa_module):
    """Arrays nested in dicts/lists go through the store and come back equal."""
    value = {"a": np.arange(1 << 18, dtype=np.float32), "b": [np.zeros((64, 64)), "x"]}
    got = pa.get(identity.remote(value), timeout=30)
    np.testing.assert_array_equal(got["a"], value["a"])
    np.testing.assert_array_equal(got["b"][0], value["b"][0])
    assert got["b"][1] == "x"


# ---------------------------------------------------------------------- reference counting
def test_object_is_freed_when_the_last_ref_is_dropped(baseline):
    """Dropping the only ref deletes the object from the store and the owner's table."""
    ref = pa.put(np.zeros(1 << 20))
    assert store_stats()["object_count"] == 1
    assert owned_entries() == baseline["owned"] + 1
    del ref
    assert store_settles_at(0)
    assert owned_entries() == baseline["owned"]


def test_copies_of_a_ref_keep_the_object_alive(baseline):
    """An object lives while any ObjectRef instance (copies, deserialized ones) exists."""
    import pickle
    ref = pa.put(np.zeros(1 << 20))
    clone = pickle.loads(pickle.dumps(ref))
    del ref
    gc.collect()
    assert store_stats()["object_count"] == 1
    assert pa.get(clone).shape == (1 << 20,)
    del clone
    assert store_settles_at(0)


def test_ref_inside_a_put_container_keeps_the_inner_object_alive(baseline):
    """put([inner]) keeps inner alive after its own ref is dropped, until the outer goes."""
    inner = pa.put(np.ones(1 << 20))
    outer = pa.put([inner])
    del inner
    gc.collect()
    assert store_stats()["object_count"] == 1
    (inner_again,) = pa.get(outer)
    assert pa.get(inner_again).sum() == 1 << 20
    del inner_again, outer
    assert store_settles_at(0)
    assert owned_entries() == baseline["owned"]


def test_argument_is_kept_until_the_task_finishes(baseline, tmp_path):
    """A ref passed to a task (top level or nested) is not freed while the task runs, even if
    the driver drops its refs right after submitting."""
    gate = tmp_path / "gate"

    @pa.remote
    def use_later(direct, nested, gate):
        while not os.path.exists(gate):
            time.sleep(0.01)
        return int(direct.sum()) + int(pa.get(nested[0]).sum())

    direct = pa.put(np.ones(1 << 20, dtype=np.uint8))
    nested = pa.put(np.ones(1 << 20, dtype=np.uint8))
    result = use_later.remote(direct, [nested], str(gate))
    del direct, nested
    gc.collect()
    assert store_stats()["object_count"] == 2
    gate.touch()
    assert pa.get(result, timeout=30) == 2 << 20
    assert store_settles_at(0)


def test_ref_returned_inside_a_task_result_stays_alive(baseline):
    """A task returning [pa.put(big)] hands the driver a ref that stays valid after the worker
    dropped its own; the object is freed when the driver drops it."""
    @pa.remote
    def make_inner():
        return [pa.put(np.full(1 << 20, 7, dtype=np.uint8))]

    (inner,) = pa.get(make_inner.remote(), timeout=30)
    gc.collect()
    assert int(pa.get(inner, timeout=30)[0]) == 7
    assert store_stats()["object_count"] == 1
    del inner
    assert store_settles_at(0)


def test_task_results_are_freed_when_dropped(baseline):
    """Large task results vanish from the store and the owner's table once their refs are
    dropped, whether or not they were read."""
    @pa.remote
    def make(i):
        return np.full(1 << 18, i, dtype=np.uint8)

    refs = [make.remote(i) for i in range(6)]
    pa.wait(refs, num_returns=6, timeout=60)
    assert pa.get(refs[3])[0] == 3
    assert store_stats()["object_count"] == 6
    del refs
    assert store_settles_at(0)
    assert owned_entries() == baseline["owned"]


def test_get_of_a_freed_own_object_raises_object_lost(pa_module):
    """A ref rebuilt after its object was freed reads as ObjectLostError, not a hang."""
    import pickle
    ref = pa.put(np.zeros(1 << 20))
    data = pickle.dumps(ref)
    del ref
    gc.collect()
    revived = pickle.loads(data)
    with pytest.raises(pa.ObjectLostError):
        pa.get(revived, timeout=10)


def test_refs_freed_by_the_cycle_collector_at_any_moment_do_not_deadlock():
    """An ObjectRef in a garbage cycle may be collected inside any allocation, including ones
    the runtime makes while it updates its reference table: that must not hang the process."""
    script = (
        "import gc\n"
        "import pyactor as pa\n"
        "from pyactor._private import api\n"
        "pa.init(num_cpus=1)\n"
        "class Cycle:\n"
        "    def __init__(self, ref): self.ref, self.me = ref, self\n"
        "cycle = Cycle(pa.put(1))\n"
        "table = api._runtime.refs\n"
        "with table.lock:  # where the runtime may allocate, hence collect\n"
        "    del cycle\n"
        "    gc.collect()\n"
        "assert table.stats()['owned'] == 0, table.stats()\n"
        "print('no deadlock')\n"
    )
    result = run_python(script, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert "no deadlock" in result.stdout


@pytest.mark.slow
def test_100k_tasks_leave_no_objects_or_entries_behind(baseline):
    """100,000 tasks in batches: the store and the owner's table shrink back afterwards."""
    @pa.remote
    def small(i):
        return i

    @pa.remote
    def big(i):
        return np.full(INLINE_THRESHOLD_BYTES, i % 256, dtype=np.uint8)

    total = 0
    for batch in range(100):
        refs = [small.remote(i) for i in range(990)] + [big.remote(i) for i in range(10)]
        values = pa.get(refs, timeout=60)
        total += sum(values[:990]) + sum(int(v[0]) for v in values[990:])
        del refs, values
    assert total == 100 * (sum(range(990)) + sum(range(10)))
    assert store_settles_at(0)
    assert wait_until(lambda: owned_entries() == baseline["owned"], 10)
    assert api._runtime.refs.stats()["borrowed"] == 0


@pa.remote
def fails():
    raise ValueError("bad argument source")


@pa.remote
def takes_two(a, b):
    return a, b


def test_a_task_whose_two_arguments_failed_fails_once_and_is_freed(pa_module):
    """Two failed ref arguments: the task fails with the first error, and its return entry is
    freed like any other (finishing it twice left it pinned forever)."""
    first, second = fails.remote(), fails.remote()
    with pytest.raises(ValueError):
        pa.get([first, second])
    before = owned_entries()
    ref = takes_two.remote(first, second)
    with pytest.raises(ValueError, match="bad argument source"):
        pa.get(ref, timeout=30)
    del ref
    gc.collect()
    assert wait_until(lambda: owned_entries() == before, 10)
