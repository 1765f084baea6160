"""The caller's side of actors: where each actor lives, and its calls in order.

A caller keeps, per actor, a queue of calls not yet sent and the calls in flight. Calls go out in
the order they were made, over one connection to the actor's process, so the actor runs them in
that order. A call whose ref arguments are not ready holds back the ones behind it (ordering wins
over eagerness, as in Ray).

When the connection drops the actor's process died: calls in flight are retried on the restarted
actor while `max_task_retries` allows, else they fail with ActorDiedError; the caller asks the node
(WaitActor) for the next incarnation's address, or learns that the actor is dead for good.
"""

from __future__ import annotations

import logging
import pickle
from collections import deque

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.direct import ROUTE_DIRECT, ROUTE_LOOP
from pyactor._private.task_spec import TaskSpec
from pyactor.exceptions import ActorDiedError, TaskCancelledError

logger = logging.getLogger("pyactor.actors")


class ActorView:
    __slots__ = ("actor_id", "state", "address", "conn", "incarnation", "death_cause", "queue",
                 "in_flight", "max_task_retries", "asking", "sequence", "blocked", "node_id",
                 "end_when_idle", "control_address", "submitted", "accepted", "claimed",
                 "direct_spec", "kills_pending", "max_restarts", "awaiting_cause")

    def __init__(self, actor_id: bytes, max_task_retries: int):
        self.actor_id = actor_id
        self.state = "unknown"
        self.address = None
        self.conn = None
        self.incarnation = -1
        self.death_cause = ""
        self.queue: deque[TaskSpec] = deque()
        self.in_flight: dict[bytes, TaskSpec] = {}
        self.max_task_retries = max_task_retries
        self.max_restarts: int | None = None  # from the actor's spec, once the node answered
        self.asking = False
        self.sequence = 0
        self.blocked = False  # the head of the queue waits for its arguments
        self.node_id = None  # the node hosting the incarnation we talk to
        self.end_when_idle = False  # no handle is left: end the actor after these calls
        self.control_address = None  # its worker's runtime: CancelTask goes there
        # For the direct path (direct.py), under its lock: calls made by user threads, those
        # the IO thread took and those waiting threads took (so submitted - accepted - claimed
        # calls are on their way to the IO thread), and the direct call in flight, if any.
        self.submitted = 0
        self.accepted = 0
        self.claimed = 0
        self.direct_spec: TaskSpec | None = None
        self.kills_pending = 0  # pa.kill() returned; the IO thread has not dropped the process
        # Calls lost with a process that is not restarted for them: failed once the node says
        # why the actor died (a kill, its placement group, its node), so the error names it.
        self.awaiting_cause: list[TaskSpec] = []


