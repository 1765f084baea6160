"""The cluster's actors: where each one lives, its name, its restarts. Kept by the head node.

Creating an actor records it here; the directory picks a node (ClusterScheduler) and asks that
node to *host* it (the node leases a worker and runs `__init__` there). The hosting node reports
back when the actor is up (`on_hosted`) or its process died (`on_process_died`); the directory
then restarts it, on any node, while `max_restarts` allows, else marks it dead. Callers wait for
an actor's next incarnation with WaitActor; they are answered from here.

    driver --CreateActor--> (its node --forward-->) head: ActorDirectory --HostActor--> node N
    node N --StartActor--> worker; worker --ActorReady--> node N --ActorHosted--> head
    caller --WaitActor--> head: answered once the actor is alive (address) or dead (cause)

The directory never does I/O itself: `host`, `kill_process` and `reply` are the node's.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Callable

from pyactor._private import protocol as P
from pyactor._private.resources import ResourceSet
from pyactor._private.scheduler import ClusterScheduler, NodeView, Placement

logger = logging.getLogger("pyactor.actors")

WAIT = b"wait"  # _place's answer for an actor whose placement group is not placed yet


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

    def view(self) -> list:
        return list(P.ActorState(self.actor_id, self.state, self.address, self.incarnation,
                                 self.death_cause, self.spec, self.node_id,
                                 self.control_address))


class ActorDirectory:
    def __init__(self, *, nodes: Callable[[], list[NodeView]],
                 host: Callable[[bytes, ActorRecord], None],
                 kill_process: Callable[[bytes, bytes], None],
                 reply: Callable[..., None]):
        self.actors: dict[bytes, ActorRecord] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self._nodes = nodes  # snapshots of alive nodes, node_id as hex
        self._host = host  # (node_id, record): ask that node to start the actor
        self._kill_process = kill_process  # (node_id, actor_id)
        self._reply = reply  # (conn, request_id, value=None, error=None)
        self._placer = ClusterScheduler()
        self.groups = None  # the head's PlacementGroupTable, set by the node

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

    def kill(self, conn, message: P.KillActor) -> None:
        actor = self.actors.get(message.actor_id)
        if actor is not None:
            self._kill(actor, "it was killed with pyactor.kill()", message.no_restart)
        self._reply(conn, message.request_id, True)

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
        actor.address = address
        actor.control_address = control_address
        actor.incarnation += 1
        self._notify(actor)

    def on_process_died(self, actor_id: bytes, cause: str = "") -> None:
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "dead":
            return
        actor.address = None
        actor.node_id = None
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
        for actor in list(self.actors.values()):
            if actor.node_id == node_id and actor.state != "dead":
                self.on_process_died(actor.actor_id, f"its node {node_id.hex()[:12]} died")

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
        for actor in self.actors.values():
            actor.waiters = [w for w in actor.waiters if w[0] is not conn]

    # ------------------------------------------------------------------ internals
    def _place(self, actor: ActorRecord) -> tuple[bytes | None, str]:
        """(node id, "") to start it on; (WAIT, "") when its group is not placed yet; (None,
        why) when it cannot run."""
        if actor.placement is not None:
            return self._place_in_group(actor)
        decision = self._placer.pick_node_for_actor(ResourceSet.from_dict(actor.demand),
                                                    self._nodes())
        if decision.placement is Placement.INFEASIBLE:
            return None, decision.reason
        return bytes.fromhex(decision.node_id), ""

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
        if node_id == WAIT:  # host it once its bundle is reserved
            actor.node_id = None
            if not self.groups.when_placed(actor.placement[0], lambda: self._start_later(actor)):
                self._start_later(actor)
            return
        actor.node_id = node_id
        self._host(node_id, actor)

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

    def alive_count(self, node_id: bytes | None = None) -> int:
        return sum(1 for a in self.actors.values()
                   if a.state != "dead" and (node_id is None or a.node_id == node_id))
