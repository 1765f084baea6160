"""A worker process: runs tasks, or one actor, on its main thread.

The main thread runs an event loop with the worker's *task endpoint*: owners send PushTask and
ActorCall there, and a sync call runs right in the loop's callback, its TaskDone written on the
same connection. Nothing crosses a thread on that path: on a virtual machine each hand-off
between threads costs a wake-up of tens to hundreds of microseconds, more than a small task.

    owner --PushTask/ActorCall--> [main thread: task endpoint] run f(*args) --TaskDone--> owner

The runtime's IO thread (runtime.py) serves everything that must go on while user code runs:
nested `pa.get`/`.remote()` from inside a task, borrowers asking for objects this process owns,
CancelTask (which interrupts the main thread with a signal), StartActor from the node, and
RevokeTasks. That last one exists because a task blocked in `get` stops the main thread from
reading its socket: its owner then takes back the tasks it had pipelined behind it (they may be
what it waits for), and the worker gives up exactly those it has not started.

Async actors run their methods as coroutines on the main thread's loop, up to `max_concurrency`
at once; threaded actors (sync methods, max_concurrency > 1) run them in a thread pool.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import pickle
import signal
import threading
import traceback
import types
from concurrent.futures import ThreadPoolExecutor
import logging
from typing import Any

import cloudpickle
import uvloop

from pyactor._private import api
from pyactor._private import protocol as P
from pyactor._private import serialization, transport
from pyactor._private.ids import object_id_for
from pyactor._private.metrics import TaskStats
from pyactor._private.streaming import StreamSender
from pyactor._private.task_events import RUNNING, now as _now, record_ran, record_transfer
from pyactor._private.worker_spin import CallSpinner
from pyactor.exceptions import (ObjectLostError, ProtocolError, RuntimeEnvSetupError,
                                TaskCancelledError, TaskError)

logger = logging.getLogger("pyactor.worker")

# An ActorCall's wire list: [kind, the message's fields...] (_on_task_message reads it as is).
_ACTOR_CALL_KIND = P.KIND_OF[P.ActorCall]
_ACTOR_CALL_LENGTH = 1 + len(P.ActorCall._fields)
_PUSH_TASK_KIND = P.KIND_OF[P.PushTask]
_PUSH_TASK_LENGTH = 1 + len(P.PushTask._fields)
# A TaskDone is written as its wire list, [kind, task_id, returns, error, retryable] (what
# P.encode(P.TaskDone(...)) gives, without building the NamedTuple per answer).
_TASK_DONE_KIND = P.KIND_OF[P.TaskDone]

# Ids of recently started tasks, for RevokeTasks: an owner only revokes tasks it pipelined to us
# and has no answer for yet, a handful at most.
_STARTED_MEMORY = 1024


class Executor:
    def __init__(self, runtime, host: str):
        self.runtime = runtime
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.functions: dict[bytes, Any] = {}
        self.function_blobs: dict[bytes, bytes] = {}
        self.current_task: bytes | None = None
        self.current_owner: list | None = None
        self.cancel_target: bytes | None = None
        self.cancelled: set[bytes] = set()
        # Revocation: what started, and what the owner took back (main vs IO thread: locked).
        self._revoke_lock = threading.Lock()
        self._started: collections.OrderedDict = collections.OrderedDict()
        self._revoked: set[bytes] = set()
        self.actor = None  # the actor instance, once StartActor ran
        self.actor_id: bytes | None = None
        self.actor_is_async = False
        self.actor_semaphore: asyncio.Semaphore | None = None
        self.async_calls: dict[bytes, asyncio.Task] = {}  # an async actor's running calls
        self.read_store_args = False  # the call being started read an argument from a store
        self.actor_pool: ThreadPoolExecutor | None = None
        self.gpu_ids: list | None = None
        # What get_runtime_context() reports about the actor this worker became.
        self.assigned: dict = {}
        self.actor_name = ""
        self.placement = None
        self.actor_restarts = 0
        # Set when this worker's runtime_env could not be set up: its work fails with it.
        self.runtime_env_error: str | None = None
        self.task_stats = TaskStats()  # read by the node's metrics endpoint, on request
        # Its counters by kind (0 task, 1 actor call), bound once for the hot path.
        self.calls_finished, self.calls_failed = self.task_stats.finished, self.task_stats.failed
        runtime.executor = self
        self.main_thread_id = threading.get_ident()
        self._blocked_depth = 0
        self._borrows_at_start = 0
        runtime.handlers.update({
            P.StartActor: self._on_start_actor,
            P.CancelTask: self._on_cancel,
            P.RevokeTasks: self._on_revoke,
        })
        runtime.on_blocked = self._on_blocked
        runtime.on_submit = self._on_submit
        self.children: dict[bytes, list[bytes]] = {}  # task -> tasks it submitted (cancel)
        signal.signal(signal.SIGUSR1, self._interrupt)
        # After answering, poll the task endpoint for the next call before sleeping (see
        # worker_spin.py): the spinner watches every caller's connection and the listeners.
        self.spinner = CallSpinner()
        self.server = self.loop.run_until_complete(transport.serve(
            host, 0, runtime.token, self._on_task_message, on_reject=runtime.rejections.add,
            on_connect=lambda conn: self.spinner.watch(conn, conn.fileno()),
            on_close=lambda conn, _reason: self.spinner.unwatch(conn),
            after_batch=self.spinner.after_batch if self.spinner.usable else None,
            local_socket=True))
        self.spinner.watch_listeners(self.server.listener_filenos())
        self.task_address = [host, self.server.port]

    def run_forever(self) -> None:
        self.loop.run_forever()

    # ------------------------------------------------------------------ main thread: calls
    def _on_task_message(self, conn, raw) -> None:
        """A call from an owner. Its wire list is read as it came, without building the
        message's NamedTuple (this runs once per call), after the checks P.decode makes: a
        list of the kind's length; anything else goes through P.decode, which refuses it."""
        if type(raw) is list and raw:
            kind, length = raw[0], len(raw)
            if kind == _ACTOR_CALL_KIND and length == _ACTOR_CALL_LENGTH:
                if not self.actor_is_async and self.actor_pool is None:  # on this thread
                    _kind, task_id, _actor, method, args, kwargs, num_returns, owner, _seq = raw
                    self._invoke(conn, task_id, method, num_returns, owner, None, args, kwargs)
                    return
            elif kind == _PUSH_TASK_KIND and length == _PUSH_TASK_LENGTH:
                self._run_task(conn, *raw[1:])
                return
        message = P.decode(raw)
        if type(message) is not P.ActorCall:
            raise ProtocolError(f"a worker's task endpoint does not take "
                                f"{type(message).__name__}")
        if self.actor_is_async:
            call = self.loop.create_task(self._async_call(conn, message))
            self.async_calls[message.task_id] = call  # for CancelTask
            call.add_done_callback(lambda _t, i=message.task_id: self.async_calls.pop(i, None))
        else:
            self.actor_pool.submit(self._run_actor_call, conn, message)

    def _run_task(self, conn, task_id, function_id, function_blob, args, kwargs, num_returns,
                  owner, gpu_ids, name, namespace, job_id) -> None:
        """A PushTask, its fields in the message's order (test_worker_path checks that)."""
        if function_blob is not None:
            self.function_blobs[function_id] = function_blob
        with self._revoke_lock:
            if task_id in self._revoked:  # the owner took it back and runs it elsewhere
                self._revoked.discard(task_id)
                return
            self._started[task_id] = None
            if len(self._started) > _STARTED_MEMORY:
                self._started.popitem(last=False)
        if self.runtime_env_error is not None:
            self._reply_error(conn, task_id, RuntimeEnvSetupError(self.runtime_env_error), "",
                              name, retryable=False)
            return
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            self._reply_error(conn, task_id, TaskCancelledError(
                f"task {name} was cancelled"), "", name, retryable=False)
            return
        if gpu_ids != self.gpu_ids:
            self._set_gpus(gpu_ids)
        api._namespace = namespace  # workers serve every driver: use the submitter's
        api._job_id = job_id
        self.current_owner = owner
        self._invoke(conn, task_id, name, num_returns, owner, function_id, args, kwargs)
        self.current_owner = None

    def _run_actor_call(self, conn, message: P.ActorCall) -> None:
        """A threaded actor's call, on a thread of its pool."""
        self._invoke(conn, message.task_id, message.method, message.num_returns, message.owner,
                     None, message.args, message.kwargs, threading.get_ident())

    def _function(self, function_id: bytes):
        function = self.functions.get(function_id)
        if function is None:
            function = self.functions[function_id] = serialization.loads_function(
                self.function_blobs.pop(function_id))
        return function

    def _invoke(self, conn, task_id, name, num_returns, owner, function_id, args, kwargs,
                thread=0):
        """Run one call and answer it: the function `function_id` (a task), or with None the
        actor's method `name`. Looking the function up is part of the call: its failure (an
        unknown method) is the caller's error. `thread`: 0 on the main thread, else the id of
        the threaded actor's pool thread that runs it. Bookkeeping that does not have to come
        first (the task-event record, counters, the children list) comes after the answer."""
        in_main = thread == 0
        self._borrows_at_start = self.runtime.borrows_started
        if in_main:
            self.current_task = task_id
        actor_id = self.actor_id
        started = _now()
        RUNNING[task_id] = (name, actor_id, started)  # task_events.py: what runs now
        decoded = started
        try:
            if function_id is None:
                function = getattr(self.actor, name)
            else:
                function = self.functions.get(function_id)
                if function is None:
                    function = self._function(function_id)
            # (a comprehension is a function call: none for the common call without arguments)
            call_args = [self._decode_arg(a, task_id) for a in args] if args else ()
            call_kwargs = {k: self._decode_arg(v, task_id) for k, v in kwargs.items()} \
                if kwargs else {}
            if self.read_store_args:  # a clock read costs ~0.5 us here: only when it tells
                decoded = _now()      # something (inline arguments unpickle in no time)
                self.read_store_args = False
            result = function(*call_args, **call_kwargs)
            del call_args, call_kwargs  # the values may pin store objects: not beyond the call
            if type(result) is types.GeneratorType:  # a streaming call: items go one by one
                result = StreamSender(self, task_id, owner, name).run(result)
            if in_main:  # (before the answer: a cancel's signal must not hit its writing)
                self.current_task = None
        except BaseException as error:  # noqa: BLE001 - everything the task raised goes back
            if in_main:
                self.current_task = None
                self.children.pop(task_id, None)
            RUNNING.pop(task_id, None)
            record_ran((task_id, name, actor_id, started, decoded, _now(), True, thread))
            self.calls_failed[actor_id is not None] += 1
            if isinstance(error, (SystemExit, KeyboardInterrupt)) and not isinstance(
                    error, TaskCancelledError) and self.actor is None:
                raise
            self._reply_error(conn, task_id, error, traceback.format_exc(), name, in_main)
            return
        self._reply_result(conn, task_id, name, num_returns, owner, result, in_main)
        if in_main and self.children:  # (only calls that submitted tasks have children)
            self.children.pop(task_id, None)
        RUNNING.pop(task_id, None)
        record_ran((task_id, name, actor_id, started, decoded, _now(), False, thread))
        self.calls_finished[actor_id is not None] += 1

    def _decode_arg(self, arg: list, task_id: bytes = b"") -> Any:
        where = arg[0]
        if where == P.VALUE_INLINE:
            return serialization.deserialize(arg[1])
        store = self.runtime.store
        if store is None:
            raise ObjectLostError(f"argument {arg[1].hex()} is in a store this process lacks")
        self.read_store_args = True  # the timeline shows how long arguments took (_invoke)
        if arg[2] != self.runtime.node_id:  # held by another node: copy it here first
            started = _now()
            present = store.contains(arg[1])
            view = self.runtime.local_view(arg[1], arg[2])
            if not present:
                record_transfer((task_id, arg[1], started, _now(), len(view)))
            return serialization.deserialize(view)
        # read back from disk first if it was spilled
        return serialization.deserialize(self.runtime.local_view(arg[1], arg[2]))

    # ------------------------------------------------------------------ answers
    def _reply_result(self, conn, task_id, name, num_returns, owner, result,
                      in_main=True) -> None:
        if num_returns == 1:
            # The common answer, one small plain value (None, a number, a short string), is
            # encoded without the general serializer: byte for byte what it would write.
            inline = serialization.plain_to_bytes(result)
            if inline is not None and len(inline) < serialization.INLINE_THRESHOLD_BYTES:
                self._send_done(conn, [_TASK_DONE_KIND, task_id,
                                       [[P.VALUE_INLINE, inline, None, None]], None, False],
                                in_main)
                return
        try:
            values = [result] if num_returns == 1 else _split_returns(result, num_returns, name)
            returns = [self._encode_return(object_id_for(task_id, i), value, owner)
                       for i, value in enumerate(values)]
        except BaseException as error:  # noqa: BLE001 - an unpicklable result, a full store
            self._reply_error(conn, task_id, error, traceback.format_exc(), name, in_main,
                              retryable=False)
            return
        self._send_done(conn, [_TASK_DONE_KIND, task_id, returns, None, False], in_main)

    def _reply_error(self, conn, task_id, error, remote_traceback, name, in_main=True,
                     retryable=True) -> None:
        blob = pickle_error(error, remote_traceback, name)
        self._send_done(conn, [_TASK_DONE_KIND, task_id, [], blob, retryable], in_main)

    def _send_done(self, conn, done: list, in_main: bool) -> None:
        """Answer on the connection the call came on: `done` is a TaskDone's wire list, from
        the main thread (`in_main`) or a threaded actor's pool thread. Borrowers this call
        registered with other owners must be acknowledged first, or an owner could free an
        object we hold; that wait happens only when refs travelled (rare), on the IO thread."""
        runtime = self.runtime
        if runtime.borrows_started != self._borrows_at_start or runtime.pending_registrations:
            async def settled():
                await asyncio.sleep(0)  # registrations queued to the IO thread start first
                await asyncio.gather(*list(runtime.pending_registrations),
                                     return_exceptions=True)
            asyncio.run_coroutine_threadsafe(settled(), runtime.loop).result()
        try:
            if in_main:
                # Written now: the next call may run long, do not hold this answer behind it.
                conn.send_now(done)
            else:
                conn.send_threadsafe(done)
        except transport.ConnectionClosedError:
            # The caller went away while this ran: nobody is left to take the answer (its
            # owner's side already counted the call as lost when the connection closed).
            logger.debug("the caller of %s is gone; its answer is dropped", done[1].hex())

    def _encode_return(self, object_id: bytes, value: Any, owner: list) -> list:
        serialized = serialization.serialize(value)
        contained = None
        if serialized.contained_refs:
            contained = [[ref.id, ref.owner_address] for ref in serialized.contained_refs]
            # On the IO thread, and finished before we answer (see _send_done).
            asyncio.run_coroutine_threadsafe(
                self._lend_to_owner(serialized.contained_refs, owner), self.runtime.loop).result()
        store = self.runtime.store
        if serialized.total_bytes < serialization.INLINE_THRESHOLD_BYTES or store is None:
            return [P.VALUE_INLINE, serialized.to_bytes(), None, contained]
        view = self.runtime.create_object(object_id, serialized.total_bytes)
        try:
            serialized.write_to(view, store.copy_into)
        except BaseException:
            view.release()
            store.abort(object_id)
            raise
        view.release()
        store.seal(object_id)
        return [P.VALUE_IN_STORE, object_id, self.runtime.node_id, contained]

    async def _lend_to_owner(self, refs: list, owner: list) -> None:
        """IO thread: the caller will hold refs found in our return value; register it as their
        borrower before we answer (we may drop our own refs as soon as we do)."""
        runtime = self.runtime
        for ref in refs:
            entry = runtime.refs.get(ref.id)
            if entry is not None and entry.owned:
                runtime.add_borrower(entry, owner)
            elif ref.owner_address != owner:
                runtime.register_borrow(ref.id, ref.owner_address, owner)

    def _set_gpus(self, gpu_ids) -> None:
        self.gpu_ids = gpu_ids
        # Like Ray: empty (not unset) when the task has no GPU, or it would see them all.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)

    # ------------------------------------------------------------------ IO thread
    def _on_submit(self, spec) -> None:
        """User code submitted a task: remember it as a child of the one running here."""
        task_id = self.current_task
        if task_id is not None and threading.get_ident() == self.main_thread_id:
            self.children.setdefault(task_id, []).append(spec.task_id)

    def _on_cancel(self, conn, message: P.CancelTask) -> None:
        if self.runtime.owns_task(message.task_id):  # a task we submitted: as its owner
            self.runtime._cancel_on_loop(message.task_id, message.force, message.recursive)
            return
        if message.recursive:
            for child in self.children.pop(message.task_id, ()):
                self.runtime._cancel_on_loop(child, message.force, True)
        if message.force:  # after the children's cancels are written
            self.runtime.loop.call_later(0.05, os.kill, os.getpid(), signal.SIGKILL)
            return
        call = self.async_calls.get(message.task_id)
        if call is not None:  # an async actor's call: cancel its coroutine (its awaits of
            self.loop.call_soon_threadsafe(call.cancel)  # other refs cancel those in turn)
            return
        if self.current_task == message.task_id:
            self.cancel_target = message.task_id
            signal.pthread_kill(self.main_thread_id, signal.SIGUSR1)
        else:
            self.cancelled.add(message.task_id)

    def _interrupt(self, signum, frame) -> None:
        target = self.cancel_target
        if target is not None and target == self.current_task:
            self.cancel_target = None
            raise TaskCancelledError(f"task {target.hex()} was cancelled while running")

    def _on_revoke(self, conn, message: P.RevokeTasks) -> None:
        """The owner takes back tasks it pipelined to us: give up those not started."""
        given_up = []
        with self._revoke_lock:
            for task_id in message.task_ids:
                if task_id not in self._started:
                    self._revoked.add(task_id)
                    given_up.append(task_id)
        conn.send(P.encode(P.Reply(message.request_id, given_up, None)))

    def _on_blocked(self, blocked: bool) -> None:
        """The main thread waits in `get` (from user code): lend our CPU back to the node, and
        ask the owner to take back what it pipelined behind this task."""
        if threading.get_ident() != self.main_thread_id:
            return
        self._blocked_depth += 1 if blocked else -1
        runtime = self.runtime
        if blocked and self._blocked_depth == 1 and self.current_owner is not None \
                and self.current_task is not None:
            runtime.run_in_loop(runtime.send_to_peer, self.current_owner,
                                P.WorkerBlocking(runtime.worker_id, self.current_task,
                                                 runtime.address))
        if self._blocked_depth == (1 if blocked else 0):
            runtime.run_in_loop(runtime.node_conn.try_send,  # (no node: this worker ends)
                                P.encode(P.WorkerBlocked(runtime.worker_id, blocked)))

    # ------------------------------------------------------------------ actors
    def _on_start_actor(self, conn, message: P.StartActor) -> None:
        """IO thread: the actor's __init__ runs on the main thread, where its calls will."""
        self.loop.call_soon_threadsafe(self._start_actor, conn, message)

    def _start_actor(self, conn, message: P.StartActor) -> None:
        spec = pickle.loads(message.spec)
        self._set_gpus(message.gpu_ids)
        self.actor_id = message.actor_id
        # get_actor()/named actors inside use its namespace
        api._namespace = spec.get("namespace", api._namespace)
        api._job_id = spec.get("job_id", api._job_id)
        self.assigned = spec.get("resources", {})
        self.actor_name = spec.get("name", "")
        self.placement = spec.get("options", {}).get("placement_group")
        self.actor_restarts = message.restart_count
        if self.runtime_env_error is not None:
            self.runtime.run_in_loop(conn.try_send, P.encode(P.ActorReady(
                message.actor_id, f"RuntimeEnvSetupError: {self.runtime_env_error}")))
            return
        try:
            cls = serialization.loads_function(spec["class_blob"])
            args = [self._decode_arg(a) for a in spec["args"]]
            kwargs = {k: self._decode_arg(v) for k, v in spec["kwargs"].items()}
            self.actor = cls(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001
            text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
            self.runtime.run_in_loop(conn.try_send,  # (no node: this worker ends)
                                     P.encode(P.ActorReady(message.actor_id, text)))
            return
        self.runtime.worker_label = f"{cls.__name__} pid={os.getpid()}"
        max_concurrency = spec.get("max_concurrency")
        if any(inspect.iscoroutinefunction(getattr(cls, name, None)) or
               inspect.isasyncgenfunction(getattr(cls, name, None))
               for name in dir(cls) if not name.startswith("__")):
            self.actor_is_async = True
            self.actor_semaphore = asyncio.Semaphore(max_concurrency or 1000)
            self.spinner.stop_for_good()  # its coroutines need the loop: never hold it
        elif max_concurrency and max_concurrency > 1:
            self.actor_pool = ThreadPoolExecutor(max_concurrency,
                                                 thread_name_prefix="pyactor-actor")
            self.spinner.stop_for_good()  # its answers come through the loop: never hold it
        self.runtime.run_in_loop(conn.try_send, P.encode(P.ActorReady(message.actor_id, None)))

    async def _async_call(self, conn, message: P.ActorCall) -> None:
        async with self.actor_semaphore:
            task_id, actor_id = message.task_id, self.actor_id
            started = decoded = _now()
            RUNNING[task_id] = (message.method, actor_id, started)
            try:
                method = getattr(self.actor, message.method)
                args = [self._decode_arg(a, task_id) for a in message.args]
                kwargs = {k: self._decode_arg(v, task_id) for k, v in message.kwargs.items()}
                if self.read_store_args:
                    decoded = _now()
                    self.read_store_args = False
                result = method(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                elif type(result) is types.AsyncGeneratorType:
                    result = await StreamSender(self, message.task_id, message.owner,
                                                message.method).run_async(result)
                elif type(result) is types.GeneratorType:
                    result = StreamSender(self, message.task_id, message.owner,
                                          message.method).run(result)
            except BaseException as error:  # noqa: BLE001
                if isinstance(error, asyncio.CancelledError):
                    error = TaskCancelledError(f"actor call {message.method} was cancelled")
                RUNNING.pop(task_id, None)
                record_ran((task_id, message.method, actor_id, started, decoded, _now(), True,
                            0))
                self.calls_failed[1] += 1
                self._reply_error(conn, message.task_id, error, traceback.format_exc(),
                                  message.method)
                return
        self._reply_result(conn, message.task_id, message.method, message.num_returns,
                           message.owner, result)
        RUNNING.pop(task_id, None)
        record_ran((task_id, message.method, actor_id, started, decoded, _now(), False, 0))
        self.calls_finished[1] += 1


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
