"""The cluster's actors: where each one lives, its name, its restarts. Kept by the head node.

Creating an actor records it here; the directory picks a node (ClusterScheduler) and asks that
node to *host* it (the node leases a worker and runs `__init__` there). The hosting node reports
back when the actor is up (`on_hosted`) or its process died (`on_process_died`); the directory
then restarts it, on any node, while `max_restarts` allows, else marks it dead. Callers wait for
an actor's next incarnation with WaitActor; they are answered from here.

    driver --CreateActor--> (its node --forward-->) head: ActorDirectory --HostActor--> node N
    node N --StartActor--> worker; worker --ActorReady--> node N --ActorHosted--> head
    caller --WaitActor--> head: answered once the actor is alive (address) or dead (cause)

Where an actor goes is actor_placement's decision over the directory's ledger (a
PlacementIndex, so a placement costs O(log N) at hundreds of nodes): the nodes' heartbeat
figures minus what the directory granted since (reserved from placement until a heartbeat sent
after the actor came up reflects it). The node tells the directory when a node's figures change
(`on_node_changed`, `on_heartbeat`) or it dies; without `node_view` (tests) the directory reads
every node from `nodes()` before each placement instead. An actor no node can take now waits here
(`held`) and is tried again at every beat; a node that finds it cannot take an actor after all
(ActorDeferred) sends it back here to be placed again.

The directory never does I/O itself: `host`, `kill_process` and `reply` are the node's.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Callable

from pyactor._private import protocol as P
from pyactor._private.actor_placement import ActorPlacement, PlacementIndex
from pyactor._private.resources import ResourceSet
from pyactor._private.scheduler import NodeView

logger = logging.getLogger("pyactor.actors")

WAIT = b"wait"  # _place's answer for an actor whose placement group is not placed yet
HOLD = b"hold"  # _place's answer for an actor no node can take now: the directory keeps it


@dataclass
class ActorRecord:
    actor_id: bytes
    spec: bytes
    demand: dict
    name: str
    namespace: str
    detached: bool
    owner: tuple  # address of the runtime that created it
    max_restarts: int
    state: str = "pending"  # pending -> alive -> restarting -> alive ... -> dead
    address: list | None = None
    node_id: bytes | None = None  # the node hosting it (or asked to)
    control_address: list | None = None  # its worker's runtime (cancellation)
    incarnation: int = 0
    restarts: int = 0
    death_cause: str = ""
    no_restart: bool = False
    waiters: list = field(default_factory=list)
    placement: tuple | None = None  # (pg_id, bundle index) when scheduled into a group
    created_at: float = field(default_factory=time.time)  # for the state API (state.py)
    started_at: float = 0.0  # its latest incarnation's __init__ finished
    ended_at: float = 0.0  # it died for good

    def view(self) -> list:
        return list(P.ActorState(self.actor_id, self.state, self.address, self.incarnation,
                                 self.death_cause, self.spec, self.node_id,
                                 self.control_address))


class ActorDirectory:
    def __init__(self, *, nodes: Callable[[], list[NodeView]],
                 host: Callable[[bytes, ActorRecord], None],
                 kill_process: Callable[[bytes, bytes], None],
                 reply: Callable[..., None], local_node_id: bytes = b"",
                 node_view: Callable[[bytes], NodeView | None] | None = None):
        self.actors: dict[bytes, ActorRecord] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self._nodes = nodes  # snapshots of alive nodes, node_id as hex
        self._node_view = node_view  # one alive node's snapshot (None if dead or unknown)
        self._host = host  # (node_id, record): ask that node to start the actor
        self._kill_process = kill_process  # (node_id, actor_id)
        self._reply = reply  # (conn, request_id, value=None, error=None)
        self._local_node_id = local_node_id  # the head's own row is always fresh
        self.groups = None  # the head's PlacementGroupTable, set by the node
        # The placement ledger (see the module docstring).
        self._reserved: dict[bytes, dict[bytes, ResourceSet]] = {}  # node -> actor -> demand
        self._settling: dict[bytes, set[bytes]] = {}  # node -> actors up, reserved until a beat
        self._index = PlacementIndex()  # free units (heartbeat - reserved) and actors per node
        self._on_node: dict[bytes, set[bytes]] = {}  # node -> actors placed there, not dead
        self.held: dict[bytes, None] = {}  # actors waiting for room, oldest first
        # conn -> actors it waits on (WaitActor): a closing connection (at scale, a node's)
        # touches only those, not every actor.
        self._waiting: dict = {}

    # ------------------------------------------------------------------ requests
    def create(self, conn, message: P.CreateActor) -> None:
        key = (message.namespace, message.name)
        if message.name:
            existing = self.actors.get(self.named.get(key, b""))
            if existing is not None and existing.state != "dead":
                if message.get_if_exists:
                    self._reply(conn, message.request_id, existing.view())
                else:
                    self._reply(conn, message.request_id, error=[
                        "ValueError", f"an actor named {message.name!r} already exists in "
                                      f"namespace {message.namespace!r}; use get_actor() or "
                                      f"get_if_exists=True"])
                return
        options = pickle.loads(message.spec).get("options", {})
        actor = ActorRecord(message.actor_id, message.spec, message.demand, message.name,
                            message.namespace, message.detached, tuple(message.owner),
                            options.get("max_restarts", 0))
        placement = options.get("placement_group")
        actor.placement = tuple(placement) if placement else None
        node_id, reason = self._place(actor)
        if node_id is None:
            self._reply(conn, message.request_id, error=["InfeasibleResourcesError",
                                                         f"actor {reason}"])
            return
        self.actors[actor.actor_id] = actor
        if message.name:
            self.named[key] = actor.actor_id
        self._reply(conn, message.request_id, actor.view())
        self._start(actor, node_id)

    def get(self, conn, message: P.GetActor) -> None:
        actor = self.actors.get(self.named.get((message.namespace, message.name), b""))
        if actor is None or actor.state == "dead":
            self._reply(conn, message.request_id, error=[
                "ValueError", f"no actor named {message.name!r} in namespace "
                              f"{message.namespace!r}"])
            return
        self._reply(conn, message.request_id, actor.view())

    def wait(self, conn, message: P.WaitActor) -> None:
        actor = self.actors.get(message.actor_id)
        if actor is None:
            self._reply(conn, message.request_id, list(P.ActorState(
                message.actor_id, "dead", None, 0, "no such actor on this cluster", b"", None,
                None)))
            return
        if actor.state == "dead" or (actor.state == "alive" and
                                     actor.incarnation > message.known_incarnation):
            self._reply(conn, message.request_id, actor.view())
        else:
            actor.waiters.append((conn, message.request_id, message.known_incarnation))
            self._waiting.setdefault(conn, set()).add(actor.actor_id)

    def kill(self, conn, message: P.KillActor) -> None:
        actor = self.actors.get(message.actor_id)
        killed = 0  # the incarnation killed (0: none), so the caller keeps a newer one it knows
        if actor is not None:
            killed = actor.incarnation
            self._kill(actor, "it was killed with pyactor.kill()", message.no_restart)
        self._reply(conn, message.request_id, killed)

    # ------------------------------------------------------------------ reports from nodes
    def on_hosted(self, actor_id: bytes, address: list | None, error: str | None,
                  control_address: list | None = None) -> None:
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "dead":
            return
        if error is not None:
            actor.death_cause = f"its __init__ raised:\n{error}"
            actor.no_restart = True
            self._set_dead(actor)
            return
        actor.state = "alive"
        actor.started_at = time.time()
        actor.address = address
        actor.control_address = control_address
        actor.incarnation += 1
        self._settle(actor)
        self._notify(actor)

    def on_deferred(self, actor_id: bytes, restarts: int) -> None:
        """Its node could not take it now: place it again (not a restart)."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state in ("dead", "alive") or actor.restarts != restarts or \
                actor.node_id is None:
            return
        self._unassign(actor)
        self._start_later(actor)

    def on_heartbeat(self, node_id: bytes, changed: bool = True) -> None:
        """A heartbeat from `node_id` counts the actors that came up there before it; `changed`:
        its figures differ from the last ones."""
        for actor_id in self._settling.pop(node_id, ()):
            self._unreserve(node_id, actor_id)
        if changed:
            self.on_node_changed(node_id)

    def on_node_changed(self, node_id: bytes) -> None:
        """A node joined or its figures changed: read them again."""
        if self._node_view is None:
            return
        view = self._node_view(node_id)
        if view is None:
            self._index.remove_node(node_id)
        else:
            self._index.set_node(node_id, view.total, view.available)

    def retry_held(self) -> None:
        """Each beat: place the actors that waited for room, oldest first."""
        if self._local_node_id:
            self.on_node_changed(self._local_node_id)  # the head's row has no heartbeat
        still_full: set[tuple] = set()  # demands held again in this pass: skip their like
        for actor_id in list(self.held):
            actor = self.actors.get(actor_id)
            shape = tuple(sorted(actor.demand.items())) if actor is not None else ()
            if shape in still_full:
                continue
            del self.held[actor_id]
            if actor is not None and actor.state != "dead" and actor.node_id is None:
                self._start_later(actor)
                if actor_id in self.held:
                    still_full.add(shape)

    def on_process_died(self, actor_id: bytes, cause: str = "") -> None:
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "dead":
            return
        actor.address = None
        self._unassign(actor)
        can_restart = not actor.no_restart and (actor.max_restarts == -1 or
                                                actor.restarts < actor.max_restarts)
        if can_restart:
            node_id, reason = self._place(actor)
            if node_id is not None:
                actor.restarts += 1
                actor.state = "restarting"
                self._start(actor, node_id)
                return
            cause = f"it could not be restarted: {reason}"
        if not actor.death_cause:
            actor.death_cause = (cause or "its process died unexpectedly") + (
                f" (restarted {actor.restarts} times, max_restarts={actor.max_restarts})"
                if actor.restarts else "")
        self._set_dead(actor)

    def on_node_dead(self, node_id: bytes) -> None:
        self._index.remove_node(node_id)  # before the restarts: none goes back there
        for actor_id in list(self._on_node.get(node_id, ())):
            actor = self.actors.get(actor_id)
            if actor is None or actor.node_id != node_id or actor.state == "dead":
                continue
            if actor.state in ("pending", "restarting"):
                # It never came up there (e.g. restarted onto a node that died in the same
                # burst): place it again, as for ActorDeferred; that is not another restart.
                self._unassign(actor)
                self._start_later(actor)
            else:
                self.on_process_died(actor_id, f"its node {node_id.hex()[:12]} died")
        self._reserved.pop(node_id, None)
        self._settling.pop(node_id, None)
        self._on_node.pop(node_id, None)

    def on_owner_exited(self, owner: tuple) -> None:
        """A driver is gone: its actors go too, except detached ones (like Ray)."""
        for actor in list(self.actors.values()):
            if actor.owner == owner and not actor.detached and actor.state != "dead":
                self._kill(actor, "its owner (driver) exited", no_restart=True)

    def on_group_removed(self, pg_id: bytes) -> None:
        """A placement group was removed: its actors die with it (no restart), as in Ray."""
        for actor in list(self.actors.values()):
            if actor.placement is not None and actor.placement[0] == pg_id and \
                    actor.state != "dead":
                self._kill(actor, "its placement group was removed", no_restart=True)

    def on_requester_closed(self, conn) -> None:
        for actor_id in self._waiting.pop(conn, ()):
            actor = self.actors.get(actor_id)
            if actor is not None:
                actor.waiters = [w for w in actor.waiters if w[0] is not conn]

    # ------------------------------------------------------------------ internals
    def _place(self, actor: ActorRecord) -> tuple[bytes | None, str]:
        """(node id, "") to start it on; (WAIT, "") when its group is not placed yet; (None,
        why) when it cannot run."""
        if actor.placement is not None:
            return self._place_in_group(actor)
        if self._node_view is None:
            self._read_all_nodes()
        elif self._local_node_id:
            self.on_node_changed(self._local_node_id)  # its row changes without heartbeats
        decision = self._index.place(ResourceSet.from_dict(actor.demand))
        if decision.outcome is ActorPlacement.INFEASIBLE:
            return None, decision.reason
        if decision.outcome is ActorPlacement.HOLD:
            return HOLD, ""
        return decision.node_id, ""

    def _read_all_nodes(self) -> None:
        views = {bytes.fromhex(view.node_id): view for view in self._nodes()}
        for node_id in [n for n in self._index.nodes if n not in views]:
            self._index.remove_node(node_id)
        for node_id in sorted(views):
            self._index.set_node(node_id, views[node_id].total, views[node_id].available)

    def _place_in_group(self, actor: ActorRecord) -> tuple[bytes | None, str]:
        pg_id, index = actor.placement
        group = self.groups.get(pg_id) if self.groups is not None else None
        if group is None or group.state == "REMOVED":
            return None, f"its placement group {pg_id.hex()} was removed (or never existed)"
        if index >= len(group.bundles):
            return None, (f"bundle index {index} is out of range: the placement group has "
                          f"{len(group.bundles)} bundles")
        outcome, value = self.groups.node_for(group, index, ResourceSet.from_dict(actor.demand))
        if outcome == "ok":
            return value, ""
        if outcome == "wait":
            return WAIT, ""
        return None, value[1]

    def _start(self, actor: ActorRecord, node_id: bytes) -> None:
        if node_id == HOLD:  # no node has room now: tried again at each beat
            actor.node_id = None
            self.held[actor.actor_id] = None
            return
        if node_id == WAIT:  # host it once its bundle is reserved
            actor.node_id = None
            if not self.groups.when_placed(actor.placement[0], lambda: self._start_later(actor)):
                self._start_later(actor)
            return
        actor.node_id = node_id
        self._on_node.setdefault(node_id, set()).add(actor.actor_id)
        self._index.count_actor(node_id, +1)
        if actor.placement is None:  # work in a group is counted against its bundle
            demand = ResourceSet.from_dict(actor.demand)
            self._reserved.setdefault(node_id, {})[actor.actor_id] = demand
            self._index.reserve(node_id, demand)
        self._host(node_id, actor)

    def _unassign(self, actor: ActorRecord) -> None:
        node_id, actor.node_id = actor.node_id, None
        if node_id is None:
            return
        placed = self._on_node.get(node_id)
        if placed is not None and actor.actor_id in placed:
            placed.discard(actor.actor_id)
            self._index.count_actor(node_id, -1)
        self._unreserve(node_id, actor.actor_id)
        settling = self._settling.get(node_id)
        if settling is not None:
            settling.discard(actor.actor_id)

    def _unreserve(self, node_id: bytes, actor_id: bytes) -> None:
        reserved = self._reserved.get(node_id)
        demand = reserved.pop(actor_id, None) if reserved is not None else None
        if demand is None:
            return
        self._index.reserve(node_id, demand, -1)
        if not reserved:
            del self._reserved[node_id]

    def _settle(self, actor: ActorRecord) -> None:
        """The actor is up: its node's next heartbeat counts it (the head's own row already
        does)."""
        node_id = actor.node_id
        if node_id is None or actor.actor_id not in self._reserved.get(node_id, {}):
            return
        if node_id == self._local_node_id:
            self._unreserve(node_id, actor.actor_id)
        else:
            self._settling.setdefault(node_id, set()).add(actor.actor_id)

    def _start_later(self, actor: ActorRecord) -> None:
        if actor.state == "dead" or actor.node_id is not None:
            return
        node_id, reason = self._place(actor)
        if node_id is None:
            actor.death_cause = f"it could not be started: {reason}"
            self._set_dead(actor)
            return
        self._start(actor, node_id)

    def _kill(self, actor: ActorRecord, cause: str, no_restart: bool) -> None:
        if no_restart:
            actor.no_restart = True
            actor.death_cause = cause
            # The name is free as soon as kill() returns, not once the process is reaped.
            if self.named.get((actor.namespace, actor.name)) == actor.actor_id:
                del self.named[(actor.namespace, actor.name)]
        if actor.node_id is not None:
            self._kill_process(actor.node_id, actor.actor_id)  # reports on_process_died
        elif no_restart:
            self._set_dead(actor)

    def _set_dead(self, actor: ActorRecord) -> None:
        actor.state = "dead"
        actor.ended_at = time.time()
        self.held.pop(actor.actor_id, None)
        self._unassign(actor)
        if self.named.get((actor.namespace, actor.name)) == actor.actor_id:
            del self.named[(actor.namespace, actor.name)]
        self._notify(actor)

    def _notify(self, actor: ActorRecord) -> None:
        waiters, actor.waiters = actor.waiters, []
        for conn, request_id, known in waiters:
            if actor.state == "dead" or actor.incarnation > known:
                self._reply(conn, request_id, actor.view())
            else:
                actor.waiters.append((conn, request_id, known))
        still_waiting = {id(w[0]) for w in actor.waiters}
        for conn, _, _ in waiters:
            if id(conn) not in still_waiting:
                waiting = self._waiting.get(conn)
                if waiting is not None:
                    waiting.discard(actor.actor_id)
                    if not waiting:
                        del self._waiting[conn]

    def alive_count(self, node_id: bytes | None = None) -> int:
        return sum(1 for a in self.actors.values()
                   if a.state != "dead" and (node_id is None or a.node_id == node_id))
