"""Cluster membership: which nodes exist, what they have free, and which have died.

The head keeps the table. Every other node joins it (`JoinCluster`) and then sends a `Heartbeat`
with its free resources, and the view version it holds, every HEARTBEAT_S. The head answers a
join with the whole table (`ViewSnapshot`) and then, each beat, sends each member only the rows
changed since the version that member acknowledged (`ViewDelta`, cluster_view.py): members in
step share one encoding, and a beat where nothing changed sends nothing. A member that gets a
delta it cannot apply (a gap) asks for the whole table (`PullView`). With the table each node
can place work elsewhere (spillback) and find the nodes that hold objects.

The other nodes' load (free resources, store figures, counts) changes with every actor and task
and matters to a member only when it sends work elsewhere, so only members that say so in their
heartbeat (`wants_load`, set for LOAD_INTEREST_S after a node last considered spilling) are sent
load changes; the others get a row only when its membership (address, totals, alive) changes. A
burst of actors on N nodes thus costs the head N HostActor, not N deltas of N rows.

A node is declared dead when its connection to the head closes or when it has sent no heartbeat
for NODE_TIMEOUT_S: so a node that dies is known dead within NODE_TIMEOUT_S (3 s) at worst, and
at once when its process exits (the OS closes its connection).

A dead node's row stays in the table (and in the views the head sends) for DEAD_NODE_KEEP_S, so
`pyactor status` shows what died; then the head drops it, and members drop it with the next
delta. Dead is final: a node that loses the head (declared dead while stopped or cut off, or the
head itself died) stops, killing its workers; started again, it joins as a new node with a new id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.cluster_view import Delta, HeadView, MemberView, Snapshot

logger = logging.getLogger("pyactor.cluster")

HEARTBEAT_S = 0.5
NODE_TIMEOUT_S = 3.0
DEAD_NODE_KEEP_S = 300.0  # PYACTOR_DEAD_NODE_KEEP_S on the head overrides it
LOAD_INTEREST_S = 30.0  # a member follows the other nodes' load this long after wanting it


def seconds_from_env(name: str, default: float, minimum: float, strict: bool = False) -> float:
    """A number of seconds from the environment variable `name` (>= minimum, or > it when
    strict), else `default`; a clear ValueError for anything else."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if not (seconds > minimum if strict else seconds >= minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return seconds


def node_timeout_s() -> float:
    """PYACTOR_NODE_TIMEOUT_S on the head overrides NODE_TIMEOUT_S (a loaded host, a simulator
    whose thousands of nodes share one process); more than one heartbeat interval."""
    return seconds_from_env("PYACTOR_NODE_TIMEOUT_S", NODE_TIMEOUT_S, HEARTBEAT_S, strict=True)


def dead_node_keep_s() -> float:
    return seconds_from_env("PYACTOR_DEAD_NODE_KEEP_S", DEAD_NODE_KEEP_S, 0.0)


def view_deltas_enabled() -> bool:
    """PYACTOR_VIEW_DELTAS=0 on the head makes it send every member the whole view each beat,
    packed for each (how the head worked before deltas): a baseline for bench/cluster_sim.py."""
    return os.environ.get("PYACTOR_VIEW_DELTAS", "1") != "0"


@dataclass
class NodeInfo:
    node_id: bytes
    address: list  # [host, port] of the node daemon
    total: dict
    available: dict
    alive: bool = True
    is_head: bool = False
    store: dict = field(default_factory=dict)  # store stats, for `pyactor status`
    actors: int = 0
    workers: int = 0
    metrics_url: str = ""  # its Prometheus endpoint, or why it has none ("" when not asked)
    conn: Any = None  # head side: the member's connection
    last_heartbeat: float = 0.0
    died_at: float = 0.0  # head side: when it was declared dead (monotonic)
    view_acked: int = 0  # head side: the view version its last heartbeat said it holds
    view_sent: int = 0  # head side: the version last sent to it
    wants_load: bool = False  # head side: its heartbeat asks for the other nodes' load

    def wire(self) -> list:
        return [self.node_id, self.address, self.total, self.available, self.alive,
                self.is_head, self.store, self.actors, self.workers, self.metrics_url]

    @classmethod
    def from_wire(cls, fields: list) -> "NodeInfo":
        node_id, address, total, available, alive, is_head, store, actors, workers, metrics = fields
        return cls(node_id, address, total, available, alive, is_head, store, actors, workers,
                   metrics)