class ActorSubmitter:
    def __init__(self, runtime):
        self.runtime = runtime
        self.actors: dict[bytes, ActorView] = {}
        self.by_task: dict[bytes, ActorView] = {}

    def view(self, actor_id: bytes, max_task_retries: int = 0) -> ActorView:
        view = self.actors.get(actor_id)
        if view is None:
            with self.runtime.direct.lock:  # user threads make views too (count_submitted)
                view = self.actors.get(actor_id)
                if view is None:
                    view = self.actors[actor_id] = ActorView(actor_id, max_task_retries)
        return view

    def count_submitted(self, spec: TaskSpec, max_task_retries: int) -> None:
        """A user thread made a call (before handing it to the IO thread)."""
        view = self.view(spec.actor, max_task_retries)
        with self.runtime.direct.lock:
            view.submitted += 1

    # ------------------------------------------------------------------ calls (IO thread)
    def submit(self, spec: TaskSpec) -> None:
        view = self.actors.get(spec.actor) or self.view(spec.actor)  # (a call less per call)
        with self.runtime.direct.lock:
            if spec.route == ROUTE_DIRECT:  # a waiting thread sends it itself
                return
            spec.route = ROUTE_LOOP
            view.accepted += 1
            view.queue.append(spec)
        self.by_task[spec.task_id] = view
        self._flush(view)

    def _flush(self, view: ActorView) -> None:
        if view.state == "dead":
            self._fail_all(view)
            return
        if view.state != "alive" or view.conn is None:
            self._ask_node(view)
            return
        if view.direct_spec is not None:
            return  # calls wait behind the one sent directly; it flushes them when answered
        runtime = self.runtime
        while view.queue and not view.blocked:
            spec = view.queue[0]
            if spec.has_ref_args:  # (checked here: most calls have none, and skip two calls)
                if not runtime._resolve_dependencies(spec, lambda _s, v=view: self._unblock(v)):
                    view.blocked = True
                    return
                if spec.cancelled:
                    view.queue.popleft()
                    continue
                resolved = runtime.resolve_args(spec)
                if resolved is None:  # an argument failed: the call fails with its error
                    view.queue.popleft()
                    self.by_task.pop(spec.task_id, None)
                    continue
                args, kwargs = resolved
            elif spec.cancelled:
                view.queue.popleft()
                continue
            else:
                args, kwargs = spec.args, spec.kwargs
            view.sequence += 1
            # In flight before it leaves the queue: a claim (direct.py) never sees both empty
            # while a call is on its way.
            view.in_flight[spec.task_id] = spec
            view.queue.popleft()
            try:
                view.conn.send(P.encode(P.ActorCall(spec.task_id, view.actor_id, spec.method,
                                                    args, kwargs, spec.num_returns,
                                                    runtime.address, view.sequence)))
            except transport.ConnectionClosedError:
                # Closed, and its on_close did not reach this view (peer() and _lost make
                # that unexpected): the call never left, so it goes back first in line.
                logger.warning("actor %s: its connection closed unnoticed; reconnecting",
                               view.actor_id.hex())
                del view.in_flight[spec.task_id]
                view.queue.appendleft(spec)
                view.sequence -= 1
                self._lost(view)
                return

    def _unblock(self, view: ActorView) -> None:
        view.blocked = False
        self._flush(view)

    def _ask_node(self, view: ActorView) -> None:
        if view.asking:
            return
        if self.runtime.closed or self.runtime.node_conn is None:
            self._fail_lost_calls(view, None)
            return
        view.asking = True

        async def ask():
            try:
                state = await self.runtime._request(self.runtime.node_conn, P.WaitActor,
                                                    view.actor_id, view.incarnation)
                (actor_id, status, address, incarnation, cause, spec_blob, node_id,
                 control_address) = state
            except Exception as error:
                status, address, incarnation, cause = "dead", None, view.incarnation, (
                    f"the node could not be asked about the actor: {error}")
                node_id = control_address = None
            view.asking = False
            if status == "dead":
                view.state = "dead"
                view.death_cause = cause
                self._fail_lost_calls(view, cause)
                self._fail_all(view)
                return
            self._fail_lost_calls(view, None)  # restarted: the calls lost were not retried
            try:
                conn = await self.runtime.peer(address)
            except Exception as error:
                logger.debug("actor %s unreachable at %s: %s", view.actor_id.hex(), address,
                             error)
                view.incarnation = incarnation
                self._ask_node(view)
                return
            view.state = "alive"
            view.address = address
            view.conn = conn
            view.incarnation = incarnation
            if view.max_restarts is None:
                view.max_restarts = _max_restarts_of(spec_blob)
            view.node_id = node_id
            view.control_address = control_address
            self._flush(view)
        self.runtime.loop.create_task(ask())

    def on_task_done(self, conn, message: P.TaskDone) -> bool:
        view = self.by_task.pop(message.task_id, None)
        if view is None:
            return False
        spec = view.in_flight.pop(message.task_id, None)
        if spec is None:
            return False
        self.runtime.finish_answered(spec, message)
        if view.end_when_idle and not view.queue and not view.in_flight and \
                view.direct_spec is None:
            self._end(view.actor_id)
        return True

    def on_connection_closed(self, conn) -> None:
        for view in list(self.actors.values()):  # user threads add views (count_submitted)
            if view.conn is conn:
                self._lost(view)

    def note_killed(self, actor_id: bytes) -> None:
        """The killing thread, as pa.kill() returns: no call may be sent directly to the dead
        process before on_killed (queued for the IO thread) has dropped it."""
        view = self.view(actor_id)
        with self.runtime.direct.lock:
            view.kills_pending += 1

    def on_killed(self, actor_id: bytes, killed_incarnation=None) -> None:
        """pa.kill() from this process returned: the process is gone, even if its connection
        has not closed yet. Calls made after kill() must not go out on that connection.
        `killed_incarnation` (the head's answer): the view may already talk to the restarted
        process (its old connection closed and the node named the next incarnation before this
        ran); that connection is kept, or the view would wait for an incarnation after it that
        never comes."""
        view = self.actors.get(actor_id)
        if view is not None and view.conn is not None and not (
                type(killed_incarnation) is int and view.incarnation > killed_incarnation):
            self._lost(view)
        if view is not None:
            with self.runtime.direct.lock:
                view.kills_pending -= 1

    def _lost(self, view: ActorView) -> None:
        """The actor's process died: retry or fail the calls in flight, ask for the next one."""
        view.conn = None
        view.state = "unknown"
        lost = list(view.in_flight.values())
        view.in_flight.clear()
        self._retry_or_fail(view, lost)
        self._ask_node(view)

    def _retry_or_fail(self, view: ActorView, lost: list[TaskSpec]) -> None:
        """Calls that were running when the actor's process died: first in line again while
        max_task_retries allows, else ActorDiedError."""
        retry = []
        for spec in lost:
            if spec.retries_left != 0 and not spec.cancelled:
                spec.retries_left -= 1
                retry.append(spec)
            elif spec.cancelled:
                self.by_task.pop(spec.task_id, None)
                error = TaskCancelledError("actor task was cancelled")
                self.runtime._finish(spec, error=pickle.dumps(error))
            elif view.state == "dead":
                self.by_task.pop(spec.task_id, None)
                self.runtime._finish(spec, error=pickle.dumps(
                    ActorDiedError(_lost_call_cause(view, spec.method, view.death_cause))))
            else:  # the node's answer to _ask_node says why the process died
                self.by_task.pop(spec.task_id, None)
                view.awaiting_cause.append(spec)
        view.queue.extendleft(reversed(retry))
        if view.awaiting_cause and view.state != "alive":
            self._ask_node(view)
        elif view.awaiting_cause:  # already talking to the next incarnation
            self._fail_lost_calls(view, None)

    def _fail_lost_calls(self, view: ActorView, cause: str | None) -> None:
        lost, view.awaiting_cause = view.awaiting_cause, []
        for spec in lost:
            self.runtime._finish(spec, error=pickle.dumps(
                ActorDiedError(_lost_call_cause(view, spec.method, cause))))

    # ------------------------------------------------------------------ the direct path
    def direct_call_lost(self, spec: TaskSpec, incarnation: int | None) -> None:
        """A call sent directly lost its connection after it went out: the process died (or
        will be found dead). It is settled as a call in flight on the ordinary path is, ahead
        of the calls held behind it."""
        view = self.by_task.get(spec.task_id) or self.view(spec.actor)
        self.by_task[spec.task_id] = view
        self._end_direct_call(view)
        if view.incarnation == incarnation and view.conn is not None and not view.conn.closed:
            # The process's other connection closes too, soon: _lost then settles this call
            # with the others in flight.
            view.in_flight[spec.task_id] = spec
        else:
            self._retry_or_fail(view, [spec])
        self.after_direct_call(view)

    def direct_call_unsent(self, spec: TaskSpec) -> None:
        """A waiting thread could not reach the actor to send a call it took: send it here,
        first in line, before the calls held behind it."""
        view = self.by_task.get(spec.task_id) or self.view(spec.actor)
        self.by_task[spec.task_id] = view
        self._end_direct_call(view)
        view.queue.appendleft(spec)
        self.after_direct_call(view)

    def _end_direct_call(self, view: ActorView) -> None:
        with self.runtime.direct.lock:
            view.direct_spec = None

    def after_direct_call(self, view: ActorView) -> None:
        """A direct call was answered while calls queued behind it, or no handle is left."""
        self._flush(view)
        if view.end_when_idle and not view.queue and not view.in_flight and \
                view.direct_spec is None:
            self._end(view.actor_id)

    def _fail_all(self, view: ActorView) -> None:
        error = pickle.dumps(ActorDiedError(
            f"the actor {view.actor_id.hex()} is dead: {view.death_cause or 'it was killed'}"))
        for spec in list(view.in_flight.values()) + list(view.queue):
            self.by_task.pop(spec.task_id, None)
            self.runtime._finish(spec, error=error)
        view.in_flight.clear()
        view.queue.clear()

    def cancel(self, task_id: bytes, force: bool) -> None:
        view = self.by_task.get(task_id)
        if view is None:
            return
        for spec in view.queue:
            if spec.task_id == task_id:
                spec.cancelled = True
                view.queue.remove(spec)
                self.by_task.pop(task_id, None)
                self.runtime._finish(spec, error=pickle.dumps(
                    TaskCancelledError("actor task was cancelled before it ran")))
                return
        spec = view.in_flight.get(task_id)
        if spec is None and view.direct_spec is not None and view.direct_spec.task_id == task_id:
            spec = view.direct_spec
        if spec is not None and view.conn is not None:
            spec.cancelled = True
            # To the worker's runtime: the call's own connection is not read while it runs.
            self.runtime.send_to_peer(view.control_address, P.CancelTask(task_id, False, b"", False))

    def drop_blocked(self, spec: TaskSpec) -> None:
        """A call waiting for its arguments was cancelled (and finished by the runtime): it no
        longer holds back the calls queued behind it."""
        view = self.by_task.pop(spec.task_id, None)
        if view is None:
            return
        if spec in view.queue:
            view.queue.remove(spec)
        view.blocked = False
        self._flush(view)

    def on_node_dead(self, node_id: bytes) -> None:
        """The head declared a node dead (it may still run, e.g. stopped): stop talking to the
        actors it hosted, so their calls fail over (retry on the next incarnation, or
        ActorDiedError) instead of waiting on a connection nobody answers."""
        doomed = set()
        for view in list(self.actors.values()):
            if view.node_id == node_id and view.conn is not None:
                doomed.add(view.actor_id)
                view.conn.close(f"the node {node_id.hex()[:12]} hosting this actor was declared "
                                f"dead")
        if doomed:
            self.runtime.direct.abort_where(lambda spec: spec.actor in doomed)

    def release_actor(self, actor_id: bytes) -> None:
        """No handle to this actor is left anywhere: end it once our calls to it are done."""
        view = self.actors.get(actor_id)
        if view is not None:
            with self.runtime.direct.lock:  # a direct call ending now sees the flag
                busy = bool(view.queue or view.in_flight or view.direct_spec)
                view.end_when_idle = busy
            if busy:
                return
        self._end(actor_id)

    def _end(self, actor_id: bytes) -> None:
        self.actors.pop(actor_id, None)
        self.runtime.actors_created.pop(actor_id, None)
        node = self.runtime.node_conn
        if node is not None and not node.closed:
            node.send(P.encode(P.KillActor(0, actor_id, True)))  # 0: nobody waits for the reply


def _max_restarts_of(spec_blob: bytes) -> int | None:
    """The actor's max_restarts, from the creation spec the node sends with its state."""
    try:
        return int(pickle.loads(spec_blob)["options"]["max_restarts"])
    except Exception:  # noqa: BLE001 - an actor made elsewhere, an older spec: unknown
        return None


def _lost_call_cause(view: ActorView, method: str, cause: str | None = None) -> str:
    """Why a call that was sent to an actor whose process died fails (it is not retried):
    the node's cause when the actor is dead for good, else whether it had restarts left (the
    incarnation that died tells: incarnation n is the actor after n - 1 restarts)."""
    name = f"the actor {view.actor_id.hex()} died before {method} finished"
    if cause:
        return f"{name}, and it will not be restarted: {cause}"
    restarts = view.incarnation - 1
    if view.max_restarts is not None and view.max_restarts != -1 and \
            restarts >= view.max_restarts:
        return (f"{name}, and it will not be restarted: it was restarted {restarts} time(s) "
                f"already (max_restarts={view.max_restarts})")
    return f"{name}; the call was not retried (max_task_retries={view.max_task_retries})"
