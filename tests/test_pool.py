"""pyactor.multiprocessing.Pool beyond CPython's own Pool tests (those run unchanged in
test_pool_cpython.py): the standard rules they leave out, behaviours compared item by item with
the standard Pool, then what this pool does beyond it: dead workers, lambdas, zero-copy numpy,
pyactor started on demand."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from conftest import process_alive, run_python, wait_until
from pyactor.exceptions import WorkerCrashedError
from pyactor.multiprocessing import (MaybeEncodingError, Pool, RemoteTraceback,
                                     TimeoutError as PoolTimeoutError)


# ---------------------------------------------------------------------- task functions
def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def raising():
    raise KeyError("key")


def unpicklable_result():
    return threading.Lock()


def pid_after(wait=0.0):
    time.sleep(wait)
    return os.getpid()


def exit_now(code=1):
    os._exit(code)


def exit_on(x, bad):
    if x == bad:
        os._exit(1)
    return x * x


INITIALIZED_WITH = None


def set_global(value):
    global INITIALIZED_WITH
    INITIALIZED_WITH = (value, os.getpid())


def read_global(_):
    return INITIALIZED_WITH


def write_pid_then_sleep(directory):
    with open(os.path.join(directory, str(os.getpid())), "w"):
        pass
    time.sleep(300)


def array_info(a):
    return a.flags.writeable, float(a.sum())


def make_array(n):
    return np.full(n, 2.0)




# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pool(pa_module):
    pool = Pool(2)
    yield pool
    pool.terminate()
    pool.join()


# ---------------------------------------------------------------------- standard rules
def test_async_result_states(pool):
    """successful() raises ValueError until ready; then ready() and successful() agree."""
    slow_pool = Pool(1)
    result = slow_pool.apply_async(sqr, (2, 300))
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    slow_pool.terminate()
    ok = pool.apply_async(sqr, (3,))
    ok.wait()
    assert ok.ready() and ok.successful() and ok.get() == 9
    bad = pool.apply_async(raising)
    bad.wait()
    assert bad.ready() and not bad.successful()


def test_closed_pool_and_join_rules(pa_module):
    """join() before close() is a ValueError; a closed pool refuses work ("Pool not
    running"); close() lets queued work finish."""
    p = Pool(1)
    with pytest.raises(ValueError, match="still running"):
        p.join()
    results = [p.apply_async(sqr, (i,)) for i in range(5)]
    p.close()
    for call in (lambda: p.apply(sqr, (1,)), lambda: p.map(sqr, [1]),
                 lambda: p.imap(sqr, [1]), lambda: p.apply_async(sqr, (1,))):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    p.join()
    assert [r.get() for r in results] == [i * i for i in range(5)]


def test_bad_chunksize_rejected(pool):
    """chunksize < 1 is a ValueError for map, imap and imap_unordered."""
    for bad in (0, -1):
        with pytest.raises(ValueError):
            pool.map(sqr, [1, 2], chunksize=bad)
        with pytest.raises(ValueError):
            pool.imap(sqr, [1, 2], chunksize=bad)
        with pytest.raises(ValueError):
            pool.imap_unordered(sqr, [1, 2], chunksize=bad)


def test_pool_cannot_be_pickled(pool):
    """Like the standard Pool, a pool cannot be pickled."""
    import pickle
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_callback_errors_do_not_break_the_pool(pool, monkeypatch):
    """A callback or error_callback that raises is reported (threading.excepthook); the result
    is still set and the pool keeps serving."""
    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_value))

    def bad_callback(_value):
        raise ZeroDivisionError("callback failed")
    first = pool.apply_async(sqr, (3,), callback=bad_callback)
    assert first.get() == 9
    second = pool.apply_async(raising, error_callback=bad_callback)
    with pytest.raises(KeyError):
        second.get()
    assert pool.map(sqr, range(5)) == [0, 1, 4, 9, 16]
    assert [str(e) for e in reported] == ["callback failed", "callback failed"]


def test_maxtasksperchild_one_gives_each_task_a_fresh_process(pa_module):
    """maxtasksperchild=1: every task (each item of a chunksize=1 map) has its own process."""
    p = Pool(2, maxtasksperchild=1)
    pids = p.map(pid_after, [0.0] * 8, chunksize=1)
    pids += [p.apply(pid_after) for _ in range(2)]
    assert len(set(pids)) == 10
    p.close()
    p.join()


def test_initializer_sets_a_global_once_per_worker(pa_module):
    """The initializer runs once in each worker, and tasks see the global it set."""
    with pytest.raises(TypeError):
        Pool(initializer=1)
    p = Pool(2, initializer=set_global, initargs=("hello",))
    seen = set(p.map(read_global, range(40), chunksize=1))
    assert {value for value, _pid in seen} == {"hello"}
    assert len(seen) <= 2  # one (value, pid) per worker: it ran once in each
    p.close()
    p.join()


