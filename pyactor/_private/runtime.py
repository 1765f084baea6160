"""The per-process runtime: one IO thread, the owner of this process's refs, the task path.

Every pyactor process (a driver, a worker) has exactly one Runtime. Its IO thread runs a uvloop
event loop that holds every connection; user threads hand it work through `run_in_loop`, which
batches wake-ups so a burst of submissions costs one syscall. The Runtime owns the references
(who holds which object, and the values), put/get/wait, and resolving a call's returns; the
calls themselves belong to three helpers: task_submitter.py (queues, leases, retries, lineage),
actor_submitter.py (ordered calls to actors) and direct.py (the synchronous fast path).

The path of a task (numbers are messages; no hop through the node per task):

    driver thread             driver IO thread             node             worker IO / main
    f.remote(x) --encode args--> queue by resources
                                  |--1 RequestLease------------> grant a worker
                                  |<-2 Reply(lease)-------------|
                                  |--3 PushTask (pipelined, batched) ------------> queue -> run
                                  |<-4 TaskDone (small result inline, large in store) ---|
    pa.get(ref) <--wake---------- resolve entry
                                  ... the lease is reused while tasks of the same shape queue,
                                  and handed back to the node after LEASE_LINGER_S idle.

An actor call skips steps 1-2: the caller sends ActorCall straight to the actor's process over
one connection, so calls from one caller arrive, and run, in the order they were sent.

A thread that waits for the call it just made (`pa.get(f.remote())`) skips both thread hand-offs:
it sends steps 3-4 itself on a connection of its own (direct.py), from `.remote()` once its
calls are waited for as they are made, so such a loop never wakes the IO thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import threading
import time
from collections import deque
from typing import Any, Callable

import uvloop

from pyactor._private import object_ref as object_ref_module
from pyactor._private import protocol as P
from pyactor._private import serialization, transport
from pyactor._private.direct import DirectPath
from pyactor._private.forwarded_output import ForwardedOutput
from pyactor._private.ids import PUT_INDEX, new_put_id, object_id_for
from pyactor._private.object_ref import ObjectRef
from pyactor._private.rejections import RejectionReporter, RejectionTally
from pyactor._private.references import (FAILED, PENDING, READY, CountdownWaiter, ObjectEntry,
                                         ReferenceTable)
from pyactor._private.task_events import (CANCELLED, FAILED as TASK_FAILED, FINISHED_OK,
                                          now as _now, record_finished)
from pyactor._private.task_spec import TaskSpec
from pyactor._private.task_submitter import TaskSubmitter, retry_on_error
from pyactor.exceptions import (GetTimeoutError, ObjectLostError, ObjectStoreFullError,
                                PyActorError, TaskCancelledError, WorkerCrashedError)

logger = logging.getLogger("pyactor.runtime")
# How often a process tells its node about connections to its ports that failed the handshake.
REJECTIONS_TO_NODE_S = 1.0
# How long shutdown waits for workers' output to be written (a stream nobody reads never is).
SHUTDOWN_OUTPUT_FLUSH_S = 2.0
NODE_GONE = "the pyactor node this process was connected to is gone (it crashed or was killed)"
PUT_SUFFIX = PUT_INDEX.to_bytes(4, "big")  # the index part of a put object's id
# Tries at making an object present locally before it counts as lost: a fetched or restored
# object can be evicted or spilled again before the reader pins it (rare: it is the most recent).
FETCH_ATTEMPTS = 3


class NotLocalError(Exception):
    """An object is not in this node's store and the caller may not block to get it there."""

