"""pyactor.multiprocessing.Pool: the standard library's Pool tests (CPython
Lib/test/_test_multiprocessing.py: _TestPool, _TestPoolWorkerErrors, _TestPoolWorkerLifetime,
TestInitializers), rewritten for this pool, then what it does beyond them: dead workers, lambdas,
zero-copy numpy, pyactor started on demand."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
import weakref

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


def mul(x, y):
    return x * y


def identity(x):
    return x


def raising():
    raise KeyError("key")


def raise_runtime_error():
    raise RuntimeError(123)  # the line the remote traceback shows


def raise_large_valueerror(wait):
    time.sleep(wait)
    raise ValueError("x" * 1024 ** 2)


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


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total, when):
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


class CountedObject:
    n_instances = 0

    def __new__(cls):
        cls.n_instances += 1
        return object.__new__(cls)

    def __del__(self):
        type(self).n_instances -= 1


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


# ---------------------------------------------------------------------- _TestPool
def test_apply(pool):
    """apply runs func(*args, **kwds) in a worker and returns its value."""
    assert pool.apply(sqr, (5,)) == 25
    assert pool.apply(sqr, (), {"x": 3}) == 9


def test_map(pool):
    """map returns the results in order, with the default or an explicit chunksize."""
    assert pool.map(sqr, list(range(10))) == [x * x for x in range(10)]
    assert pool.map(sqr, list(range(100)), chunksize=20) == [x * x for x in range(100)]


def test_starmap(pool):
    """starmap unpacks each item as the arguments."""
    tuples = list(zip(range(10), range(9, -1, -1)))
    assert pool.starmap(mul, tuples) == list(itertools.starmap(mul, tuples))
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert pool.starmap(mul, tuples, chunksize=20) == list(itertools.starmap(mul, tuples))


def test_starmap_async(pool):
    """starmap_async(...).get() equals starmap."""
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert pool.starmap_async(mul, tuples).get() == list(itertools.starmap(mul, tuples))


def test_map_async(pool):
    """map_async(...).get() equals map."""
    assert pool.map_async(sqr, list(range(10))).get() == [x * x for x in range(10)]


def test_map_async_callbacks(pool):
    """The callback gets the whole result list; the error_callback gets the exception."""
    call_args = []
    pool.map_async(int, ["1"], callback=call_args.append,
                   error_callback=call_args.append).wait()
    assert call_args == [[1]]
    pool.map_async(int, ["a"], callback=call_args.append,
                   error_callback=call_args.append).wait()
    assert len(call_args) == 2
    assert isinstance(call_args[1], ValueError)


def test_map_unpicklable(pool):
    """An argument that cannot be pickled fails the call with its own error, no hang."""
    class A:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")
    with pytest.raises(RuntimeError):
        pool.map(sqr, [A()] * 10)


def test_map_chunksize_on_empty_list(pool):
    """map_async with chunksize over an empty list is ready at once."""
    assert pool.map_async(sqr, [], chunksize=1).get(timeout=10) == []


def test_map_handle_iterable_exception(pool):
    """An iterable that raises makes map raise that error, and map can be called again."""
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(10, 3), 1)

    class SpecialIterable:
        def __iter__(self):
            return self

        def __next__(self):
            raise SayWhenError

        def __len__(self):
            return 1
    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)


def test_async(pool):
    """apply_async(...).get() returns the value."""
    assert pool.apply_async(sqr, (7, 0.01)).get() == 49


def test_async_timeout(pa_module):
    """get(timeout) raises multiprocessing.TimeoutError while the task still runs."""
    p = Pool(3)
    try:
        result = p.apply_async(sqr, (6, 300))
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.05)
        assert PoolTimeoutError is multiprocessing.TimeoutError
    finally:
        p.terminate()
        p.join()


def test_imap(pool):
    """imap yields the results in order, item by item, then StopIteration."""
    assert list(pool.imap(sqr, list(range(10)))) == [x * x for x in range(10)]
    it = pool.imap(sqr, list(range(10)))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)
    it = pool.imap(sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)


def test_imap_handle_iterable_exception(pool):
    """imap yields the results made before the iterable raised, then raises its error."""
    it = pool.imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    it = pool.imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    it = pool.imap(sqr, exception_throwing_generator(10, 3), 1)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(SayWhenError):
        next(it)
    # The chunk being made when the iterable raised is lost, as in the standard Pool.
    it = pool.imap(sqr, exception_throwing_generator(20, 7), 2)
    assert [next(it) for _ in range(6)] == [i * i for i in range(6)]
    with pytest.raises(SayWhenError):
        next(it)
    it = pool.imap(sqr, exception_throwing_generator(20, 7), 4)
    assert [next(it) for _ in range(4)] == [i * i for i in range(4)]
    with pytest.raises(SayWhenError):
        next(it)


def test_imap_unordered(pool):
    """imap_unordered yields every result once, in any order."""
    assert sorted(pool.imap_unordered(sqr, list(range(10)))) == [x * x for x in range(10)]
    assert sorted(pool.imap_unordered(sqr, list(range(1000)), chunksize=100)) == \
        [x * x for x in range(1000)]


def test_imap_unordered_handle_iterable_exception(pool):
    """imap_unordered raises the iterable's error after yielding only valid results."""
    it = pool.imap_unordered(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    for total, when, chunksize in [(10, 3, 1), (20, 7, 2)]:
        it = pool.imap_unordered(sqr, exception_throwing_generator(total, when), chunksize)
        expected = [x * x for x in range(total)]
        with pytest.raises(SayWhenError):
            for _ in range(total):
                value = next(it)
                expected.remove(value)


def test_make_pool(pa_module):
    """processes < 1 is a ValueError; Pool(3) has three workers."""
    with pytest.raises(ValueError):
        Pool(-1)
    with pytest.raises(ValueError):
        Pool(0)
    p = Pool(3)
    try:
        assert len(p._pool) == 3
    finally:
        p.close()
        p.join()


def test_terminate_with_long_tasks(pa_module):
    """terminate() with thousands of long tasks queued returns, and join() after it too."""
    p = Pool(3)
    p.map_async(time.sleep, [300] * 10_000, chunksize=1)
    p.terminate()
    p.join()


def test_empty_iterable(pa_module):
    """Every map flavour of an empty iterable gives an empty result."""
    p = Pool(1)
    assert p.map(sqr, []) == []
    assert list(p.imap(sqr, [])) == []
    assert list(p.imap_unordered(sqr, [])) == []
    assert p.map_async(sqr, []).get() == []
    p.close()
    p.join()


def test_context_manager_terminates(pa_module):
    """`with Pool() as p` works, and the pool is not running after the block."""
    values = list(range(10))
    with Pool(2) as p:
        assert p.map_async(sqr, values).get() == [sqr(i) for i in values]
    p.join()
    with pytest.raises(ValueError, match="Pool not running"):
        p.map_async(sqr, values)


def test_traceback(pool):
    """The re-raised exception has the original type and args, and its __cause__ is a
    RemoteTraceback holding the worker's traceback; an error of the iterable is not remote."""
    with pytest.raises(RuntimeError) as info:
        pool.apply(raise_runtime_error)
    assert type(info.value) is RuntimeError
    assert info.value.args == (123,)
    cause = info.value.__cause__
    assert type(cause) is RemoteTraceback
    assert "raise RuntimeError(123)  # the line the remote traceback shows" in cause.tb
    with pytest.raises(SayWhenError) as info:
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    assert type(info.value) is SayWhenError
    assert info.value.__cause__ is None


def test_map_no_failfast(pa_module):
    """A failing map does not make close() + join() deadlock on the other chunks."""
    with pytest.raises(ValueError):
        with Pool(2) as p:
            try:
                p.map(raise_large_valueerror, [0, 0.1])
            finally:
                p.close()
                p.join()


def test_release_task_refs(pool):
    """The pool keeps no reference to the arguments (or result copies) once map returns."""
    objs = [CountedObject() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    pool.map(identity, objs)
    del objs
    import gc
    gc.collect()
    assert {r() for r in refs} == {None}
    assert CountedObject.n_instances == 0


def test_enter_after_terminate(pa_module):
    """Entering a pool that is not running is a ValueError."""
    p = Pool(1)
    with p:
        pass
    with pytest.raises(ValueError):
        with p:
            pass
    p.join()


def test_resource_warning(pa_module):
    """A pool collected while running warns (ResourceWarning), like the standard one."""
    p = Pool(1)
    p.terminate()
    p.join()
    p._state = "RUN"
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del p
        import gc
        gc.collect()


# ---------------------------------------------------------------------- misc standard rules
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


# ---------------------------------------------------------------------- _TestPoolWorkerErrors
def test_async_error_callback(pool):
    """error_callback receives the exception get() raises."""
    scratchpad = [None]
    result = pool.apply_async(raising, error_callback=lambda e: scratchpad.__setitem__(0, e))
    with pytest.raises(KeyError):
        result.get()
    assert isinstance(scratchpad[0], KeyError)


def test_unpicklable_result(pool):
    """A result that cannot be pickled fails as MaybeEncodingError and costs no worker.
    (A lambda result would pickle here, thanks to cloudpickle: a lock cannot.)"""
    for _ in range(20):
        scratchpad = [None]
        result = pool.apply_async(unpicklable_result,
                                  error_callback=lambda e: scratchpad.__setitem__(0, e))
        with pytest.raises(MaybeEncodingError):
            result.get()
        wrapped = scratchpad[0]
        assert isinstance(wrapped, MaybeEncodingError)
        assert wrapped.exc is not None and wrapped.value is not None
    assert pool.apply(sqr, (4,)) == 16


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


# ---------------------------------------------------------------------- _TestPoolWorkerLifetime
def test_pool_worker_lifetime(pa_module):
    """With maxtasksperchild=10, 100 tasks on 3 workers run in more than 3 processes."""
    p = Pool(3, maxtasksperchild=10)
    assert len(p._pool) == 3
    results = [p.apply_async(pid_after, ()) for _ in range(100)]
    pids = {r.get() for r in results}
    assert len(pids) >= 10
    p.close()
    p.join()


def test_pool_worker_lifetime_early_close(pa_module):
    """close() while workers of maxtasksperchild=1 still have work does not hang join()."""
    p = Pool(3, maxtasksperchild=1)
    results = [p.apply_async(sqr, (i, 0.05)) for i in range(6)]
    p.close()
    p.join()
    assert [r.get() for r in results] == [sqr(j) for j in range(6)]


def test_maxtasksperchild_one_gives_each_task_a_fresh_process(pa_module):
    """maxtasksperchild=1: every task (each item of a chunksize=1 map) has its own process."""
    p = Pool(2, maxtasksperchild=1)
    pids = p.map(pid_after, [0.0] * 8, chunksize=1)
    pids += [p.apply(pid_after) for _ in range(2)]
    assert len(set(pids)) == 10
    p.close()
    p.join()


def test_maxtasksperchild_invalid(pa_module):
    for value in [0, -1, 0.5, "12"]:
        with pytest.raises(ValueError):
            Pool(3, maxtasksperchild=value)


# ---------------------------------------------------------------------- TestInitializers
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