def membership_part(row: list) -> tuple:
    """The fields of a wire row that every member is sent at once when they change: address,
    totals, alive, is_head, metrics URL (the rest is load: see the module docstring)."""
    return row[1], row[2], row[4], row[5], row[9]


class Membership:
    """One per node. On the head it owns the table; elsewhere it mirrors the head's table.

    `local_status()` is called each beat for this node's current row; `on_node_dead(node_id)`
    and `on_view_changed()` tell the node what changed.
    """

    def __init__(self, node_id: bytes, address: list, token: bytes, *, head_address: str | None,
                 local_status: Callable[[], NodeInfo], on_message: Callable,
                 on_node_dead: Callable[[bytes], None], on_view_changed: Callable[[], None],
                 on_head_lost: Callable[[str], None] = lambda reason: None):
        self.node_id = node_id
        self.address = address
        self.token = token
        self.is_head = head_address is None
        self.head_address = head_address
        self.nodes: dict[bytes, NodeInfo] = {}
        self.head_conn: transport.Connection | None = None
        self.head_node_id: bytes = node_id if self.is_head else b""
        self._local_status = local_status
        self._on_message = on_message
        self._on_node_dead = on_node_dead
        self._on_view_changed = on_view_changed
        self._on_head_lost = on_head_lost
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.dead_keep_s = dead_node_keep_s() if self.is_head else DEAD_NODE_KEEP_S
        # the head's versioned table
        self.view = HeadView(membership_of=membership_part) if self.is_head else None
        self.deltas = view_deltas_enabled()
        self.node_timeout_s = node_timeout_s() if self.is_head else NODE_TIMEOUT_S
        self.mirror = MemberView()  # a member's copy of it
        self._pulling = False  # a member asked for a snapshot and waits for it
        self._load_wanted_until = 0.0  # a member: follow the others' load until then
        self._broadcast_scheduled = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        me = self._local_status()
        self.nodes[self.node_id] = me
        if self.is_head:
            self.view.upsert(self.node_id, me.wire())
        else:
            host, _, port = self.head_address.rpartition(":")
            self.head_conn = await transport.connect(host, int(port), self.token,
                                                     self._on_message,
                                                     on_close=self._head_lost)
            self.head_conn.send(P.encode(P.JoinCluster(me.wire())))
        self._task = asyncio.get_running_loop().create_task(self._beat())

    def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        if self.head_conn is not None:
            self.head_conn.close("node stopping")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                self._one_beat()
            except Exception:  # noqa: BLE001 - the beat must go on
                logger.exception("heartbeat failed")

    def _one_beat(self) -> None:
        me = self._local_status()
        if self.is_head:
            me.last_heartbeat = time.monotonic()
            self.nodes[self.node_id] = me
            self.view.upsert(self.node_id, me.wire())
            now = time.monotonic()
            for info in list(self.nodes.values()):
                if info.alive and not info.is_head and \
                        now - info.last_heartbeat > self.node_timeout_s:
                    self._declare_dead(info, f"no heartbeat for {self.node_timeout_s} s")
            self.forget_dead(now)
            self._broadcast()
        elif self.head_conn is not None and not self.head_conn.closed:
            self.head_conn.send(P.encode(P.Heartbeat(me.wire(), self.mirror.version,
                                                     self.wants_load())))

    # ------------------------------------------------------------------ head side
    def on_join(self, conn, message: P.JoinCluster) -> None:
        info = NodeInfo.from_wire(message.node)
        info.conn = conn
        info.alive = True
        info.is_head = False
        info.last_heartbeat = time.monotonic()
        self.nodes[info.node_id] = info
        conn.user_data = info
        self.view.upsert(info.node_id, info.wire())
        logger.info("node %s joined from %s", info.node_id.hex()[:12], info.address)
        self._send_snapshot(info)  # the others hear of it with the next beat's delta

    def on_heartbeat(self, conn, message: P.Heartbeat) -> bool:
        """Record a member's heartbeat; True if its figures changed (the common idle beat
        changes nothing, and costs no more than this comparison)."""
        node_id, _, _, available, _, _, store, actors, workers = message.node[:9]
        info = self.nodes.get(node_id)
        if info is None or not info.alive:
            conn.close("heartbeat from a node declared dead: it must join again")
            return False
        info.last_heartbeat = time.monotonic()
        # Never backwards: a heartbeat sent before the join's snapshot arrived says 0.
        info.view_acked = max(info.view_acked, message.view_version)
        wants_load = bool(message.wants_load)
        if wants_load != info.wants_load:
            info.wants_load = wants_load
            if wants_load:  # its load figures are as old as its last snapshot: a fresh one
                self._send_snapshot(info)
        if available == info.available and store == info.store and actors == info.actors \
                and workers == info.workers:
            return False
        info.available, info.store, info.actors, info.workers = available, store, actors, workers
        self.view.upsert(node_id, info.wire())
        return True

    def on_pull(self, conn, message: P.PullView) -> None:
        info = conn.user_data if isinstance(conn.user_data, NodeInfo) else None
        if info is not None and info.alive:
            self._send_snapshot(info)

    def on_member_closed(self, conn) -> None:
        info = conn.user_data if isinstance(conn.user_data, NodeInfo) else None
        if info is not None and info.alive:
            self._declare_dead(info, "its connection to the head closed")
            self._broadcast_soon()  # deaths in the same loop turn share one broadcast

    def forget_dead(self, now: float) -> list[bytes]:
        """Drop the rows of nodes dead for longer than dead_keep_s; returns their ids."""
        gone = [info.node_id for info in self.nodes.values()
                if not info.alive and now - info.died_at >= self.dead_keep_s]
        for node_id in gone:
            del self.nodes[node_id]
            if self.view is not None:
                self.view.remove(node_id)
        return gone

    def _declare_dead(self, info: NodeInfo, reason: str) -> None:
        info.alive = False
        info.died_at = time.monotonic()
        info.available = {}
        self.view.upsert(info.node_id, info.wire())
        logger.warning("node %s at %s is dead: %s", info.node_id.hex()[:12], info.address,
                       reason)
        if info.conn is not None:
            info.conn.close(f"declared dead: {reason}")
        self._on_node_dead(info.node_id)

    def _send_snapshot(self, info: NodeInfo) -> None:
        snapshot = self.view.snapshot()
        if info.conn is not None and info.conn.try_send(P.encode(P.ViewSnapshot(*snapshot))):
            # The connection delivers in order or closes: count it as held from now on, so
            # the next delta does not resend the table (a later heartbeat corrects the count).
            info.view_sent = info.view_acked = snapshot.version

    def _broadcast_soon(self) -> None:
        if not self._broadcast_scheduled:
            self._broadcast_scheduled = True
            asyncio.get_running_loop().call_soon(self._broadcast)

    def _broadcast(self) -> None:
        """Send each member what changed since the version it acknowledged, encoding each
        distinct delta once; members already sent the current version get nothing."""
        self._broadcast_scheduled = False
        if self._stopping:
            return
        view = self.view
        if not self.deltas:
            self._broadcast_whole()
            return
        encoded: dict[tuple, bytes] = {}  # (base, with load) -> packed ViewDelta (or Snapshot)
        oldest_acked = view.version
        for info in self.nodes.values():
            conn = info.conn
            if not info.alive or conn is None or conn.closed:
                continue
            oldest_acked = min(oldest_acked, info.view_acked)
            if info.view_sent >= (view.version if info.wants_load else view.member_version):
                continue  # it has (or is getting) all it follows of the current version
            # The connection delivers in order or closes, so the member will hold what it was
            # last sent before this arrives: count from there, not from its (older)
            # acknowledgement, or every row goes out twice while heartbeats catch up. A member
            # that lost a delta all the same (a gap) pulls the whole view.
            base = max(info.view_sent, info.view_acked)
            key = (base, info.wants_load)
            body = encoded.get(key)
            if body is None:
                delta = view.delta(base, with_load=info.wants_load)
                message = P.ViewDelta(*delta) if delta is not None else \
                    P.ViewSnapshot(*view.snapshot())
                body = encoded[key] = msgpack.packb(P.encode(message), use_bin_type=True)
            conn.send_packed(body)
            info.view_sent = view.version
        view.forget_tombstones(oldest_acked)
        self._on_view_changed()

    def _broadcast_whole(self) -> None:
        snapshot = self.view.snapshot()
        for info in self.nodes.values():
            if info.alive and info.conn is not None and not info.conn.closed:
                info.conn.send(P.encode(P.ViewSnapshot(*snapshot)))
        self._on_view_changed()

    # ------------------------------------------------------------------ member side
    def want_load(self) -> None:
        """This member is about to place work by the other nodes' load: follow it for the next
        LOAD_INTEREST_S (from its next heartbeat; until then its figures may be old)."""
        self._load_wanted_until = time.monotonic() + LOAD_INTEREST_S

    def wants_load(self) -> bool:
        return time.monotonic() < self._load_wanted_until

    def on_delta(self, conn, message: P.ViewDelta) -> None:
        changes = self.mirror.apply_delta(Delta(*message))
        if changes is None:  # a gap: what it holds is too old for this delta
            if not self._pulling and self.head_conn is not None:
                self._pulling = True
                self.head_conn.try_send(P.encode(P.PullView(self.mirror.version)))
            return
        self._apply(changes)

    def on_snapshot(self, conn, message: P.ViewSnapshot) -> None:
        self._pulling = False
        self._apply(self.mirror.apply_snapshot(Snapshot(*message)))

    def _apply(self, changes: list) -> None:
        """Mirror the view's changed rows in the node table; tell the node who died."""
        newly_dead = []
        for node_id, row in changes:
            if node_id == self.node_id:
                continue  # this node's own row is always fresh here
            old = self.nodes.get(node_id)
            if row is None:  # the head forgot it: long dead
                self.nodes.pop(node_id, None)
                if old is not None and old.alive:
                    newly_dead.append(node_id)
                continue
            info = NodeInfo.from_wire(row)
            if old is not None and old.alive and not info.alive:
                newly_dead.append(node_id)
            if info.is_head:
                self.head_node_id = node_id
            self.nodes[node_id] = info
        for node_id in newly_dead:
            self._on_node_dead(node_id)
        if changes:
            self._on_view_changed()

    def _head_lost(self, conn, reason) -> None:
        if self._stopping:
            return
        logger.error("lost the connection to the head (%s): stopping this node", reason)
        for info in self.nodes.values():
            if info.node_id != self.node_id and info.alive:
                info.alive = False
                self._on_node_dead(info.node_id)
        self._on_view_changed()
        self._on_head_lost(str(reason))

    # ------------------------------------------------------------------ queries
    def all_nodes(self) -> list[NodeInfo]:
        """Every node known, dead ones included, with this node's row fresh."""
        self.nodes[self.node_id] = self._local_status()
        return list(self.nodes.values())

    def alive_nodes(self) -> list[NodeInfo]:
        return [info for info in self.all_nodes() if info.alive]

    def address_of(self, node_id: bytes) -> list | None:
        info = self.nodes.get(node_id)
        return info.address if info is not None and info.alive else None

    def wire_view(self) -> list:
        return [info.wire() for info in self.all_nodes()]
