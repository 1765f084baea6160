"""Streaming generators from a user's point of view: tasks and actor methods that yield."""

from __future__ import annotations

import asyncio
import gc
import os
import time

import numpy as np
import pytest

import pyactor as pa

from conftest import wait_until

GET_TIMEOUT_S = 30


@pa.remote
def produce(n):
    for i in range(n):
        yield i


@pa.remote
def produce_arrays(n, size):
    for i in range(n):
        yield np.full(size, i, dtype=np.int64)


@pa.remote
def gated(path_of):
    """Yields 0, then waits for the gate file named for item 1 before yielding 1."""
    yield 0
    while not os.path.exists(path_of):
        time.sleep(0.005)
    yield 1


@pa.remote
def fails_at(n):
    for i in range(n):
        yield i
    raise ValueError(f"boom after {n}")


@pa.remote
def endless(log_dir):
    """Writes a file per item it produced, so the test sees how far it went."""
    i = 0
    while True:
        open(os.path.join(log_dir, str(i)), "w").close()
        yield i
        i += 1


@pa.remote
def slow_endless(log_dir):
    """Each step takes a long time: a stop must interrupt it mid-step."""
    yield 0
    time.sleep(60)
    open(os.path.join(log_dir, "late"), "w").close()
    yield 1


@pa.remote
def consume_stream(n):
    """A task that itself consumes a stream (nested ownership)."""
    return [pa.get(ref) for ref in produce.remote(n)]


@pa.remote
class Streamer:
    def __init__(self):
        self.stopped = False

    def numbers(self, n):
        for i in range(n):
            yield i * 10

    def plain(self):
        return "plain"

    def slow(self, log_dir):
        """Busy between two yields: a stop must interrupt it."""
        yield 0
        time.sleep(60)
        open(os.path.join(log_dir, "late"), "w").close()
        yield 1


@pa.remote
class AsyncStreamer:
    async def numbers(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def fails(self):
        yield "first"
        raise KeyError("second")

    async def ping(self):
        return "pong"

    async def slow(self, log_dir):
        """Waits long between two yields: a stop must interrupt the wait."""
        yield 0
        try:
            await asyncio.sleep(60)
            open(os.path.join(log_dir, "late"), "w").close()
            yield 1
        finally:
            open(os.path.join(log_dir, "closed"), "w").close()


def test_generator_task_returns_refs_in_order(pa_module):
    gen = produce.remote(5)
    assert isinstance(gen, pa.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, pa.ObjectRef) for r in refs)
    assert pa.get(refs) == [0, 1, 2, 3, 4]


def test_empty_generator_stops_at_once(pa_module):
    assert list(produce.remote(0)) == []


def test_next_on_a_finished_stream_raises_stop_iteration(pa_module):
    gen = produce.remote(1)
    assert pa.get(next(gen)) == 0
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(StopIteration):
        next(gen)


def test_each_ref_comes_before_the_task_ends(pa_module, tmp_path):
    """Item 0 is received while the task still waits to yield item 1."""
    gate = str(tmp_path / "gate")
    gen = gated.remote(gate)
    first = next(gen)
    assert pa.get(first, timeout=GET_TIMEOUT_S) == 0
    ready, _ = pa.wait([gen.completed()], timeout=0)
    assert ready == []  # the task has not ended
    open(gate, "w").close()
    assert [pa.get(r) for r in gen] == [1]


def test_large_items_go_through_the_store(pa_module):
    arrays = [pa.get(ref) for ref in produce_arrays.remote(3, 200_000)]
    for i, array in enumerate(arrays):
        assert array.shape == (200_000,) and (array == i).all()


def test_error_arrives_at_its_position(pa_module):
    """Items before the error are intact; the ref at the error's position raises it; the
    stream then ends."""
    refs = list(fails_at.remote(2))
    assert len(refs) == 3
    assert pa.get(refs[:2]) == [0, 1]
    with pytest.raises(ValueError, match="boom after 2"):
        pa.get(refs[2])


async def test_async_for_over_a_task(pa_module):
    values = [await ref async for ref in produce.remote(4)]
    assert values == [0, 1, 2, 3]


def test_actor_method_streams(pa_module):
    actor = Streamer.remote()
    assert pa.get(list(actor.numbers.remote(3))) == [0, 10, 20]
    assert pa.get(actor.plain.remote()) == "plain"  # ordinary methods are unchanged


async def test_async_generator_on_async_actor(pa_module):
    actor = AsyncStreamer.remote()
    assert [await r async for r in actor.numbers.remote(5)] == [0, 1, 2, 3, 4]
    refs = [r async for r in actor.fails.remote()]
    assert await refs[0] == "first"
    with pytest.raises(KeyError):
        await refs[1]
    assert await actor.ping.remote() == "pong"


def test_nested_stream_inside_a_task(pa_module):
    assert pa.get(consume_stream.remote(4), timeout=GET_TIMEOUT_S) == [0, 1, 2, 3]


def test_backpressure_pauses_the_producer(pa_module, tmp_path):
    """With a threshold of 2, the producer gets no further than 2 items past the consumer."""
    log_dir = str(tmp_path)
    gen = endless.options(_generator_backpressure_num_objects=2).remote(log_dir)
    assert pa.get(next(gen), timeout=GET_TIMEOUT_S) == 0
    # consumed 1: it may produce items 1 and 2, then must wait
    assert wait_until(lambda: len(os.listdir(log_dir)) >= 3)
    produced_while_waiting = len(os.listdir(log_dir))
    assert produced_while_waiting == 3
    assert pa.get(next(gen)) == 1
    assert wait_until(lambda: len(os.listdir(log_dir)) >= 4)
    pa.cancel(gen)