# ---------------------------------------------------------------------- as the standard Pool does
@pytest.fixture(scope="module")
def standard_pool():
    """The standard library's Pool, to compare with (spawned: this process runs threads)."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        yield pool
    pool.join()


def double_unless_multiple_of_97(x):
    if x and x % 97 == 0:
        raise ValueError(f"item {x}")
    return 2 * x


def outcomes(iterator) -> list:
    """Every next() of an imap iterator until StopIteration: a value, or the error it raised."""
    seen = []
    while True:
        try:
            seen.append(("value", next(iterator)))
        except StopIteration:
            return seen
        except ValueError as error:
            seen.append(("error", error.args))


def test_imap_with_failing_items_matches_the_standard_pool_item_by_item(pool, standard_pool):
    """1,000 items of which 10 raise: imap gives what the standard Pool gives, next() by next(),
    for chunksize 1 (each error in its item's place, iteration goes on) and larger chunksizes
    (a failed chunk is one error, and the iteration ends there)."""
    items = range(1000)
    lengths = {}
    for chunksize in (1, 7, 100):
        expected = outcomes(standard_pool.imap(double_unless_multiple_of_97, items, chunksize))
        assert outcomes(pool.imap(double_unless_multiple_of_97, items, chunksize)) == expected
        lengths[chunksize] = len(expected)
    # All 1,000 (10 errors); values 0..90, then the chunk 91..97 fails; the first chunk fails.
    assert lengths == {1: 1000, 7: 92, 100: 1}


def test_imap_unordered_with_a_failing_chunk_ends_after_its_error(pool):
    """imap_unordered, chunksize > 1: values only from whole chunks that succeeded, each with
    its own input, then one error, then the end (as the standard Pool's)."""
    seen = outcomes(pool.imap_unordered(double_unless_multiple_of_97, range(1000), 10))
    *values, last = seen
    assert last[0] == "error" and all(kind == "value" for kind, _ in values)
    inputs = sorted(value // 2 for _, value in values)
    assert len(inputs) % 10 == 0 and len(set(inputs)) == len(inputs)
    assert all(x % 97 or x == 0 for x in inputs)


def returns_a_lambda():
    return lambda: 42


def test_unpicklable_result_is_the_standard_maybe_encoding_error(pool, standard_pool):
    """A lambda as a result raises multiprocessing.pool.MaybeEncodingError with the standard
    Pool's message; the pool goes on."""
    def message(error):
        return re.sub(r"0x[0-9a-f]+", "0x", str(error))
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as theirs:
        standard_pool.apply(returns_a_lambda)
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as ours:
        pool.apply(returns_a_lambda)
    assert message(ours.value) == message(theirs.value)
    assert message(ours.value).startswith("Error sending result: '<function returns_a_lambda.")
    with pytest.raises(MaybeEncodingError):
        pool.apply(unpicklable_result)
    assert pool.apply(sqr, (4,)) == 16


def test_exception_classes_are_the_standard_librarys(pool):
    """The classes users catch are the standard library's own, not look-alikes."""
    assert MaybeEncodingError is multiprocessing.pool.MaybeEncodingError
    assert RemoteTraceback is multiprocessing.pool.RemoteTraceback
    assert PoolTimeoutError is multiprocessing.TimeoutError
    with pytest.raises(KeyError) as info:
        pool.apply(raising)
    assert type(info.value.__cause__) is multiprocessing.pool.RemoteTraceback
    assert 'raise KeyError("key")' in info.value.__cause__.tb


def test_pool_processes_show_pid_liveness_and_exit_code(pa_module):
    """pool._pool holds one record per worker with the process's pid, is_alive() and exitcode;
    workers retired under maxtasksperchild leave it (dead, exit code -SIGKILL) for new ones."""
    p = Pool(2, maxtasksperchild=1)
    first = list(p._pool)
    pids = [worker.pid for worker in first]
    assert all(process_alive(pid) for pid in pids)
    assert [(w.is_alive(), w.exitcode) for w in first] == [(True, None), (True, None)]
    assert sorted(p.map(pid_after, [0.0, 0.0], chunksize=1)) == sorted(pids)
    p._repopulate_pool()
    assert len(p._pool) == 2 and not set(p._pool) & set(first)
    assert [(w.is_alive(), w.exitcode) for w in first] == [(False, -signal.SIGKILL)] * 2
    assert wait_until(lambda: not any(process_alive(pid) for pid in pids), 10)
    assert all(w.is_alive() and w.pid not in pids for w in p._pool)
    p.close()
    p.join()
    assert not any(w.is_alive() for w in p._pool)


def touch_pid_file(directory):
    with open(os.path.join(directory, str(os.getpid())), "w"):
        pass


def test_initializer_runs_in_each_worker_even_without_a_task(pa_module, tmp_path):
    """A pool closed before any task still runs the initializer once in every worker."""
    p = Pool(3, initializer=touch_pid_file, initargs=(str(tmp_path),))
    p.close()
    p.join()
    assert sorted(os.listdir(tmp_path)) == sorted(str(worker.pid) for worker in p._pool)


def append_to(shared, value):
    shared.append(value)


def test_manager_proxies_work_in_tasks(pool):
    """A Manager's proxy passed to tasks connects to its manager (the workers hold the parent's
    multiprocessing authkey, as the standard Pool's do)."""
    with multiprocessing.get_context("spawn").Manager() as manager:
        shared = manager.list()
        pool.starmap(append_to, [(shared, i) for i in range(5)], chunksize=1)
        assert sorted(shared) == list(range(5))


# ---------------------------------------------------------------------- beyond the standard Pool
def test_killed_worker_raises_and_is_replaced(pool):
    """A worker that dies mid-task fails that call with WorkerCrashedError; the pool replaces
    it and goes on."""
    with pytest.raises(WorkerCrashedError):
        pool.apply(exit_now)
    with pytest.raises(WorkerCrashedError):
        pool.starmap(exit_on, [(i, 7) for i in range(20)], chunksize=1)
    assert pool.map(sqr, range(20)) == [i * i for i in range(20)]
    assert len(set(pool.map(pid_after, [0.05] * 4, chunksize=1))) >= 1


def test_killed_worker_with_other_work_queued(pool):
    """Only the chunk that killed its worker fails; the chunks batched with it still run."""
    results = [pool.apply_async(exit_on, (i, 5)) for i in range(30)]
    outcomes = []
    for r in results:
        try:
            outcomes.append(r.get())
        except WorkerCrashedError:
            outcomes.append("crashed")
    assert outcomes == ["crashed" if i == 5 else i * i for i in range(30)]


def test_terminate_with_tasks_in_flight_leaves_no_process(pa_module, tmp_path):
    """terminate() kills workers in the middle of tasks: no worker process survives it, and
    results still pending fail instead of hanging."""
    p = Pool(2)
    pending = p.map_async(write_pid_then_sleep, [str(tmp_path)] * 6, chunksize=1)
    assert wait_until(lambda: len(os.listdir(tmp_path)) == 2, 30)
    pids = [int(name) for name in os.listdir(tmp_path)]
    assert all(process_alive(pid) for pid in pids)
    p.terminate()
    p.join()
    assert wait_until(lambda: not any(process_alive(pid) for pid in pids), 10)
    with pytest.raises(Exception):
        pending.get(timeout=10)


def test_lambdas_and_closures(pool):
    """Functions go by value (cloudpickle): lambdas and closures work."""
    offset = 10
    assert pool.map(lambda x: x + offset, range(5)) == [10, 11, 12, 13, 14]
    assert pool.apply(lambda: offset * 2) == 20
    assert sorted(pool.imap_unordered(lambda x: -x, range(3))) == [-2, -1, 0]


def test_numpy_through_the_store_zero_copy(pool):
    """Large arrays reach workers as read-only views of the shared store (no copy), and large
    results come back the same way; small arrays are plain writable copies."""
    big = [np.ones(1 << 18) * i for i in range(4)]  # 2 MiB each
    assert pool.map(array_info, big) == [(False, float(i * (1 << 18))) for i in range(4)]
    small = pool.apply(array_info, (np.ones(10),))
    assert small == (True, 10.0)
    out = pool.apply(make_array, (1 << 18,))
    assert not out.flags.writeable and out.sum() == 2.0 * (1 << 18)


def test_pool_starts_and_stops_pyactor_itself():
    """Without pa.init, the pool starts pyactor and shuts down only what it started."""
    code = """if 1:
        import pyactor as pa
        from pyactor.multiprocessing import Pool
        def f(x): return x + 1
        assert not pa.is_initialized()
        with Pool(2) as p:
            assert p.map(f, range(3)) == [1, 2, 3]
            assert pa.is_initialized()
        p.join()
        assert not pa.is_initialized()
        pa.init(num_cpus=2)
        p = Pool(1)
        assert p.apply(f, (1,)) == 2
        p.close(); p.join()
        assert pa.is_initialized()   # not the pool's to stop
        pa.shutdown()
        print("ok")
    """
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_maxtasksperchild_never_stalls_when_every_worker_retires_at_once(pa_module):
    """When all workers retire in one pass, their replacements still get the pending work (this
    stalled about once in ten maps before)."""
    for _ in range(40):
        p = Pool(2, maxtasksperchild=1)
        pids = p.map_async(pid_after, [0.0] * 8, chunksize=1).get(timeout=30)
        assert len(set(pids)) == 8
        p.close()
        p.join()
