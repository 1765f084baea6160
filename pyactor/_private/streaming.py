"""Streaming generators: a task or actor method that yields returns an ObjectRefGenerator.

Each yielded value becomes its own object, owned by the caller, and its ref is handed to the
consumer as soon as the value arrives, not when the task ends. The task's ordinary return
(index 0) carries the number of items, or the task's failure.

    owner (caller)                                  worker (producer)
    f.remote() -> ObjectRefGenerator(ref0)   ...PushTask/ActorCall...   f() returns a generator
          |<--------------- GeneratorStart (request) ------------------ |
          |--- Reply [threshold, stop, known] ---------------------------> |
          |<--------------- GeneratorItem(i, value or error) ----------- | one per yield
    next(gen) -> ref i;  GeneratorAck(consumed) ------------------------> | (with a threshold:
          |                                                              |  waits while
          |<--------------- TaskDone(ref0 = item count) --------------- |  produced - consumed
                                                                            >= threshold)

Items travel worker runtime to owner runtime (IO thread to IO thread), TaskDone on the call's
connection: TaskDone may come first, so the consumer waits for `count` items, not for the
TaskDone alone (the producer lets its IO thread send the items before it answers, which keeps
that window small).
An exception raised by the generator arrives as a failed item at its position and ends the
stream. Dropping the generator (or pa.cancel on it) sends stop: the producer closes the
generator at its next step; the call is also cancelled, which interrupts it mid-step.

Backpressure follows Ray's `_generator_backpressure_num_objects`: off by default (-1/None).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pyactor._private import protocol as P
from pyactor._private.ids import object_id_for
from pyactor._private.object_ref import ObjectRef
from pyactor._private.references import FAILED, READY

# ---------------------------------------------------------------------- owner side


class _Stream:
    """What the owner knows of one running generator (IO thread writes, consumers read)."""

    __slots__ = ("task_id", "threshold", "cond", "items", "count", "failed", "worker",
                 "dropped", "waiters")

    def __init__(self, task_id: bytes, threshold: int):
        self.task_id = task_id
        self.threshold = threshold
        self.cond = threading.Condition()
        self.items: dict[int, ObjectRef] = {}  # arrived, not yet taken
        self.count: int | None = None  # number of items, once the task has ended well
        self.failed = False  # the task itself failed (crash, cancel): ref0 holds why
        self.worker: list | None = None  # the producer's runtime address
        self.dropped = False
        self.waiters: list = []  # (loop, future) of async consumers

    def wake(self) -> None:
        """Under cond: wake every consumer (sync and async)."""
        self.cond.notify_all()
        waiters, self.waiters = self.waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_set_if_pending, future)
            except RuntimeError:  # that loop is closed
                pass


def _set_if_pending(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class StreamTable:
    """Per runtime: the streams it consumes (as owner) and produces (as worker)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.consuming: dict[bytes, _Stream] = {}
        self.producing: dict[bytes, Producer] = {}
        runtime.handlers[P.GeneratorStart] = self._on_start
        runtime.handlers[P.GeneratorItem] = self._on_item
        runtime.handlers[P.GeneratorAck] = self._on_ack

    # --- owner (IO thread) ---
    def _on_start(self, conn, message: P.GeneratorStart) -> None:
        """Answered with [threshold, stop, known]: unknown means the caller made an ordinary
        call to a function that returned a generator (not picklable: an error there)."""
        stream = self.consuming.get(message.task_id)
        if stream is None:
            conn.send(P.encode(P.Reply(message.request_id, [0, True, False], None)))
            return
        with stream.cond:
            stream.worker = list(message.worker_address)
            stop = stream.dropped
        conn.send(P.encode(P.Reply(message.request_id, [stream.threshold, stop, True], None)))

    def _on_item(self, conn, message: P.GeneratorItem) -> None:
        runtime = self.runtime
        object_id = object_id_for(message.task_id, message.index + 1)
        entry = runtime.refs.add_owned(object_id, message.task_id, local_refs=1)
        ref = ObjectRef(object_id, runtime.address, _counted=True)
        if message.error is not None:
            runtime.refs.resolve(entry, FAILED, message.error, None)
        else:
            value = message.value
            if value[0] == P.VALUE_INLINE:
                runtime.refs.resolve(entry, READY, value[1], None)
            else:
                runtime.refs.resolve(entry, READY, None, value[2])
            if len(value) > 3 and value[3]:
                entry.contained = runtime.adopt_refs(value[3])
        stream = self.consuming.get(message.task_id)
        if stream is None:
            return  # dropping `ref` frees the object
        with stream.cond:
            if not stream.dropped:
                stream.items[message.index] = ref
            stream.wake()

    def _on_task_end(self, stream: _Stream, entry) -> None:
        """ref0 resolved: the item count, or the task's failure."""
        count, failed = None, entry.state == FAILED
        if not failed:
            try:
                count = self.runtime.value_of(entry)
            except BaseException:  # noqa: BLE001 - an unreadable count: treat as a failure
                failed = True
        with stream.cond:
            stream.count, stream.failed = count, failed
            stream.wake()
            dropped = stream.dropped
        if dropped:  # else the consumer (or its cancel) forgets the stream
            self.consuming.pop(stream.task_id, None)

    def send_ack(self, stream: _Stream, consumed: int, stop: bool) -> None:
        if stream.worker is not None:
            self.runtime.send_to_peer(stream.worker,
                                      P.GeneratorAck(stream.task_id, consumed, stop))

    # --- producer (IO thread) ---
    def _on_ack(self, conn, message: P.GeneratorAck) -> None:
        producer = self.producing.get(message.task_id)
        if producer is not None:
            producer.acknowledge(message.consumed, message.stop)