class Runtime:
    def __init__(self, *, node_host: str, node_port: int, token: bytes, kind: str,
                 namespace: str = "", worker_id: bytes = b"", bind_host: str | None = None):
        self.node_host, self.node_port, self.token = node_host, node_port, token
        self.kind = kind
        self.namespace = namespace
        self.worker_id = worker_id
        self.bind_host = bind_host
        self.refs = ReferenceTable(self._schedule_release_drain, self._delete_put)
        self.loop = uvloop.new_event_loop()
        self.address: list | None = None
        self.node_id: bytes = b""
        self.store = None
        self.node_conn: transport.Connection | None = None
        self.server: transport.Server | None = None
        self._thread = threading.Thread(target=self._run_loop, name="pyactor-io", daemon=True)
        self._inbox: deque = deque()
        self._wake_pending = False
        self._release_pending = False
        self._request_ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future] = {}
        self._peers: dict[tuple, asyncio.Future] = {}  # (host, port) -> future of Connection
        self.tasks = TaskSubmitter(self)
        self._waiting_deps: dict[bytes, TaskSpec] = {}  # queued for their arguments
        self.pending_registrations: set[asyncio.Future] = set()
        self.borrows_started = 0
        self.task_address: list | None = None  # a worker's task endpoint (worker.py)
        self.handlers: dict[type, Callable[[transport.Connection, Any], None]] = {
            P.Reply: self._on_reply,
            P.TaskDone: self.tasks.on_task_done,
            P.GetObject: self._on_get_object,
            P.AddBorrower: self._on_add_borrower,
            P.RemoveBorrower: self._on_remove_borrower,
            P.Log: self._on_log,
            P.WorkerBlocking: self.tasks.on_worker_blocking,
            P.CancelTask: self._on_cancel_task,
            P.ClusterView: self._on_cluster_view,
            P.StateQuery: self._on_state_query,
            P.CollectMetrics: self._on_collect_metrics,
        }
        self.nodes: dict[bytes, list] = {}  # node_id -> [address, alive], from the node
        self._watched_borrowers: set[tuple] = set()  # see add_borrower
        self.on_blocked: Callable[[bool], None] | None = None  # set by the worker executor
        self.on_submit: Callable[[TaskSpec], None] | None = None  # likewise
        self.log_handler: Callable[[P.Log], None] | None = None
        self.actors = None  # ActorSubmitter, made in start()
        self.actors_created: dict[bytes, list] = {}  # creation args kept for restarts
        self._last_history_demand: tuple = (None, None)  # see _history_demand
        self.worker_label = ""
        self.closed = False
        self.node_lost = threading.Event()
        self.direct = DirectPath(self)
        self.output = ForwardedOutput()  # workers' output, written off the IO thread
        # Failed handshakes on this process's ports go to the node's log, never to this
        # process's stderr (a worker's is forwarded to drivers: see rejections.py).
        self.rejections = RejectionReporter(self.loop, REJECTIONS_TO_NODE_S,
                                            self._report_rejections)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 30.0) -> dict:
        from pyactor._private.actor_submitter import ActorSubmitter
        self.actors = ActorSubmitter(self)
        self._thread.start()
        info = asyncio.run_coroutine_threadsafe(self._connect(), self.loop).result(timeout_s)
        object_ref_module.set_runtime(self)
        return info

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _connect(self) -> dict:
        self.node_conn = await transport.connect(self.node_host, self.node_port, self.token,
                                                 self._on_message,
                                                 on_close=self._on_node_closed)
        # Listen where the node reached us from: other nodes' processes reach this one through
        # the same interface (loopback only when the node itself is on loopback). (So the node
        # is reached over TCP: a Unix socket would name no interface.) Processes on this host
        # reach us over the local socket (transport.py, "Same host, no TCP").
        sockname = self.node_conn._transport.get_extra_info("sockname")
        bind_host = self.bind_host or (sockname[0] if isinstance(sockname, tuple)
                                       else "127.0.0.1")
        self.server = await transport.serve(bind_host, 0, self.token, self._on_message,
                                            on_close=self._on_connection_closed,
                                            on_reject=self.rejections.add, local_socket=True)
        self.address = [bind_host, self.server.port]
        info = await self._request(self.node_conn, P.Register, self.kind, os.getpid(),
                                   self.worker_id, self.address, self.namespace,
                                   self.task_address or [])
        self.node_id = info["node_id"]
        self._update_nodes(info.get("nodes", []))
        if info.get("store_name"):
            from pyactor._private.store import ObjectStore
            self.store = ObjectStore.attach(info["store_name"])
        return info

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        object_ref_module.set_runtime(None)
        self.direct.close()

        async def close():
            self.direct.stop_timer()
            for conn_future in list(self._peers.values()):
                if conn_future.done() and not conn_future.exception():
                    conn_future.result().close("shutdown")
            if self.node_conn is not None:
                self.node_conn.close("shutdown")
            if self.server is not None:
                self.server.close()
            for task in asyncio.all_tasks(self.loop):
                if task is not asyncio.current_task():
                    task.cancel()
        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.output.flush(SHUTDOWN_OUTPUT_FLUSH_S)
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ threads
    def run_in_loop(self, function: Callable, *args) -> None:
        """Run `function(*args)` on the IO thread soon; cheap to call in a burst."""
        self._inbox.append((function, args))
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._wake_pending = False  # before draining: a later append wakes us again
        inbox = self._inbox
        while inbox:
            function, args = inbox.popleft()
            try:
                function(*args)
            except Exception:
                logger.exception("pyactor internal error in %s", function)

    def call(self, coroutine, timeout_s: float | None = None):
        """Run a coroutine on the IO thread and wait for its result (user threads only)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking pyactor call made on the IO thread")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def in_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # ------------------------------------------------------------------ messages
    def _on_message(self, conn: transport.Connection, raw: Any) -> None:
        message = P.decode(raw)
        handler = self.handlers.get(type(message))
        if handler is None:
            raise PyActorError(f"unexpected {type(message).__name__} message")
        handler(conn, message)

    def _request(self, conn: transport.Connection, kind: type, *fields) -> asyncio.Future:
        request_id = next(self._request_ids)
        future = self.loop.create_future()
        if conn.closed:  # `send` would drop the request and nobody would ever answer it
            future.set_exception(ConnectionError(f"connection closed: cannot send "
                                                 f"{kind.__name__}"))
            return future
        self._requests[request_id] = future
        future.add_done_callback(lambda _f: self._requests.pop(request_id, None))
        conn.send(P.encode(kind(request_id, *fields)))
        conn.user_data = conn.user_data or set()
        conn.user_data.add(request_id)
        return future

    def _on_reply(self, conn, message: P.Reply) -> None:
        future = self._requests.pop(message.request_id, None)
        if future is None or future.done():
            return
        if message.error is not None:
            future.set_exception(_error_from_reply(message.error))
        else:
            future.set_result(message.value)

    def _on_connection_closed(self, conn, reason) -> None:
        self.tasks.sent_functions.pop(conn, None)
        pending = conn.user_data if isinstance(conn.user_data, set) else ()
        for request_id in list(pending):
            future = self._requests.pop(request_id, None)
            if future is not None and not future.done():
                future.set_exception(ConnectionError(f"connection closed: {reason}"))
        for key, peer in list(self._peers.items()):
            if peer.done() and not peer.exception() and peer.result() is conn:
                del self._peers[key]
                if key in self._watched_borrowers and not self.closed:
                    self._borrower_gone(key)
        self.tasks.fail_leases_on(conn)
        if self.actors is not None:
            self.actors.on_connection_closed(conn)

    def _on_node_closed(self, conn, reason) -> None:
        if not self.closed:
            self.node_lost.set()  # first: the callbacks below must see it
            logger.debug("connection to the node closed: %s", reason)
        self._on_connection_closed(conn, reason)
        if not self.closed:
            for queue in self.tasks.queues.values():
                self.tasks.fail_queued(queue)

    def _on_state_query(self, conn, message: P.StateQuery) -> None:
        """The node asks what this process knows, for the state API (process_state.py)."""
        from pyactor._private import process_state
        try:
            value, error = process_state.snapshot(self, message.options), None
        except Exception as failure:  # noqa: BLE001 - the asker gets the reason
            logger.exception("state query failed")
            value, error = None, ["PyActorError", f"state query failed: {failure}"]
        conn.send(P.encode(P.Reply(message.request_id, value, error)))

    def _report_rejections(self, tally: RejectionTally) -> None:
        if self.node_conn is not None:
            self.node_conn.try_send(P.encode(P.ConnectionsRejected(*tally.to_wire())))

    def _node_lost_error(self) -> WorkerCrashedError:
        return WorkerCrashedError(
            f"{NODE_GONE}, so tasks can no longer be scheduled; call pyactor.shutdown() and "
            f"pyactor.init() again")

    def _on_log(self, conn, message: P.Log) -> None:
        if self.log_handler is not None:
            self.log_handler(message)
            return
        prefix = f"({message.source}) "
        text = "".join(prefix + line + "\n" for line in message.lines)
        # Written by another thread: a stream nobody reads must not stop this one.
        self.output.put(message.stream, text, len(message.lines))

    async def peer(self, address) -> transport.Connection:
        """A connection to another process's runtime (owner service or worker), shared."""
        key = (address[0], address[1])
        future = self._peers.get(key)
        if future is None:
            future = self.loop.create_future()
            self._peers[key] = future

            async def open_connection():
                try:
                    conn = await transport.connect(key[0], key[1], self.token, self._on_message,
                                                   on_close=self._on_connection_closed)
                    future.set_result(conn)
                except Exception as error:
                    self._peers.pop(key, None)
                    future.set_exception(error)
            self.loop.create_task(open_connection())
        conn = await asyncio.shield(future)
        if conn.closed:  # it closed while this waited: its on_close has run, and it is no
            raise transport.ConnectionClosedError(  # longer cached (see _on_connection_closed)
                f"the connection to {key[0]}:{key[1]} closed as it opened")
        return conn

    def send_to_peer(self, address, message) -> None:
        """Send a message to another runtime, connecting first if needed (IO thread)."""
        key = (address[0], address[1])
        future = self._peers.get(key)
        if future is not None and future.done() and not future.exception() and \
                not future.result().closed:
            future.result().send(P.encode(message))
            return

        async def send_later():
            try:
                (await self.peer(address)).send(P.encode(message))
            except Exception as error:
                logger.debug("could not reach %s: %s", address, error)
        self.loop.create_task(send_later())

    # ------------------------------------------------------------------ references
    def incref(self, object_id: bytes, owner_address: list) -> None:
        entry = self.refs.incref(object_id, owner_address)
        if entry is not None:  # first ref here to an object someone else owns
            self.borrows_started += 1  # read by a worker before it answers (see worker.py)
            if owner_address == self.address:
                entry.owned = True  # our own object, already freed: reads will say it is lost
                entry.state = FAILED
                entry.inline = pickle.dumps(ObjectLostError(
                    f"object {object_id.hex()} was freed by its owner before this ref arrived"))
                return
            self.run_in_loop(self._register_borrower, entry)

    def _register_borrower(self, entry: ObjectEntry) -> None:
        if entry.registered or self.refs.get(entry.object_id) is not entry:
            return
        entry.registered = True
        self.register_borrow(entry.object_id, entry.owner, self.address)

    def register_borrow(self, object_id: bytes, owner: list, borrower: list) -> None:
        """IO thread: tell the owner of `object_id` that `borrower` holds it. Until the owner
        acknowledges, the registration is in `pending_registrations` (a worker waits for those
        before it answers a call: see worker.py)."""
        future = self.loop.create_future()
        self.pending_registrations.add(future)
        future.add_done_callback(self.pending_registrations.discard)

        async def register():
            try:
                conn = await self.peer(owner)
                await self._request(conn, P.AddBorrower, object_id, borrower)
            except Exception as error:  # noqa: BLE001 - the owner is gone: nothing to keep
                logger.debug("borrow of %s failed: %s", object_id.hex(), error)
            finally:
                future.set_result(None)
        self.loop.create_task(register())

    def adopt_refs(self, refs: list[list]) -> list[ObjectRef]:
        """ObjectRefs for [id, owner] pairs whose owner already counts us as a borrower."""
        out = []
        for object_id, owner in refs:
            with self.refs.lock:
                entry = self.refs.entries.get(object_id)
                if entry is None and owner != self.address:
                    entry = ObjectEntry(object_id, False, owner)
                    entry.registered = True
                    self.refs.entries[object_id] = entry
            out.append(ObjectRef(object_id, owner))
        return out

    def _schedule_release_drain(self) -> None:
        if not self._release_pending and not self.closed:
            self._release_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain_released)
            except RuntimeError:  # loop closed at exit
                pass

    def _delete_put(self, entry: ObjectEntry) -> bool:
        """A put object nothing refers to any more: delete it from our store now (any thread,
        even inside __del__: a store call, no I/O), rather than when the IO thread next drains
        releases. A large put that follows then lands in the pages this one used, which are
        already mapped, not in fresh ones (measured here: a 1 GB put into untouched pages ran at
        a tenth of the speed). False (left to the IO thread) if it is not in the store: spilled."""
        store = self.store
        if entry.node_id != self.node_id or store is None:
            return False
        try:
            return store.delete(entry.object_id)
        except Exception:  # noqa: BLE001 - closed, or being restored: the IO thread sees to it
            return False

    def _drain_released(self) -> None:
        self._release_pending = False
        local_deletes = []
        for entry in self.refs.drain_released():
            if entry.owned:
                if entry.node_id is not None:
                    if entry.node_id == self.node_id and self.store is not None:
                        local_deletes.append(entry.object_id)
                    elif self.nodes.get(entry.node_id, (None, False))[1]:
                        self.send_to_peer(self.nodes[entry.node_id][0],
                                          P.FreeObjects([entry.object_id]))
                entry.contained = None
                if entry.kill_actor is not None:
                    self.actors.release_actor(entry.kill_actor)
                if entry.task_id is not None and entry.task_id in self.tasks.lineage:
                    self.tasks.forget_lineage(entry.task_id)
            elif entry.registered:
                self.send_to_peer(entry.owner, P.RemoveBorrower(entry.object_id, self.address))
        not_in_store = []
        for object_id in local_deletes:
            try:
                if not self.store.delete(object_id):
                    not_in_store.append(object_id)
            except Exception:  # unsealed: the node is restoring it from disk
                not_in_store.append(object_id)
        if not_in_store and self.node_conn is not None and not self.node_conn.closed:
            # spilled to disk (or being read back): the node removes its file
            self.node_conn.send(P.encode(P.FreeObjects(not_in_store)))

    # owner service: borrowers ask about objects we own
    def _on_get_object(self, conn, message: P.GetObject) -> None:
        entry = self.refs.get(message.object_id)
        if entry is None:
            conn.send(P.encode(P.Reply(message.request_id, None, [
                "ObjectLostError", f"object {message.object_id.hex()} no longer exists at its "
                                   f"owner (it was freed or its owner restarted)"])))
            return

        def answer(entry: ObjectEntry) -> None:
            if not conn.closed:
                conn.send(P.encode(P.Reply(message.request_id,
                                           [entry.state, entry.inline, entry.node_id], None)))
        if not self.refs.when_resolved(entry, answer):
            answer(entry)

    def _on_add_borrower(self, conn, message: P.AddBorrower) -> None:
        entry = self.refs.get(message.object_id)
        if entry is not None:
            self.add_borrower(entry, message.borrower)
        conn.send(P.encode(P.Reply(message.request_id, entry is not None, None)))

    def add_borrower(self, entry: ObjectEntry, borrower: list) -> None:
        """Count `borrower` (a runtime's address) as holding `entry` (IO thread). We keep a
        connection to every borrower: when it closes, the borrower died, and what it held is
        released (a dead process sends no RemoveBorrower)."""
        if borrower == self.address:
            return
        key = (borrower[0], borrower[1])
        with self.refs.lock:
            if entry.borrowers is None:
                entry.borrowers = set()
            entry.borrowers.add(key)
        if key not in self._watched_borrowers:
            self._watched_borrowers.add(key)

            async def watch():
                try:
                    await self.peer(key)
                except Exception:  # already gone
                    self._borrower_gone(key)
            self.loop.create_task(watch())

    def _borrower_gone(self, key: tuple) -> None:
        self._watched_borrowers.discard(key)
        self.refs.remove_borrower_everywhere(key)

    def _on_remove_borrower(self, conn, message: P.RemoveBorrower) -> None:
        entry = self.refs.get(message.object_id)
        if entry is not None and entry.borrowers:
            self.refs.remove_borrower(entry, tuple(message.borrower))

    # ------------------------------------------------------------------ put / get / wait
    def actor_token(self, actor_id: bytes) -> ObjectRef:
        """A ref whose last copy going away ends the actor (see ActorHandle)."""
        object_id = actor_id + b"ACTR"
        entry = self.refs.add_owned(object_id)
        entry.kill_actor = actor_id
        entry.inline = serialization.serialize_to_bytes(None)
        entry.state = READY
        return ObjectRef(object_id, self.address)

    def put(self, value: Any, timeout_s: float | None = 0.0) -> ObjectRef:
        return self.put_serialized(serialization.serialize(value), timeout_s)

    async def put_async(self, value: Any, timeout_s: float | None) -> ObjectRef:
        """put, spilling and waiting for room on the caller's loop (put_wait.py) rather than
        blocking it."""
        serialized = serialization.serialize(value)
        if serialized.total_bytes >= serialization.INLINE_THRESHOLD_BYTES and \
                self.store is not None:
            from pyactor._private.put_wait import create_waiting_async
            object_id = new_put_id()
            view = await create_waiting_async(self.store, object_id, serialized.total_bytes,
                                              timeout_s, self._make_room_async)
            return self.put_serialized(serialized, object_id=object_id, view=view)
        return self.put_serialized(serialized)

    def create_object(self, object_id: bytes, size_bytes: int, timeout_s: float | None = 0.0):
        """A new primary object in the local store; when it is full, the node spills objects to
        disk and, with a timeout, the put waits for room (put_wait.py)."""
        if timeout_s == 0:
            try:
                return self.store.create_object(object_id, size_bytes, evictable=False)
            except ObjectStoreFullError:
                pass
        from pyactor._private.put_wait import create_waiting
        return create_waiting(self.store, object_id, size_bytes, timeout_s, self._make_room)

    def _make_room(self, need_bytes: int) -> list:
        return self.node_request(P.MakeRoom, need_bytes)

    async def _make_room_async(self, need_bytes: int) -> list:
        async def ask():  # on the IO thread, which owns the node's connection
            return await self._request(self.node_conn, P.MakeRoom, need_bytes)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(ask(), self.loop))

    def put_serialized(self, serialized: serialization.SerializedValue,
                       timeout_s: float | None = 0.0, *, object_id: bytes | None = None,
                       view=None) -> ObjectRef:
        """Store a serialized value; `timeout_s` (0: none) waits for room in a full store;
        `view` is an object put_async already created as `object_id`."""
        if self.node_lost.is_set():  # a ref no task could ever read: refuse it here
            raise PyActorError(f"cannot put: {NODE_GONE}; call pyactor.shutdown() and "
                               f"pyactor.init() again")
        object_id = object_id or new_put_id()
        entry = self.refs.add_owned(object_id)
        if serialized.total_bytes < serialization.INLINE_THRESHOLD_BYTES or self.store is None:
            entry.inline = serialized.to_bytes()
        else:
            if view is None:
                view = self.create_object(object_id, serialized.total_bytes, timeout_s)
            try:
                serialized.write_to(view, self.store.copy_into)
            except BaseException:
                view.release()
                self.store.abort(object_id)
                raise
            view.release()
            self.store.seal(object_id)
            entry.node_id = self.node_id
        if serialized.contained_refs:
            entry.contained = serialized.contained_refs
        entry.state = READY
        return ObjectRef(object_id, self.address)

    def get(self, refs: list[ObjectRef], timeout_s: float | None) -> list[Any]:
        if len(refs) == 1:  # the common case, without the lists
            entry = self.refs.entries.get(refs[0].id) or self._entries_of(refs)[0]
            if entry.state == PENDING:
                if threading.current_thread() is not self._thread:
                    if timeout_s is None:
                        self.direct.try_run(entry, None)  # pa.get(f.remote()): direct.py
                    else:  # (what it took counts against the timeout: it may hand back early)
                        started = time.monotonic()
                        self.direct.try_run(entry, timeout_s)
                        timeout_s = max(0.0, timeout_s - (time.monotonic() - started))
                if entry.state == PENDING:
                    self._wait_for([entry], 1, timeout_s)
            elif self.direct.unclaimed:  # (see below)
                self.direct.hand_over_mine()
            return [self.value_of(entry)]
        entries = self._entries_of(refs)
        if self.direct.unclaimed:  # an answer this thread left unread goes to the IO thread
            self.direct.hand_over_mine()
        pending = [e for e in entries if e.state == PENDING]
        if pending:
            self._wait_for(pending, len(pending), timeout_s)
        return [self.value_of(entry) for entry in entries]

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout_s: float | None,
             ids: list[bytes] | None = None) -> tuple[list, list]:
        """(ready, not_ready), order kept. `ids` are the refs' ids when the caller has them.
        Refs that are all ready already (the common case of a poll) take C-level loops only."""
        if self.direct.unclaimed:  # (see get)
            self.direct.hand_over_mine()
        get_entry = self.refs.entries.get
        if ids is None:
            ids = [ref.id for ref in refs]
        if not [True for entry in map(get_entry, ids) if entry is None or entry.state == PENDING]:
            return refs[:num_returns], refs[num_returns:]  # all ready: one pass
        entries = self._entries_of(refs)
        states = [entry.state for entry in entries]
        pending = states.count(PENDING)
        if len(states) - pending < num_returns:
            pending_entries = [e for e, state in zip(entries, states) if state == PENDING]
            self._wait_for(pending_entries, num_returns - (len(states) - pending), timeout_s,
                           raise_on_timeout=False)
        ready, not_ready = [], []
        for ref, entry in zip(refs, entries):
            if entry.state != PENDING and len(ready) < num_returns:
                ready.append(ref)
            else:
                not_ready.append(ref)
        return ready, not_ready

    def _entries_of(self, refs: list[ObjectRef]) -> list[ObjectEntry]:
        entries = []
        get_entry = self.refs.entries.get
        for ref in refs:
            entry = get_entry(ref.id)
            if entry is None:  # a ref made before this runtime existed (or after a restart)
                self.incref(ref.id, ref.owner_address)
                entry = get_entry(ref.id)
            entries.append(entry)
        return entries

    def _wait_for(self, pending: list[ObjectEntry], needed: int, timeout_s: float | None,
                  raise_on_timeout: bool = True) -> None:
        waiter = CountdownWaiter(needed)
        registered = []
        for entry in pending:
            if self.refs.when_resolved(entry, waiter):
                registered.append(entry)
                self._fetch_if_borrowed(entry)
            else:
                waiter(entry)
        if not waiter.event.is_set():
            blocked = self.on_blocked
            if blocked is not None:
                blocked(True)
            try:
                finished = waiter.event.wait(timeout_s)
            finally:
                if blocked is not None:
                    blocked(False)
            if not finished:
                for entry in registered:
                    self.refs.forget_callback(entry, waiter)
                if raise_on_timeout:
                    raise GetTimeoutError(f"get timed out after {timeout_s} s "
                                          f"({waiter.needed} of {needed} objects not ready)")

    def _fetch_if_borrowed(self, entry: ObjectEntry) -> None:
        """Someone waits for a borrowed entry: ask its owner for the value, once (any thread;
        our own objects resolve when their task answers)."""
        if entry.owned or entry.fetching:
            return
        entry.fetching = True
        if self.in_io_thread():
            self._fetch(entry)
        else:
            self.run_in_loop(self._fetch, entry)

    def _fetch(self, entry: ObjectEntry) -> None:
        async def fetch():
            try:
                conn = await self.peer(entry.owner)
                state, inline, node_id = await self._request(conn, P.GetObject, entry.object_id)
            except Exception as error:
                state, inline, node_id = FAILED, pickle.dumps(ObjectLostError(
                    f"object {entry.object_id.hex()} could not be fetched from its owner at "
                    f"{entry.owner}: {error}")), None
            self.refs.resolve(entry, state, inline, node_id)
        self.loop.create_task(fetch())

    def value_of(self, entry: ObjectEntry, block: bool = True) -> Any:
        """The entry's value (or its error, raised). block=False (the IO thread, an awaiting
        loop) raises NotLocalError instead of waiting for an object to be fetched or restored."""
        state = entry.state
        if state == READY:
            if entry.inline is not None:
                return serialization.deserialize(entry.inline)
            return serialization.deserialize(self.local_view(entry.object_id, entry.node_id,
                                                             block))
        if state == FAILED:
            raise pickle.loads(entry.inline)
        raise RuntimeError("value_of on a pending object")

    def local_view(self, object_id: bytes, node_id: bytes, block: bool = True) -> memoryview:
        """A pinned view of a store object. One not in this node's store is first made present
        by the node (Fetch): pulled from the holder `node_id`, or, when that is this node, read
        back from its spill directory (spilling.py)."""
        view = self.store.get(object_id)
        if view is not None:
            return view
        if not block:
            raise NotLocalError(object_id)
        for _ in range(FETCH_ATTEMPTS):
            self.node_request(P.Fetch, object_id, node_id)
            view = self.store.get(object_id)
            if view is not None:
                return view
        raise ObjectLostError(f"object {object_id.hex()} is no longer in the store")

    async def fetch_to_local_async(self, object_id: bytes, node_id: bytes) -> None:
        """IO thread: have the node make the object present locally (see local_view)."""
        if not self.store.contains(object_id):
            await self._request(self.node_conn, P.Fetch, object_id, node_id)

    def future_of(self, ref: ObjectRef):
        import concurrent.futures
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.direct.unclaimed:  # (see get)
            self.direct.hand_over_mine()
        entry = self._entries_of([ref])[0]

        def complete(entry: ObjectEntry, attempt: int = 0) -> None:
            if future.cancelled():
                return
            try:
                value = self.value_of(entry, block=not self.in_io_thread())
            except NotLocalError:
                # To be fetched from another node or read back from disk: without blocking the
                # IO thread, then read.
                async def fetch_then_complete():
                    try:
                        await self.fetch_to_local_async(entry.object_id, entry.node_id)
                    except BaseException as error:  # noqa: BLE001
                        future.set_exception(error)
                        return
                    complete(entry, attempt + 1)
                if attempt < FETCH_ATTEMPTS:
                    self.loop.create_task(fetch_then_complete())
                else:
                    future.set_exception(ObjectLostError(
                        f"object {entry.object_id.hex()} is no longer in the store"))
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(value)
        if self.refs.when_resolved(entry, complete):
            self._fetch_if_borrowed(entry)
            # future.cancel() (also through asyncio.wrap_future) cancels the remote work
            future.add_done_callback(lambda f, ref=ref: f.cancelled() and self._cancel_awaited(
                ref, entry))
        else:
            complete(entry)
        future._pyactor_ref = ref  # keep the object alive while someone awaits it
        return future

    def asyncio_future_of(self, ref: ObjectRef, loop: asyncio.AbstractEventLoop
                          ) -> asyncio.Future:
        """`await ref`: a future on the awaiting loop, settled there (the value is unpickled
        on that loop's thread, not on the IO thread). Cheaper than wrapping future_of: no
        concurrent.futures.Future and no chain of callbacks between the two."""
        future = loop.create_future()
        if self.direct.unclaimed:  # (see get)
            self.direct.hand_over_mine()
        entry = self._entries_of([ref])[0]

        def resolved(entry: ObjectEntry, ref=ref) -> None:  # holds the ref while awaited
            try:
                loop.call_soon_threadsafe(self._settle, future, entry)
            except RuntimeError:  # the awaiting loop is closed: nobody waits any more
                pass
        if self.refs.when_resolved(entry, resolved):
            self._fetch_if_borrowed(entry)
            # Cancelling the awaiting asyncio task (task.cancel(), wait_for's timeout, a
            # TaskGroup sibling's failure) cancels the remote work it waited for.
            future.add_done_callback(lambda f, ref=ref: f.cancelled() and self._cancel_awaited(
                ref, entry))
        else:
            self._settle(future, entry)
        return future

    def _cancel_awaited(self, ref: ObjectRef, entry: ObjectEntry) -> None:
        if entry.state == PENDING and ref.id[16:] != PUT_SUFFIX:
            self.cancel(ref, False, True)

    def _settle(self, future: asyncio.Future, entry: ObjectEntry, attempt: int = 0) -> None:
        """On the awaiting loop: give `future` the entry's value or error."""
        if future.done():
            return
        try:
            future.set_result(self.value_of(entry, block=False))
        except NotLocalError:  # fetch it (or read it back) on the IO thread, not blocking here
            if attempt >= FETCH_ATTEMPTS:
                future.set_exception(ObjectLostError(
                    f"object {entry.object_id.hex()} is no longer in the store"))
                return
            fetched = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                self.fetch_to_local_async(entry.object_id, entry.node_id), self.loop))

            def then(done: asyncio.Future) -> None:
                if future.done():
                    return
                if done.exception() is not None:
                    future.set_exception(done.exception())
                    return
                self._settle(future, entry, attempt + 1)
            fetched.add_done_callback(then)
        except BaseException as error:  # noqa: BLE001 - the task's error, a lost object
            future.set_exception(error)

    # ------------------------------------------------------------------ tasks
    def submit(self, spec: TaskSpec) -> list[ObjectRef]:
        """Register the task's returns and hand it to the IO thread (user threads)."""
        refs = self._register_returns(spec)
        if self.on_submit is not None:
            self.on_submit(spec)
        if self.direct.send_at_submit(spec):  # this thread waits for its calls: sent now
            return refs
        self.direct.note_submitted(spec)
        self.run_in_loop(self.tasks.submit_on_loop, spec)
        return refs

    def _register_returns(self, spec: TaskSpec) -> list[ObjectRef]:
        task_id = spec.task_id
        entries = []
        refs = []
        address = self.address
        add_owned = self.refs.add_owned
        for index in range(spec.num_returns):
            object_id = object_id_for(task_id, index)
            # The task pin is released when the task finishes, so late results are kept.
            entries.append(add_owned(object_id, task_id, local_refs=1, task_pins=1))
            refs.append(ObjectRef(object_id, address, _counted=True))
        spec.entries = entries
        return refs

    def submit_actor_call(self, spec: TaskSpec, max_task_retries: int) -> list[ObjectRef]:
        refs = self._register_returns(spec)
        spec.retries_left = max_task_retries
        self.actors.count_submitted(spec, max_task_retries)
        if self.direct.send_at_submit(spec):
            return refs
        self.direct.note_submitted(spec)
        self.run_in_loop(self.actors.submit, spec)
        return refs

    def _resolve_dependencies(self, spec: TaskSpec, then: Callable[[TaskSpec], None]) -> bool:
        """True when every top-level ref argument is ready; else calls then(spec) later.
        Refs nested in containers (also in held_refs, to keep them alive) do not hold the
        task back: it receives them as refs."""
        if not spec.has_ref_args:
            return True
        missing = []
        get_entry = self.refs.get
        for arg in (*spec.args, *spec.kwargs.values()):
            if arg[0] == P.VALUE_REF:
                entry = get_entry(arg[1])
                if entry is not None and entry.state == PENDING and entry not in missing:
                    missing.append(entry)
        if not missing:
            return True
        remaining = [len(missing)]

        def one_ready(_entry):
            remaining[0] -= 1
            if remaining[0] == 0:
                spec.args_ready_at = _now()
                self._waiting_deps.pop(spec.task_id, None)
                if not spec.cancelled:
                    then(spec)
        self._waiting_deps[spec.task_id] = spec
        for entry in missing:
            if self.refs.when_resolved(entry, one_ready):
                self._fetch_if_borrowed(entry)
            else:
                one_ready(entry)
        return False

    def resolve_args(self, spec: TaskSpec) -> tuple[list, dict] | None:
        """Replace ref args by their values or store locations. If one of them failed, the task
        fails with that error (finished here, once) and this returns None."""
        if not spec.has_ref_args:
            return spec.args, spec.kwargs
        failed: list = []
        args = [self._resolve_arg(a, failed) for a in spec.args]
        kwargs = {k: self._resolve_arg(v, failed) for k, v in spec.kwargs.items()}
        if failed:
            self._finish(spec, error=failed[0])
            return None
        return args, kwargs

    def _resolve_arg(self, arg: list, failed: list) -> list:
        if arg[0] != P.VALUE_REF:
            return arg
        entry = self.refs.get(arg[1])
        if entry.state == FAILED:
            failed.append(entry.inline)
            return arg
        if entry.inline is not None:
            return [P.VALUE_INLINE, entry.inline]
        return [P.VALUE_IN_STORE, arg[1], entry.node_id]

    def _finish(self, spec: TaskSpec, returns: list | None = None,
                error: bytes | None = None) -> None:
        """Resolve a task's return entries and release what it held (IO thread)."""
        self.tasks.running.pop(spec.task_id, None)
        refs = self.refs
        for index, entry in enumerate(spec.entries):
            if error is not None:
                refs.resolve(entry, FAILED, error, None)
            else:
                ret = returns[index]
                refs.resolve(entry, *_resolution(ret))
                if len(ret) > 3 and ret[3]:
                    entry.contained = self.adopt_refs(ret[3])
            refs.unpin_task(entry)
        # The end of a call that ran is its worker's record: the clock is read here only for
        # failures (a call that may never have reached a worker).
        record_finished((spec.task_id, spec.name, spec.actor, spec.submitted_at,
                         spec.args_ready_at, 0.0 if error is None else _now(),
                         FINISHED_OK if error is None else
                         CANCELLED if spec.cancelled else TASK_FAILED, error, spec.attempt,
                         self._history_demand(spec.demand)))
        self._keep_lineage(spec, error is None and any(
            ret[0] == P.VALUE_IN_STORE for ret in returns))

    def _history_demand(self, demand: dict | None) -> tuple | None:
        """A task's demand as its history record keeps it: (name, amount) pairs in a tuple. A
        dict in the record kept each of the 10,000 records tracked by the garbage collector
        (a tuple holding a dict never stops being tracked), which then walked them all in every
        collection of a batch of tasks. Demands are shared per function: converted once."""
        if demand is None:
            return None
        last = self._last_history_demand
        if last[0] is not demand:  # (holding the dict: its id cannot be reused meanwhile)
            last = self._last_history_demand = (demand, tuple(demand.items()))
        return last[1]

    def _keep_lineage(self, spec: TaskSpec, returns_in_store: bool) -> None:
        """A finished task: keep it as lineage if a return lives in a store (when that node
        dies, it can run again, so its argument refs stay alive with the returns), else drop
        its argument refs."""
        if returns_in_store and spec.actor is None:
            self.tasks.lineage[spec.task_id] = spec
        else:
            spec.held_refs = None

    def finish_answered(self, spec: TaskSpec, done: P.TaskDone) -> None:
        """Resolve a call's returns from its TaskDone: the values, or its error (IO thread).
        The common answer (one return, no refs inside it) takes a short lane: it is the path
        of every call of a batch, where _finish's generality cost ~7 Python calls a call."""
        returns = done.returns
        if done.error is None and len(returns) == 1 and len(spec.entries) == 1:
            ret = returns[0]
            if len(ret) <= 3 or not ret[3]:
                self._finish_one(spec, ret)
                return
        self._finish(spec, returns=returns, error=done.error)

    def _finish_one(self, spec: TaskSpec, ret: list) -> None:
        """_finish for a call that succeeded with one return holding no refs."""
        entry = spec.entries[0]
        refs = self.refs
        if ret[0] == P.VALUE_INLINE:
            refs.resolve(entry, READY, ret[1], None)
            in_store = False
        else:
            refs.resolve(entry, READY, None, ret[2])
            in_store = True
        refs.unpin_task(entry)
        record_finished((spec.task_id, spec.name, spec.actor, spec.submitted_at,
                         spec.args_ready_at, 0.0, FINISHED_OK, None, spec.attempt,
                         self._history_demand(spec.demand)))
        self._keep_lineage(spec, in_store)

    def task_answered(self, spec: TaskSpec, done: P.TaskDone) -> None:
        """The answer to a call sent directly (the calling thread, direct.py). The entry is
        resolved here unless that would run other waiters' callbacks or needs the IO thread
        (a retry, refs inside the value); then the IO thread does it."""
        if done.error is not None and spec.actor is None and retry_on_error(spec, done):
            self.run_in_loop(self.tasks.retry, spec)
        elif not self._finish_here(spec, done):
            self.run_in_loop(self.finish_answered, spec, done)

    def _finish_here(self, spec: TaskSpec, done: P.TaskDone) -> bool:
        entry = spec.entries[0]
        if done.error is not None:
            state, inline, node_id = FAILED, done.error, None
        else:
            ret = done.returns[0]
            if len(ret) > 3 and ret[3]:  # refs inside the value: adopt them on the IO thread
                return False
            if ret[0] == P.VALUE_INLINE:  # (_resolution, inline: this runs per round trip)
                state, inline, node_id = READY, ret[1], None
            else:
                state, inline, node_id = READY, None, ret[2]
        resolved = self.refs.resolve_unwatched(entry, state, inline, node_id)
        if resolved is False:
            return False
        if resolved is None:  # already settled elsewhere, pin included
            return True
        self.refs.unpin_task(entry)
        record_finished((spec.task_id, spec.name, spec.actor, spec.submitted_at,
                         spec.args_ready_at, 0.0 if done.error is None else _now(),
                         FINISHED_OK if done.error is None else TASK_FAILED, done.error,
                         spec.attempt, self._history_demand(spec.demand)))
        self._keep_lineage(spec, node_id is not None)
        return True

    # ------------------------------------------------------------------ cancel
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        if ref.owner_address != self.address:  # only the owner can cancel: ask it
            self.run_in_loop(self.send_to_peer, ref.owner_address,
                             P.CancelTask(ref.id[:16], force, b"", recursive))
            return
        self.direct.note_cancelled(ref.id[:16])
        self.run_in_loop(self._cancel_on_loop, ref.id[:16], force, recursive)

    def owns_task(self, task_id: bytes) -> bool:
        """The task was submitted here and has not finished (IO thread)."""
        return task_id in self._waiting_deps or self.tasks.owns(task_id) or (
            self.actors is not None and task_id in self.actors.by_task)

    def _on_cancel_task(self, conn, message: P.CancelTask) -> None:
        """A borrower asks us, the owner, to cancel one of our tasks."""
        self._cancel_on_loop(message.task_id, message.force, message.recursive)

    def _cancel_on_loop(self, task_id: bytes, force: bool, recursive: bool = True) -> None:
        error = pickle.dumps(TaskCancelledError(f"task {task_id.hex()} was cancelled"))
        spec = self._waiting_deps.pop(task_id, None)
        if spec is not None:
            spec.cancelled = True
            self._finish(spec, error=error)
            if spec.actor is not None and self.actors is not None:
                self.actors.drop_blocked(spec)  # the calls queued behind it may go now
            return
        if self.tasks.cancel(task_id, force, recursive, error):
            return
        if self.actors is not None:
            self.actors.cancel(task_id, force)

    # ------------------------------------------------------------------ cluster
    def _update_nodes(self, wire_nodes: list) -> list[bytes]:
        """Take the node's view of the cluster; returns the nodes that just died."""
        died = []
        for fields in wire_nodes:
            node_id, address, alive = fields[0], fields[1], fields[4]
            known = self.nodes.get(node_id)
            if known is not None and known[1] and not alive:
                died.append(node_id)
            self.nodes[node_id] = [address, alive]
        return died

    def _on_collect_metrics(self, conn, message: P.CollectMetrics) -> None:
        from pyactor._private.metrics import process_snapshot
        conn.send(P.encode(P.Reply(message.request_id,
                                   process_snapshot(getattr(self, "executor", None)), None)))

    def _on_cluster_view(self, conn, message: P.ClusterView) -> None:
        for node_id in self._update_nodes(message.nodes):
            self.tasks.leases_lost_with(node_id)
            self.actors.on_node_dead(node_id)
            self.tasks.objects_lost_with(node_id)

    # ------------------------------------------------------------------ node queries
    def node_request(self, kind: type, *fields, timeout_s: float | None = None):
        async def ask():
            return await self._request(self.node_conn, kind, *fields)
        return self.call(ask(), timeout_s)


def _resolution(ret: list) -> tuple[int, bytes | None, bytes | None]:
    """(state, inline value, node id) of a return as a TaskDone carries it."""
    if ret[0] == P.VALUE_INLINE:
        return READY, ret[1], None
    return READY, None, ret[2]


def _error_from_reply(error: Any) -> BaseException:
    """Errors in Reply messages are [class name, message] pairs of known classes only."""
    import pyactor.exceptions as exceptions
    name, text = error
    cls = getattr(exceptions, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(text)
    if name in ("ValueError", "TypeError", "KeyError"):
        return {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError}[name](text)
    return PyActorError(f"{name}: {text}")