def test_bad_backpressure_option_is_refused():
    with pytest.raises(ValueError, match="_generator_backpressure_num_objects"):
        produce.options(_generator_backpressure_num_objects=0)


def test_dropping_the_generator_stops_the_producer(pa_module, tmp_path):
    """Drop the generator: the producer stops; its worker serves other tasks."""
    log_dir = str(tmp_path)
    gen = endless.options(_generator_backpressure_num_objects=1).remote(log_dir)
    assert pa.get(next(gen), timeout=GET_TIMEOUT_S) == 0
    ref0 = gen.completed()
    del gen
    gc.collect()
    ready, _ = pa.wait([ref0], timeout=GET_TIMEOUT_S)
    assert ready == [ref0]
    written = len(os.listdir(log_dir))
    assert written <= 3
    assert pa.get(list(produce.remote(2)), timeout=GET_TIMEOUT_S) == [0, 1]


def test_cancel_interrupts_a_producer_mid_step(pa_module, tmp_path):
    """pa.cancel on the generator stops a task that is busy between two yields."""
    log_dir = str(tmp_path)
    gen = slow_endless.remote(log_dir)
    assert pa.get(next(gen), timeout=GET_TIMEOUT_S) == 0
    ref0 = gen.completed()
    pa.cancel(gen)
    with pytest.raises(StopIteration):
        next(gen)
    ready, _ = pa.wait([ref0], timeout=GET_TIMEOUT_S)
    assert ready == [ref0]
    assert not os.path.exists(os.path.join(log_dir, "late"))


def test_ordinary_call_returning_a_generator_is_an_error(pa_module):
    @pa.remote
    def returns_generator():
        return (i for i in range(3))

    with pytest.raises(TypeError, match="generator"):
        pa.get(returns_generator.remote(), timeout=GET_TIMEOUT_S)


@pa.remote
def crash_after(n):
    for i in range(n):
        yield i
    os._exit(1)


@pa.remote
def yield_refs(n):
    for i in range(n):
        yield [pa.put(np.full(100_000, i))]


def test_worker_crash_arrives_after_the_items(pa_module):
    """Items received before the worker died stay intact; the crash comes at the next
    position. (Backpressure 1 makes the producer crash only after both items arrived.)"""
    gen = crash_after.options(_generator_backpressure_num_objects=1).remote(2)
    refs = list(gen)
    assert len(refs) == 3
    assert pa.get(refs[:2]) == [0, 1]
    with pytest.raises(pa.WorkerCrashedError):
        pa.get(refs[2])


def test_yielded_values_may_hold_refs(pa_module):
    """Refs inside yielded values stay alive after the producer ends."""
    outer = [pa.get(ref) for ref in yield_refs.remote(3)]
    assert [int(pa.get(inner[0])[0]) for inner in outer] == [0, 1, 2]


def test_dropped_stream_frees_its_objects(pa_module):
    """Items of a dropped stream, received or still in flight, leave the store."""
    from pyactor._private import api
    store = api._runtime.store
    used_before = store.stats().used_bytes
    gen = produce_arrays.remote(5, 200_000)
    first = next(gen)
    assert pa.get(first).shape == (200_000,)
    ref0 = gen.completed()
    del gen, first
    gc.collect()
    pa.wait([ref0], timeout=GET_TIMEOUT_S)
    assert wait_until(lambda: store.stats().used_bytes <= used_before)


def test_generator_cannot_be_passed_to_a_task(pa_module):
    gen = produce.remote(1)
    with pytest.raises(TypeError, match="ObjectRefGenerator"):
        consume_stream.remote(gen)
    assert pa.get(list(gen)) == [0]


async def test_cancel_interrupts_an_async_actor_stream(pa_module, tmp_path):
    """Cancelling the stream of an async generator interrupts its await; its finally runs."""
    actor = AsyncStreamer.remote()
    gen = actor.slow.remote(str(tmp_path))
    assert await (await gen.__anext__()) == 0
    ref0 = gen.completed()
    pa.cancel(gen)
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()
    assert wait_until(lambda: (tmp_path / "closed").exists(), GET_TIMEOUT_S)
    assert not (tmp_path / "late").exists()
    assert await actor.ping.remote() == "pong"
    del ref0


def test_cancel_interrupts_a_sync_actor_stream(pa_module, tmp_path):
    """A sync actor method busy between two yields is interrupted; the actor keeps serving."""
    actor = Streamer.remote()
    gen = actor.slow.remote(str(tmp_path))
    assert pa.get(next(gen), timeout=GET_TIMEOUT_S) == 0
    ref0 = gen.completed()
    pa.cancel(gen)
    assert pa.wait([ref0], timeout=GET_TIMEOUT_S)[0] == [ref0]
    assert pa.get(actor.plain.remote(), timeout=GET_TIMEOUT_S) == "plain"
    assert not (tmp_path / "late").exists()


def test_finished_streams_are_forgotten(pa_module, tmp_path):
    """Consumed, dropped-after-the-end and dropped-midway streams leave nothing behind."""
    from pyactor._private import api
    from pyactor._private.streaming import streams_of
    table = streams_of(api._runtime)
    assert pa.get(list(produce.remote(2))) == [0, 1]
    ended = produce.remote(3)
    next(ended)
    pa.wait([ended.completed()], timeout=GET_TIMEOUT_S)
    del ended
    midway = endless.options(_generator_backpressure_num_objects=1).remote(str(tmp_path))
    next(midway)
    ref0 = midway.completed()
    del midway
    gc.collect()
    pa.wait([ref0], timeout=GET_TIMEOUT_S)
    assert wait_until(lambda: not table.consuming)