def streams_of(runtime) -> StreamTable:
    table = getattr(runtime, "streams", None)
    if table is None:
        with _install_lock:
            table = getattr(runtime, "streams", None)
            if table is None:
                table = runtime.streams = StreamTable(runtime)
    return table


_install_lock = threading.Lock()


def submit_streaming(runtime, spec, threshold: int, submit) -> ObjectRefGenerator:
    """Register the stream, then submit the call (`submit(spec)` -> its refs): the producer's
    GeneratorStart may come back before submit returns."""
    table = streams_of(runtime)
    spec.streaming = True  # (never sent at submit: direct.py)
    stream = table.consuming[spec.task_id] = _Stream(spec.task_id, threshold)
    try:
        ref0 = submit(spec)[0]
    except BaseException:
        table.consuming.pop(spec.task_id, None)
        raise
    return ObjectRefGenerator(runtime, stream, ref0)


def check_backpressure(value) -> int:
    """The option's value as a threshold (0: off); None and -1 mean off, as in Ray."""
    if value is None or value == -1:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"_generator_backpressure_num_objects must be a positive int, or -1 "
                         f"or None for no backpressure; got {value!r}")
    return value


class ObjectRefGenerator:
    """The refs a generator task yields, in order: `for ref in gen`, `async for ref in gen`,
    `next(gen)`. Each ref is ready once the value is yielded; an error raised by the generator
    comes as a ref whose `get` raises it, at the position where it was raised."""

    def __init__(self, runtime, stream: _Stream, ref0: ObjectRef):
        self._runtime = runtime
        self._ref = ref0
        self._next = 0
        self._finished = False
        table = self._table = streams_of(runtime)
        self._stream = stream
        entry = runtime._entries_of([ref0])[0]

        def ended(entry, table=table, stream=stream):
            table._on_task_end(stream, entry)
        if not runtime.refs.when_resolved(entry, ended):
            runtime.run_in_loop(ended, entry)

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        stream = self._stream
        with stream.cond:
            while True:
                ref = self._take()
                if ref is not None:
                    return ref
                stream.cond.wait()

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        stream = self._stream
        loop = asyncio.get_running_loop()
        while True:
            with stream.cond:
                try:
                    ref = self._take()
                except StopIteration:
                    raise StopAsyncIteration from None
                if ref is not None:
                    return ref
                future = loop.create_future()
                stream.waiters.append((loop, future))
            await future

    def _take(self) -> ObjectRef | None:
        """Under cond: the next ref, None to wait, or StopIteration at the end."""
        stream = self._stream
        if self._finished:
            raise StopIteration
        index = self._next
        ref = stream.items.pop(index, None)
        if ref is not None:
            self._next = index + 1
            if stream.threshold:
                self._runtime.run_in_loop(self._table.send_ack, stream, self._next, False)
            return ref
        if stream.failed:  # the task failed past its last item: its error comes next
            self._finish()
            return self._ref
        if stream.count is not None and index >= stream.count:
            self._finish()
            raise StopIteration
        return None

    def _finish(self) -> None:
        self._finished = True
        self._table.consuming.pop(self._stream.task_id, None)

    def completed(self) -> ObjectRef:
        """The ref of the task itself: ready when the generator has ended."""
        return self._ref

    def cancel(self) -> None:
        """Stop the producer: its generator is closed at its next step (and the call is
        cancelled, interrupting it mid-step). Refs already received stay valid."""
        stream = self._stream
        with stream.cond:
            if self._finished or stream.dropped:
                return
            stream.dropped = True
            stream.items.clear()
            stream.wake()
            ended = stream.count is not None or stream.failed
        self._finished = True
        if ended:  # else _on_task_end forgets the stream when the task ends
            self._table.consuming.pop(stream.task_id, None)
        runtime = self._runtime
        runtime.run_in_loop(self._table.send_ack, stream, self._next, True)
        runtime.cancel(self._ref, False, True)  # interrupts a producer busy between yields

    def __del__(self):
        try:
            if not self._finished and self._runtime is not None and not self._runtime.closed:
                self.cancel()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._ref.id[:16].hex()})"

    def __reduce__(self):
        raise TypeError("an ObjectRefGenerator cannot be passed to another process (its "
                        "caller consumes the stream); pass the refs it yields instead")


