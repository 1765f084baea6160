"""A worker process: runs tasks, or one actor, on its main thread.

The worker's Runtime (IO thread) receives PushTask / ActorCall / StartActor messages and queues
them; the main thread takes them in order, runs the user's code and hands TaskDone back to the IO
thread. Keeping user code off the IO thread means a task that calls `pa.get` or runs for minutes
never stops the process from answering: borrowers still reach the objects it owns, cancellation
still arrives.

    owner --PushTask--> [IO thread] --queue--> [main thread] run f(*args)
    owner <--TaskDone-- [IO thread] <--run_in_loop-- serialize returns (large ones into the store)

Async actors run their methods as coroutines on an event loop in the main thread, up to
`max_concurrency` at once; threaded actors (sync methods, max_concurrency > 1) use a thread pool.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from pyactor._private import api
from pyactor._private import protocol as P
from pyactor._private import serialization
from pyactor._private.ids import object_id_for
from pyactor.exceptions import ObjectLostError, TaskCancelledError, TaskError

_STOP = object()


class Executor:
    def __init__(self, runtime):
        self.runtime = runtime
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.functions: dict[bytes, Any] = {}
        self.function_blobs: dict[bytes, bytes] = {}
        self.current_task: bytes | None = None
        self.cancel_target: bytes | None = None
        self.cancelled: set[bytes] = set()
        self.actor = None  # the actor instance, once StartActor ran
        self.actor_id: bytes | None = None
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.actor_semaphore: asyncio.Semaphore | None = None
        self.actor_pool: ThreadPoolExecutor | None = None
        self.gpu_ids: list | None = None
        self.main_thread_id = threading.get_ident()
        self._blocked_depth = 0
        runtime.handlers.update({
            P.PushTask: self._on_push_task,
            P.ActorCall: self._on_actor_call,
            P.StartActor: self._on_start_actor,
            P.CancelTask: self._on_cancel,
            P.KillWorker: self._on_kill,
        })
        runtime.on_blocked = self._on_blocked
        signal.signal(signal.SIGUSR1, self._interrupt)

    # ------------------------------------------------------------------ IO thread side
    def _on_push_task(self, conn, message: P.PushTask) -> None:
        if message.function_blob is not None:
            self.function_blobs[message.function_id] = message.function_blob
        self.work.put((self._run_task, conn, message))

    def _on_actor_call(self, conn, message: P.ActorCall) -> None:
        if self.actor_loop is not None:  # async actor: start it now, in arrival order
            self.actor_loop.call_soon_threadsafe(self._start_async_call, conn, message)
        elif self.actor_pool is not None:
            self.actor_pool.submit(self._run_actor_call, conn, message)
        else:
            self.work.put((self._run_actor_call, conn, message))

    def _on_start_actor(self, conn, message: P.StartActor) -> None:
        self.work.put((self._start_actor, conn, message))

    def _on_cancel(self, conn, message: P.CancelTask) -> None:
        if message.force:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.current_task == message.task_id:
            self.cancel_target = message.task_id
            signal.pthread_kill(self.main_thread_id, signal.SIGUSR1)
        else:
            self.cancelled.add(message.task_id)

    def _on_kill(self, conn, message: P.KillWorker) -> None:
        os._exit(0)

    def _interrupt(self, signum, frame) -> None:
        target = self.cancel_target
        if target is not None and target == self.current_task:
            self.cancel_target = None
            raise TaskCancelledError(f"task {target.hex()} was cancelled while running")

    def _send_done(self, conn, done: P.TaskDone) -> None:
        """IO thread: wait until borrowers registered by this task are acknowledged by their
        owners (else an owner could free an object we still hold), then answer."""
        waits = self.runtime.pending_registrations
        if waits:
            async def later():
                await asyncio.gather(*list(waits), return_exceptions=True)
                conn.send(P.encode(done))
            self.runtime.loop.create_task(later())
        else:
            conn.send(P.encode(done))

    # ------------------------------------------------------------------ main thread
    def run_forever(self) -> None:
        work = self.work
        while True:
            item = work.get()
            if item is _STOP:
                return
            function, conn, message = item
            function(conn, message)

    def _on_blocked(self, blocked: bool) -> None:
        """The main thread waits in `get`: lend our CPU back, and hand queued tasks back to
        their owners so they run elsewhere (they might be what we are waiting for)."""
        if threading.get_ident() != self.main_thread_id:
            return
        self._blocked_depth += 1 if blocked else -1
        if blocked and self._blocked_depth == 1:
            rejected: dict[Any, list] = {}
            keep = []
            while True:
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP and item[0] == self._run_task:
                    rejected.setdefault(item[1], []).append(item[2].task_id)
                else:
                    keep.append(item)
            for item in keep:
                self.work.put(item)
            for conn, task_ids in rejected.items():
                self.runtime.run_in_loop(conn.send, P.encode(P.TaskRejected(task_ids)))
        if self._blocked_depth == (1 if blocked else 0):
            self.runtime.run_in_loop(self.runtime.node_conn.send,
                                     P.encode(P.WorkerBlocked(self.runtime.worker_id, blocked)))

    def _function(self, function_id: bytes):
        function = self.functions.get(function_id)
        if function is None:
            function = self.functions[function_id] = serialization.loads_function(
                self.function_blobs.pop(function_id))
        return function

    def _run_task(self, conn, message: P.PushTask) -> None:
        if message.task_id in self.cancelled:
            self.cancelled.discard(message.task_id)
            self._reply_error(conn, message.task_id, TaskCancelledError(
                f"task {message.name} was cancelled"), "", message.name, retryable=False)
            return
        if message.gpu_ids != self.gpu_ids:
            self._set_gpus(message.gpu_ids)
        api._namespace = message.namespace  # workers serve every driver: use the submitter's
        self._invoke(conn, message.task_id, message.name, message.num_returns, message.owner,
                     lambda: self._function(message.function_id), message.args, message.kwargs)

    def _run_actor_call(self, conn, message: P.ActorCall) -> None:
        self._invoke(conn, message.task_id, message.method, message.num_returns, message.owner,
                     lambda: getattr(self.actor, message.method), message.args, message.kwargs)

    def _invoke(self, conn, task_id, name, num_returns, owner, get_function, args, kwargs):
        in_main = threading.get_ident() == self.main_thread_id
        if in_main:
            self.current_task = task_id
        try:
            function = get_function()
            result = function(*[self._decode_arg(a) for a in args],
                              **{k: self._decode_arg(v) for k, v in kwargs.items()})
            if in_main:
                self.current_task = None
        except BaseException as error:  # noqa: BLE001 - everything the task raised goes back
            if in_main:
                self.current_task = None
            if isinstance(error, (SystemExit, KeyboardInterrupt)) and not isinstance(
                    error, TaskCancelledError) and self.actor is None:
                raise
            self._reply_error(conn, task_id, error, traceback.format_exc(), name)
            return
        self._reply_result(conn, task_id, name, num_returns, owner, result)

    def _decode_arg(self, arg: list) -> Any:
        where = arg[0]
        if where == P.VALUE_INLINE:
            return serialization.deserialize(arg[1])
        store = self.runtime.store
        if arg[2] != self.runtime.node_id:  # held by another node: copy it here first
            self.runtime.fetch_to_local(arg[1], arg[2])
        view = store.get(arg[1]) if store is not None else None
        if view is None:
            raise ObjectLostError(f"argument {arg[1].hex()} is not in this node's store")
        return serialization.deserialize(view)

    def _reply_result(self, conn, task_id, name, num_returns, owner, result) -> None:
        try:
            values = [result] if num_returns == 1 else _split_returns(result, num_returns, name)
            returns = [self._encode_return(object_id_for(task_id, i), value, owner)
                       for i, value in enumerate(values)]
        except BaseException as error:  # noqa: BLE001 - an unpicklable result, a full store
            self._reply_error(conn, task_id, error, traceback.format_exc(), name,
                              retryable=False)
            return
        self.runtime.run_in_loop(self._send_done, conn, P.TaskDone(task_id, returns, None, False))

    def _encode_return(self, object_id: bytes, value: Any, owner: list) -> list:
        serialized = serialization.serialize(value)
        contained = None
        if serialized.contained_refs:
            contained = [[ref.id, ref.owner_address] for ref in serialized.contained_refs]
            self.runtime.run_in_loop(self._lend_to_owner, serialized.contained_refs, owner)
        store = self.runtime.store
        if serialized.total_bytes < serialization.INLINE_THRESHOLD_BYTES or store is None:
            return [P.VALUE_INLINE, serialized.to_bytes(), None, contained]
        view = store.create_object(object_id, serialized.total_bytes, evictable=False)
        try:
            serialized.write_to(view, store.copy_into)
        except BaseException:
            view.release()
            store.abort(object_id)
            raise
        view.release()
        store.seal(object_id)
        return [P.VALUE_IN_STORE, object_id, self.runtime.node_id, contained]

    def _lend_to_owner(self, refs: list, owner: list) -> None:
        """IO thread: the caller will hold refs found in our return value; register it as their
        borrower before we answer (we may drop our own refs as soon as we do)."""
        runtime = self.runtime
        for ref in refs:
            entry = runtime.refs.get(ref.id)
            if entry is not None and entry.owned:
                runtime.add_borrower(entry, owner)
            elif ref.owner_address != owner:
                future = runtime.loop.create_future()
                runtime.pending_registrations.add(future)
                future.add_done_callback(runtime.pending_registrations.discard)

                async def register(ref=ref, future=future):
                    try:
                        conn = await runtime.peer(ref.owner_address)
                        await runtime._request(conn, P.AddBorrower, ref.id, owner)
                    except Exception:
                        pass
                    finally:
                        future.set_result(None)
                runtime.loop.create_task(register())

    def _reply_error(self, conn, task_id, error, remote_traceback, name, retryable=True) -> None:
        blob = pickle_error(error, remote_traceback, name)
        self.runtime.run_in_loop(self._send_done, conn,
                                 P.TaskDone(task_id, [], blob, retryable))

    def _set_gpus(self, gpu_ids) -> None:
        self.gpu_ids = gpu_ids
        # Like Ray: empty (not unset) when the task has no GPU, or it would see them all.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)

    # ------------------------------------------------------------------ actors
    def _start_actor(self, conn, message: P.StartActor) -> None:
        spec = pickle.loads(message.spec)
        self._set_gpus(message.gpu_ids)
        self.actor_id = message.actor_id
        # get_actor()/named actors inside use its namespace
        api._namespace = spec.get("namespace", api._namespace)
        try:
            cls = serialization.loads_function(spec["class_blob"])
            args = [self._decode_arg(a) for a in spec["args"]]
            kwargs = {k: self._decode_arg(v) for k, v in spec["kwargs"].items()}
            self.actor = cls(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001
            text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
            self.runtime.run_in_loop(conn.send, P.encode(P.ActorReady(message.actor_id, text)))
            return
        self.runtime.worker_label = f"{cls.__name__} pid={os.getpid()}"
        max_concurrency = spec.get("max_concurrency")
        is_async = any(inspect.iscoroutinefunction(getattr(cls, name, None))
                       for name in dir(cls) if not name.startswith("__"))
        if is_async:
            self.actor_loop = asyncio.new_event_loop()
            self.actor_semaphore = None
            limit = max_concurrency or 1000
            ready = threading.Event()

            def make_semaphore():
                self.actor_semaphore = asyncio.Semaphore(limit)
                ready.set()
            self.actor_loop.call_soon(make_semaphore)
            self.work.put((self._run_actor_loop, None, None))
        elif max_concurrency and max_concurrency > 1:
            self.actor_pool = ThreadPoolExecutor(max_concurrency,
                                                 thread_name_prefix="pyactor-actor")
        self.runtime.run_in_loop(conn.send, P.encode(P.ActorReady(message.actor_id, None)))

    def _run_actor_loop(self, _conn, _message) -> None:
        asyncio.set_event_loop(self.actor_loop)
        self.actor_loop.run_forever()

    def _start_async_call(self, conn, message: P.ActorCall) -> None:
        self.actor_loop.create_task(self._async_call(conn, message))

    async def _async_call(self, conn, message: P.ActorCall) -> None:
        async with self.actor_semaphore:
            try:
                method = getattr(self.actor, message.method)
                args = [self._decode_arg(a) for a in message.args]
                kwargs = {k: self._decode_arg(v) for k, v in message.kwargs.items()}
                result = method(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except BaseException as error:  # noqa: BLE001
                self._reply_error(conn, message.task_id, error, traceback.format_exc(),
                                  message.method)
                return
        self._reply_result(conn, message.task_id, message.method, message.num_returns,
                           message.owner, result)


def _split_returns(result: Any, num_returns: int, name: str) -> list:
    try:
        values = list(result)
    except TypeError:
        raise ValueError(f"{name} has num_returns={num_returns} but returned a "
                         f"{type(result).__name__}, not a sequence") from None
    if len(values) != num_returns:
        raise ValueError(f"{name} has num_returns={num_returns} but returned "
                         f"{len(values)} values")
    return values


def pickle_error(error: BaseException, remote_traceback: str, name: str) -> bytes:
    """A TaskError for `error`, pickled; falls back to text when the error cannot be pickled."""
    if isinstance(error, TaskError):  # a nested task's error: pass it on unchanged
        try:
            return pickle.dumps(error)
        except Exception:
            pass
    if isinstance(error, (TaskCancelledError, ObjectLostError)) or \
            type(error).__module__ == "pyactor.exceptions":
        try:
            return pickle.dumps(error)
        except Exception:
            pass
    wrapped = TaskError.for_exception(error, remote_traceback, name)
    try:
        return cloudpickle.dumps(wrapped)
    except Exception:
        return pickle.dumps(TaskError.for_exception(None, remote_traceback, name))


def main() -> None:
    """Entry point of a worker process (started by the node's worker pool)."""
    from pyactor._private import worker_pool
    worker_pool.run_worker_from_environment(Executor)


if __name__ == "__main__":
    main()
