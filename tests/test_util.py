"""pyactor.util from a user's point of view: ActorPool and the actor-backed Queue."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import pyactor as pa
from pyactor.util import ActorPool, Empty, Full, Queue

GET_TIMEOUT_S = 30


@pa.remote
class Doubler:
    def double(self, v):
        return 2 * v

    def wait_then_double(self, path, v):
        """Returns once `path` exists (the test opens the gate)."""
        import time
        while not os.path.exists(path):
            time.sleep(0.005)
        return 2 * v

    def die(self):
        os._exit(1)


@pa.remote
def consume(queue, n):
    return [queue.get(timeout=GET_TIMEOUT_S) for _ in range(n)]


def test_import_stays_light():
    """`import pyactor.util` loads neither the runtime nor the pool/queue modules."""
    code = ("import sys, pyactor.util; "
            "print(any(m in sys.modules for m in ('pyactor._private.runtime', "
            "'pyactor.util.queue', 'pyactor.util.actor_pool', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


# ---------------------------------------------------------------------- ActorPool
def test_map_returns_results_in_order(pa_module):
    """map yields fn's results in the order of the values, whatever the finishing order."""
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(10))) == \
        [2 * v for v in range(10)]
    assert not pool.has_next()


def test_map_unordered_returns_every_result(pa_module):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(10))) == \
        [2 * v for v in range(10)]


def test_map_unordered_gives_the_finished_result_first(pa_module, tmp_path):
    """A result held up behind a gate does not hold back one that finished."""
    gate = str(tmp_path / "gate")
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.wait_then_double.remote(gate, v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.get_next_unordered(timeout=GET_TIMEOUT_S) == 4
    open(gate, "w").close()
    assert pool.get_next_unordered(timeout=GET_TIMEOUT_S) == 2
    assert not pool.has_next()


def test_submit_beyond_the_pool_queues_until_an_actor_is_free(pa_module):
    """With one actor, the second value waits; it goes out once the first result is taken."""
    actor = Doubler.remote()
    pool = ActorPool([actor])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert not pool.has_free()
    assert pool.pop_idle() is None
    assert pool.get_next() == 2
    assert pool.get_next() == 4
    assert pool.has_free()
    assert pool.pop_idle() == actor
    assert pool.pop_idle() is None


def test_get_next_timeout_keeps_or_gives_up_the_result(pa_module, tmp_path):
    """A timeout raises TimeoutError and keeps the result; with ignore_if_timedout it is
    dropped and the pool moves on."""
    gate = str(tmp_path / "gate")
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.wait_then_double.remote(gate, v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 5)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    assert pool.has_next()
    with pytest.raises(TimeoutError, match="given up"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert pool.get_next(timeout=GET_TIMEOUT_S) == 10
    assert not pool.has_next()
    open(gate, "w").close()


def test_get_next_unordered_timeout(pa_module, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.wait_then_double.remote(gate, v), 3)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.05)
    open(gate, "w").close()
    assert pool.get_next_unordered(timeout=GET_TIMEOUT_S) == 6


def test_get_next_after_get_next_unordered_is_refused(pa_module):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    pool.get_next_unordered()  # may have returned index 0: get_next then has nothing ordered
    pool.submit(lambda a, v: a.double.remote(v), 3)
    assert pool.get_next_unordered() in (2, 4, 6)
    with pytest.raises(StopIteration):
        while True:
            pool.get_next_unordered()


def test_empty_pool_raises_stop_iteration(pa_module):
    pool = ActorPool([])
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_push_adds_an_actor_and_refuses_a_duplicate(pa_module):
    """A pushed actor takes a waiting value at once; pushing a member is a ValueError."""
    pool = ActorPool([])
    pool.submit(lambda a, v: a.double.remote(v), 21)
    assert not pool.has_next()
    actor = Doubler.remote()
    pool.push(actor)
    assert pool.has_next()
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(actor)
    assert pool.get_next() == 42


def test_fn_must_return_a_ref(pa_module):
    pool = ActorPool([Doubler.remote()])
    with pytest.raises(TypeError, match="ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free()


def test_dead_actor_leaves_the_pool(pa_fresh):
    """A call whose actor died raises ActorDiedError and that actor gets no more work."""
    pa.init(num_cpus=2)
    actors = [Doubler.remote(), Doubler.remote()]
    pool = ActorPool(actors)
    doomed = []
    pool.submit(lambda a, v: doomed.append(a) or a.die.remote(), None)
    pool.submit(lambda a, v: a.double.remote(v), 1)
    with pytest.raises(pa.ActorDiedError):
        pool.get_next()
    assert pool.get_next() == 2
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    survivor = next(a for a in actors if a != doomed[0])
    assert pool.pop_idle() == survivor
    assert pool.pop_idle() is None


# ---------------------------------------------------------------------- Queue
def test_queue_is_fifo_with_sizes(pa_module):
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.qsize() == 0 and len(q) == 0
    for item in ("a", "b", "c"):
        q.put(item)
    assert q.full() and q.qsize() == 3
    assert [q.get(), q.get(), q.get()] == ["a", "b", "c"]
    q.shutdown()


def test_queue_nowait_raises_plain_empty_and_full(pa_module):
    """Empty/Full come as the plain exceptions, as from ray.util.queue."""
    q = Queue(maxsize=1)
    with pytest.raises(Empty) as empty:
        q.get_nowait()
    assert type(empty.value) is Empty
    q.put_nowait(1)
    with pytest.raises(Full) as full:
        q.put_nowait(2)
    assert type(full.value) is Full
    with pytest.raises(Full):
        q.put(2, block=False)
    assert q.get(block=False) == 1
    q.shutdown()


def test_queue_blocking_timeouts(pa_module):
    q = Queue(maxsize=1)
    with pytest.raises(Empty):
        q.get(timeout=0.05)
    q.put(1)
    with pytest.raises(Full):
        q.put(2, timeout=0.05)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    q.shutdown(force=True)


def test_queue_blocked_get_is_served_by_a_later_put(pa_module):
    """A task blocked in get() returns when the driver puts (the actor serves both)."""
    q = Queue()
    consumer = consume.remote(q, 3)
    for i in range(3):
        q.put(i)
    assert pa.get(consumer, timeout=GET_TIMEOUT_S) == [0, 1, 2]
    q.shutdown()


async def test_queue_async_put_and_get(pa_module):
    q = Queue(maxsize=2)
    getter = asyncio.create_task(q.get_async(timeout=GET_TIMEOUT_S))
    await q.put_async("x")
    assert await getter == "x"
    await q.put_async(1)
    await q.put_async(2)
    with pytest.raises(Full):
        await q.put_async(3, block=False)
    with pytest.raises(Full):
        await q.put_async(3, timeout=0.05)
    assert [await q.get_async(), await q.get_async(block=False)] == [1, 2]
    with pytest.raises(Empty):
        await q.get_async(timeout=0.05)
    q.shutdown()


def test_queue_batches_are_all_or_nothing(pa_module):
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])
    assert q.qsize() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    q.shutdown()


def test_queue_shutdown_ends_the_actor(pa_module):
    q = Queue()
    q.put(1)
    actor = q.actor
    q.shutdown()
    assert q.actor is None
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(2)
    with pytest.raises(pa.ActorDiedError):
        pa.get(actor.qsize.remote(), timeout=GET_TIMEOUT_S)


def test_queue_refuses_a_bad_maxsize(pa_module):
    with pytest.raises(ValueError, match="maxsize"):
        Queue(maxsize=-1)