# ---------------------------------------------------------------------- producer side


class Producer:
    """The worker's side of one stream: how far the consumer got, and whether it stopped."""

    def __init__(self, threshold: int, stop: bool):
        self.threshold = threshold
        self.consumed = 0
        self.stopped = stop
        self.cond = threading.Condition()
        self.async_wakeup: tuple | None = None  # (loop, event) for async producers

    def acknowledge(self, consumed: int, stop: bool) -> None:
        with self.cond:
            self.consumed = max(self.consumed, consumed)
            self.stopped = self.stopped or stop
            self.cond.notify_all()
            wakeup = self.async_wakeup
        if wakeup is not None:
            loop, event = wakeup
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass

    def must_wait(self, produced: int) -> bool:
        return not self.stopped and self.threshold > 0 and \
            produced - self.consumed >= self.threshold

    def wait_for_room(self, produced: int) -> None:
        with self.cond:
            while self.must_wait(produced):
                self.cond.wait(0.5)  # a timeout: the cancel signal must find us in Python

    async def wait_for_room_async(self, produced: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self.cond:
                if not self.must_wait(produced):
                    return
                event = asyncio.Event()
                self.async_wakeup = (loop, event)
            await event.wait()


class StreamSender:
    """Runs in the worker: sends each item of a generator to its owner, with backpressure."""

    def __init__(self, executor, task_id: bytes, owner: list, name: str):
        self.executor = executor
        self.runtime = executor.runtime
        self.task_id = task_id
        self.owner = owner
        self.name = name
        self.table = streams_of(self.runtime)

    def _open(self) -> Producer:
        runtime = self.runtime

        async def start():
            conn = await runtime.peer(self.owner)
            return await runtime._request(conn, P.GeneratorStart, self.task_id,
                                          runtime.address)
        producer = Producer(0, False)
        self.table.producing[self.task_id] = producer  # before the owner can ack
        threshold, stop, known = runtime.call(start())
        if not known:
            self.table.producing.pop(self.task_id, None)
            raise TypeError(f"{self.name} returned a generator to a caller that did not expect "
                            f"a stream (a generator cannot be pickled)")
        producer.threshold = threshold
        producer.stopped = producer.stopped or stop
        return producer

    def _send(self, index: int, value: Any = None, error: BaseException | None = None,
              remote_traceback: str = "") -> None:
        if error is not None:
            from pyactor._private.worker import pickle_error
            message = P.GeneratorItem(self.task_id, index, None,
                                      pickle_error(error, remote_traceback, self.name))
        else:
            encoded = self.executor._encode_return(object_id_for(self.task_id, index + 1),
                                                   value, self.owner)
            message = P.GeneratorItem(self.task_id, index, encoded, None)
        self.runtime.run_in_loop(self.runtime.send_to_peer, self.owner, message)

    def _flush(self) -> None:
        """Wait until the IO thread has handed every item sent so far to the connection (its
        inbox runs in order), so that TaskDone rarely overtakes them."""
        async def nothing():
            return None
        self.runtime.call(nothing())

    def _end_with(self, error: BaseException, producer: Producer, produced: int) -> int:
        """The generator raised: the error takes the next position, unless the consumer
        already stopped (a cancel interrupting it); the item count."""
        if producer.stopped:
            return produced
        import traceback
        self._send(produced, error=error, remote_traceback=traceback.format_exc())
        return produced + 1

    def run(self, generator) -> int:
        """Drive a sync generator to its end (or the consumer's stop); the item count."""
        producer = self._open()
        produced = 0
        try:
            while not producer.stopped:
                try:
                    value = next(generator)
                except StopIteration:
                    break
                except BaseException as error:  # noqa: BLE001 - the error goes in the stream
                    return self._end_with(error, producer, produced)
                self._send(produced, value)
                produced += 1
                producer.wait_for_room(produced)
        finally:
            self.table.producing.pop(self.task_id, None)
            generator.close()
            self._flush()
        return produced

    async def run_async(self, generator) -> int:
        """Drive an async generator (on an async actor's loop)."""
        loop = asyncio.get_running_loop()
        producer = await loop.run_in_executor(None, self._open)
        produced = 0
        try:
            while not producer.stopped:
                try:
                    value = await generator.__anext__()
                except StopAsyncIteration:
                    break
                except BaseException as error:  # noqa: BLE001 - the error goes in the stream
                    return self._end_with(error, producer, produced)
                self._send(produced, value)
                produced += 1
                await producer.wait_for_room_async(produced)
        finally:
            self.table.producing.pop(self.task_id, None)
            await generator.aclose()
            await asyncio.get_running_loop().run_in_executor(None, self._flush)
        return produced

