"""The owner's side of tasks: queues by resource shape, leased workers, retries, lineage.

A task waits in the queue of its shape (its resource demand) until a leased worker can take it.
The submitter asks the node for leases as the queue grows, pushes tasks straight to each leased
worker (pipelining up to PIPELINE_DEPTH), hands a lease back after LEASE_LINGER_S idle, and runs
a task again when its worker dies (max_retries) or its error asks for it (retry_exceptions).

    runtime.submit (user thread) --> submit_on_loop --> wait for ref arguments (runtime)
        --> enqueue: queue of the shape --> pump --> idle lease? push : RequestLease (node)
    worker --TaskDone--> on_task_done --> retry, or runtime._finish (resolve the returns)

Results kept in a store keep their task's spec as lineage: if the node holding them dies, the
task runs again (objects_lost_with). A spilled lease request goes to the node the first one
names; a task whose store arguments live on one node asks that node first (locality).
Everything here runs on the IO thread, except what direct.py reads under its route lock.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import deque

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.direct import ROUTE_DIRECT, ROUTE_LOOP
from pyactor._private.references import FAILED, PENDING, READY
from pyactor._private.task_spec import TaskSpec
from pyactor.exceptions import (InfeasibleResourcesError, ObjectLostError,
                                PlacementGroupRemovedError, TaskCancelledError,
                                WorkerCrashedError)

logger = logging.getLogger("pyactor.tasks")

# Tasks in flight on one leased worker. More amortizes the round trip; fewer balances long tasks
# better. A worker that blocks in `get` hands its queued tasks back, so this cannot deadlock.
PIPELINE_DEPTH = int(os.environ.get("PYACTOR_PIPELINE_DEPTH", "8"))
# How long an idle lease is kept before the worker goes back to the node: a program that submits
# one task at a time reuses its worker instead of paying a lease round trip per task.
LEASE_LINGER_S = 0.05
FORCE_KILL_BACKSTOP_S = 0.5  # see cancel
MAX_PENDING_LEASE_REQUESTS = 16
# Pause before asking again after a lease request failed because the node asked went away.
LEASE_RETRY_S = 0.1


class Lease:
    __slots__ = ("lease_id", "worker_id", "address", "conn", "queue", "in_flight", "gpu_ids",
                 "idle_timer", "returned", "node_conn", "node_id", "control_address", "blocked",
                 "direct_busy", "direct_uses", "uses_when_idle")

    def __init__(self, lease_id, worker_id, address, conn, queue, gpu_ids, node_conn, node_id,
                 control_address):
        self.control_address = control_address  # the worker's runtime: CancelTask, RevokeTasks
        self.blocked = False  # its task waits in get: pipeline nothing more behind it
        self.node_conn = node_conn  # the node that granted it, which takes it back
        self.node_id = node_id  # that node's id: its death ends the lease
        self.lease_id = lease_id
        self.worker_id = worker_id
        self.address = address
        self.conn = conn
        self.queue = queue
        self.in_flight: dict[bytes, TaskSpec] = {}
        self.gpu_ids = gpu_ids
        self.idle_timer = None
        self.returned = False
        self.direct_busy = False  # a thread runs a call on it directly (direct.py)
        self.direct_uses = 0  # direct calls so far: an idle timer that sees new ones re-arms
        self.uses_when_idle = 0


class SchedulingQueue:
    """Tasks of one resource shape (and runtime_env) waiting for a worker, and the leases
    serving them."""

    __slots__ = ("key", "demand", "tasks", "leases", "requests_pending", "placement",
                 "runtime_env")

    def __init__(self, key, demand, placement=None, runtime_env=None):
        self.key = key
        self.demand = demand
        self.placement = placement  # (pg_id, bundle index): its leases come from that bundle
        self.runtime_env = runtime_env  # the wire env its workers run in (runtime_env.py)
        self.tasks: deque[TaskSpec] = deque()
        self.leases: list[Lease] = []
        self.requests_pending = 0


class TaskSubmitter:
    def __init__(self, runtime):
        self.runtime = runtime
        self.queues: dict[bytes, SchedulingQueue] = {}  # scheduling key -> its queue
        self.running: dict[bytes, TaskSpec] = {}  # task_id -> spec, for dispatched tasks
        self.sent_functions: dict = {}  # connection -> function ids it has
        self.lineage: dict[bytes, TaskSpec] = {}  # tasks whose returns live in a store

    def submit_on_loop(self, spec: TaskSpec) -> None:
        with self.runtime.direct.lock:
            if spec.route == ROUTE_DIRECT:  # a waiting thread sends it itself
                return
            spec.route = ROUTE_LOOP  # (a lineage rebuild comes here again, already LOOP)
        if not self.runtime._resolve_dependencies(spec, self.enqueue):
            return
        self.enqueue(spec)

    def enqueue(self, spec: TaskSpec, first: bool = False, pump: bool = True) -> None:
        queue = self.queues.get(spec.scheduling_key)
        if queue is None:
            queue = self.queues[spec.scheduling_key] = SchedulingQueue(
                spec.scheduling_key, spec.demand, spec.placement, spec.runtime_env)
        if first:
            queue.tasks.appendleft(spec)
        else:
            queue.tasks.append(spec)
        if pump:
            self.pump(queue)

    def pump(self, queue: SchedulingQueue) -> None:
        tasks = queue.tasks
        for lease in list(queue.leases):  # idle workers first (a push may drop a lease)
            while tasks and not lease.in_flight and not lease.direct_busy and \
                    not lease.returned:
                self._push(lease, tasks.popleft())
        backlog = len(tasks)
        while backlog > queue.requests_pending and queue.requests_pending < \
                MAX_PENDING_LEASE_REQUESTS:
            queue.requests_pending += 1
            self.runtime.loop.create_task(self._lease_worker(queue))
        # Pipeline onto busy workers only what the pending lease requests will not absorb: a
        # task queued behind a long-running one would wait for it while a CPU sits idle.
        while len(tasks) > queue.requests_pending:
            best = None
            for lease in queue.leases:
                if len(lease.in_flight) < PIPELINE_DEPTH and not lease.blocked and \
                        not lease.direct_busy and (
                        best is None or len(lease.in_flight) < len(best.in_flight)):
                    best = lease
            if best is None:
                break
            self._push(best, tasks.popleft())

    async def _lease_worker(self, queue: SchedulingQueue) -> None:
        node_conn, node_id = self.runtime.node_conn, self.runtime.node_id
        try:
            spillable = True
            if queue.placement is not None:
                # Only the node holding the bundle can run it: the head says which, once the
                # bundle is reserved (placement_groups.py).
                node_id, address = await self.runtime._request(
                    node_conn, P.LocateBundle, queue.placement[0], queue.placement[1],
                    queue.demand)
                if node_id != self.runtime.node_id:
                    node_conn = await self.runtime.peer(address)
                spillable = False
            else:
                preferred = self._node_holding_args(queue)
                if preferred is not None:
                    node_conn, node_id = await self.runtime.peer(
                        self.runtime.nodes[preferred][0]), preferred
            while True:
                grant = await self.runtime._request(node_conn, P.RequestLease, queue.demand,
                                                    queue.key, spillable, queue.runtime_env)
                if grant[0] != "spill":
                    break
                # That node is busy or too small and named one with room: ask it, once.
                node_conn, node_id = await self.runtime.peer(grant[2]), grant[1]
                spillable = False
        except (InfeasibleResourcesError, PlacementGroupRemovedError) as error:
            queue.requests_pending -= 1
            while queue.tasks:
                self.runtime._finish(queue.tasks.popleft(), error=pickle.dumps(error))
            return
        except Exception as error:
            queue.requests_pending -= 1
            if self.runtime.node_lost.is_set():
                self.fail_queued(queue)
            elif not self.runtime.closed:
                # The node asked (a spill target, the node holding the arguments) died or
                # could not be reached: ask again, through our own node, which knows by now.
                logger.info("lease request failed, asking again: %s", error)
                self.runtime.loop.call_later(LEASE_RETRY_S, self.pump, queue)
            return
        queue.requests_pending -= 1
        lease_id, worker_id, address, gpu_ids, control_address = grant
        try:
            conn = await self.runtime.peer(address)
        except Exception as error:  # noqa: BLE001 - refused, reset, closed as it opened
            self._lease_unusable(queue, node_conn, lease_id, address, error)
            return
        self.record_lease(Lease(lease_id, worker_id, address, conn, queue, gpu_ids, node_conn,
                                node_id, control_address))

    def record_lease(self, lease: Lease) -> None:
        """Start using a granted lease, or give it back if its worker's connection closed
        already. Three events race: connected, closed, recorded. A close before the connection
        was handed over makes peer() raise; a close after the lease is recorded fails it (see
        fail_leases_on); a close in between ran on_close before there was a lease to fail,
        so it is caught here. There is no await between this check and the recording."""
        if lease.conn.closed:
            self._lease_unusable(lease.queue, lease.node_conn, lease.lease_id, lease.address,
                                 "its connection closed before the lease was recorded")
            return
        lease.queue.leases.append(lease)
        self.pump(lease.queue)
        self._maybe_idle(lease)

    def _lease_unusable(self, queue: SchedulingQueue, node_conn, lease_id: int, address,
                        error) -> None:
        """The leased worker cannot be used (it died, most likely): hand the lease back as
        one whose worker is gone, and ask for another for the tasks still queued."""
        logger.info("leased worker at %s is unusable: %s", address, error)
        if not node_conn.closed:
            node_conn.send(P.encode(P.ReturnLease(lease_id, True)))
        self.pump(queue)

    def _push(self, lease: Lease, spec: TaskSpec) -> None:
        resolved = self.runtime.resolve_args(spec)
        if resolved is None:
            return
        args, kwargs = resolved
        if lease.idle_timer is not None:
            lease.idle_timer.cancel()
            lease.idle_timer = None
        spec.lease = lease
        lease.in_flight[spec.task_id] = spec
        self.running[spec.task_id] = spec
        sent = self.sent_functions.get(lease.conn)
        if sent is None:
            sent = self.sent_functions[lease.conn] = set()
        blob = None
        if spec.function_id not in sent:
            sent.add(spec.function_id)
            blob = spec.function_blob
        try:
            lease.conn.send(P.encode(P.PushTask(spec.task_id, spec.function_id, blob, args,
                                                kwargs, spec.num_returns, self.runtime.address,
                                                lease.gpu_ids, spec.name, spec.namespace,
                                                spec.job_id)))
        except transport.ConnectionClosedError:
            self._push_refused(lease, spec)

    def _push_refused(self, lease: Lease, spec: TaskSpec) -> None:
        """The lease's connection closed and nobody failed the lease yet (record_lease and
        fail_leases_on make this unexpected): the task never left, so it goes back first in
        line without spending a retry, and the lease fails as on_close would fail it."""
        logger.warning("a lease outlived its worker's connection (%s); failing it now",
                       lease.address)
        lease.in_flight.pop(spec.task_id, None)
        self.running.pop(spec.task_id, None)
        self.sent_functions.pop(lease.conn, None)
        spec.lease = None
        lease.queue.tasks.appendleft(spec)
        self.fail_leases_on(lease.conn, pump=False)
        self.runtime.loop.call_soon(self.pump, lease.queue)  # after the pump that pushed

    def _maybe_idle(self, lease: Lease) -> None:
        if lease.in_flight or lease.queue.tasks or lease.returned:
            return
        if lease.idle_timer is None:
            lease.uses_when_idle = lease.direct_uses
            lease.idle_timer = self.runtime.loop.call_later(LEASE_LINGER_S, self._return_lease, lease)

    def _return_lease(self, lease: Lease, worker_exiting: bool = False) -> None:
        lease.idle_timer = None
        if lease.in_flight and not worker_exiting:
            return
        with self.runtime.direct.lock:
            if not worker_exiting and (lease.direct_busy or
                                       lease.direct_uses != lease.uses_when_idle):
                in_use = True  # a thread calls through it directly: keep it a while longer
            else:
                in_use = False
                lease.returned = True
        if in_use:
            self._maybe_idle(lease)
            return
        if lease in lease.queue.leases:
            lease.queue.leases.remove(lease)
        if not lease.node_conn.closed:
            lease.node_conn.send(P.encode(P.ReturnLease(lease.lease_id, worker_exiting)))

    def on_task_done(self, conn, message: P.TaskDone) -> None:
        spec = self.running.pop(message.task_id, None)
        if spec is None:
            if self.runtime.actors is not None and self.runtime.actors.on_task_done(conn, message):
                return
            self._discard_late_returns(message.returns)
            return
        lease = spec.lease
        if lease is not None:
            lease.in_flight.pop(message.task_id, None)
            lease.blocked = False
        if retry_on_error(spec, message):
            self.retry(spec)
        else:
            self.runtime.finish_answered(spec, message)
        if lease is not None:
            self.pump(lease.queue)
            self._maybe_idle(lease)

    def on_worker_blocking(self, conn, message: P.WorkerBlocking) -> None:
        """A task of ours waits in `get` on its worker: take back the tasks pipelined behind it
        (they might be what it waits for) and run them elsewhere. The worker gives up only
        those it has not started, so nothing runs twice."""
        spec = self.running.get(message.task_id)
        lease = spec.lease if spec is not None else None
        if lease is None or lease.returned:
            return
        lease.blocked = True
        behind = [task_id for task_id in lease.in_flight if task_id != message.task_id]
        if not behind:
            return

        async def revoke():
            try:
                conn = await self.runtime.peer(message.control_address)
                given_up = await self.runtime._request(conn, P.RevokeTasks, behind)
            except Exception:  # noqa: BLE001 - the worker is gone: its connection's close
                return  # retries what it held
            taken_back = []
            for task_id in given_up:
                spec = lease.in_flight.pop(task_id, None)
                if spec is not None:
                    self.running.pop(task_id, None)
                    spec.lease = None
                    taken_back.append(spec)
            lease.queue.tasks.extendleft(reversed(taken_back))  # first in line, in order
            self.pump(lease.queue)
        self.runtime.loop.create_task(revoke())

    def _discard_late_returns(self, returns: list) -> None:
        for index, ret in enumerate(returns):
            if ret[0] == P.VALUE_IN_STORE and ret[2] == self.runtime.node_id and self.runtime.store is not None:
                try:
                    self.runtime.store.delete(ret[1])
                except Exception:
                    pass

    def fail_leases_on(self, conn, pump: bool = True) -> None:
        """The connection to a leased worker closed: its leases end, and the tasks they held
        run again (or fail)."""
        for queue in self.queues.values():
            for lease in list(queue.leases):
                if lease.conn is not conn:
                    continue
                queue.leases.remove(lease)
                lease.returned = True
                lost = list(lease.in_flight.values())
                lease.in_flight.clear()
                for spec in lost:
                    self.task_lost(spec, pump=False)
                if pump:
                    self.pump(queue)

    def task_lost(self, spec: TaskSpec, pump: bool = True) -> None:
        """The worker running a task died, or its connection broke (IO thread): run the task
        again, first in line, or fail it."""
        self.running.pop(spec.task_id, None)
        if spec.retries_left != 0 and not spec.cancelled:
            spec.retries_left -= 1
            spec.attempt += 1
            self.enqueue(spec, first=True, pump=pump)
            return
        error = TaskCancelledError(f"task {spec.name} was cancelled") if spec.cancelled \
            else WorkerCrashedError(f"the worker running {spec.name} died unexpectedly (killed, "
                                    f"crashed or exited) and no retries were left")
        self.runtime._finish(spec, error=pickle.dumps(error))

    def direct_task_lost(self, spec: TaskSpec, lease: Lease) -> None:
        """A task sent directly lost its connection: its worker died. Drop the lease now (its
        own connection says the same, later, and must not count a second death), then run the
        task again or fail it."""
        lease.conn.close("a call sent directly found the worker gone")
        self.task_lost(spec)

    def retry(self, spec: TaskSpec) -> None:
        spec.retries_left -= 1
        spec.attempt += 1
        self.enqueue(spec)

    def leases_lost_with(self, node_id: bytes) -> None:
        """A node was declared dead: its workers may still run (a node that stopped answering
        but whose workers did not), but their results no longer count. Dropping the connection
        to each of them retries their tasks elsewhere (see fail_leases_on)."""
        for queue in list(self.queues.values()):
            for lease in list(queue.leases):
                if lease.node_id == node_id:
                    lease.conn.close(f"the node {node_id.hex()[:12]} that leased this worker "
                                     f"was declared dead")
        self.runtime.direct.abort_where(lambda spec: spec.lease is not None and
                                spec.lease.node_id == node_id)

    def objects_lost_with(self, node_id: bytes) -> None:
        """A node died: rebuild the objects we own that lived only there by running their
        task again (lineage), or mark them lost."""
        rerun: dict[bytes, TaskSpec] = {}
        lost = pickle.dumps(ObjectLostError(
            f"the node {node_id.hex()[:12]} holding this object died, and the object cannot "
            f"be rebuilt (it was made by put, or its task has no retries left)"))
        with self.runtime.refs.lock:
            entries = [e for e in self.runtime.refs.entries.values()
                       if e.owned and e.state == READY and e.inline is None
                       and e.node_id == node_id]
        for entry in entries:
            spec = self.lineage.get(entry.task_id) if entry.task_id else None
            if spec is not None and spec.retries_left != 0:
                rerun[spec.task_id] = spec
                continue
            with self.runtime.refs.lock:
                entry.state, entry.inline, entry.node_id = FAILED, lost, None
        for spec in rerun.values():
            self.lineage.pop(spec.task_id, None)
            spec.retries_left -= 1
            spec.attempt += 1
            with self.runtime.refs.lock:
                for entry in spec.entries:
                    entry.state, entry.inline, entry.node_id = PENDING, None, None
                    entry.task_pins += 1
            logger.info("rebuilding the returns of %s lost with node %s", spec.name,
                        node_id.hex()[:12])
            spec.route = ROUTE_LOOP  # even if it first ran directly: nobody waits on it here
            self.submit_on_loop(spec)

    def forget_lineage(self, task_id: bytes) -> None:
        spec = self.lineage.get(task_id)
        if spec is None:
            return
        entries = self.runtime.refs.entries
        if not any(entries.get(e.object_id) is e for e in spec.entries):
            del self.lineage[task_id]
            spec.held_refs = None

    def _node_holding_args(self, queue: SchedulingQueue) -> bytes | None:
        """The id of the node holding most of the next task's store arguments, when it is not
        ours (run the task where its data is)."""
        if not queue.tasks or len(self.runtime.nodes) < 2:
            return None
        counts: dict[bytes, int] = {}
        for arg in queue.tasks[0].args:
            if arg[0] == P.VALUE_REF:
                entry = self.runtime.refs.get(arg[1])
                if entry is not None and entry.inline is None and entry.node_id is not None:
                    counts[entry.node_id] = counts.get(entry.node_id, 0) + 1
        if not counts:
            return None
        best = max(counts, key=counts.get)
        known = self.runtime.nodes.get(best)
        if best == self.runtime.node_id or known is None or not known[1]:
            return None
        return best

    def forget_group(self, pg_id: bytes) -> None:
        """The placement group is being removed: hand back its idle leases now (the node would
        otherwise kill their workers with the group) and drop its empty queues."""
        for key, queue in list(self.queues.items()):
            if queue.placement is None or queue.placement[0] != pg_id:
                continue
            for lease in list(queue.leases):
                with self.runtime.direct.lock:
                    if lease.in_flight or lease.direct_busy:
                        continue
                    lease.returned = True
                if lease.idle_timer is not None:
                    lease.idle_timer.cancel()
                    lease.idle_timer = None
                queue.leases.remove(lease)
                if not lease.node_conn.closed:
                    lease.node_conn.send(P.encode(P.ReturnLease(lease.lease_id, False)))
            if not queue.tasks and not queue.leases and not queue.requests_pending:
                del self.queues[key]

    def fail_queued(self, queue: SchedulingQueue) -> None:
        """The node is gone: no lease will come for the tasks still waiting for one."""
        error = pickle.dumps(self.runtime._node_lost_error())
        while queue.tasks:
            self.runtime._finish(queue.tasks.popleft(), error=error)

    # ------------------------------------------------------------------ cancel
    def owns(self, task_id: bytes) -> bool:
        """The task is queued or running here (not finished)."""
        return task_id in self.running or any(
            spec.task_id == task_id for queue in self.queues.values() for spec in queue.tasks)

    def cancel(self, task_id: bytes, force: bool, recursive: bool, error: bytes) -> bool:
        """Cancel a queued or running task of ours; False if it is neither (an actor call)."""
        for queue in self.queues.values():
            for spec in queue.tasks:
                if spec.task_id == task_id:
                    queue.tasks.remove(spec)
                    spec.cancelled = True
                    self.runtime._finish(spec, error=error)
                    return True
        spec = self.running.get(task_id)
        if spec is None or spec.lease is None:
            return False
        spec.cancelled = True
        spec.retries_left = 0
        # The worker's runtime takes the message even while the task runs (worker.py): it
        # cancels the task's children first, then interrupts it (or, force, kills itself).
        # With force the node kills the worker too, a little later, should it be wedged.
        message = P.CancelTask(task_id, force, spec.lease.worker_id, recursive)
        self.runtime.send_to_peer(spec.lease.control_address, message)
        if force:
            self.runtime.loop.call_later(FORCE_KILL_BACKSTOP_S, self.runtime.node_conn.try_send,
                                         P.encode(message))
        return True


def retry_on_error(spec: TaskSpec, done: P.TaskDone) -> bool:
    """A task failed with an error its options say to run it again for."""
    return done.error is not None and done.retryable and spec.retries_left != 0 \
        and not spec.cancelled and _should_retry(spec.retry_exceptions, done.error)


def _should_retry(retry_exceptions, error_blob: bytes) -> bool:
    """retry_exceptions is a bool, or (as in Ray) a list of the exception classes to retry."""
    if not isinstance(retry_exceptions, (list, tuple)):
        return bool(retry_exceptions)
    try:
        error = pickle.loads(error_blob)
    except Exception:
        return False
    return isinstance(error, tuple(retry_exceptions))

