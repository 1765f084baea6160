"""Cluster membership: which nodes exist, what they have free, and which have died.

The head keeps the table. Every other node joins it (`JoinCluster`) and then sends a `Heartbeat`
with its free resources every HEARTBEAT_S; the head sends the whole table (`ClusterView`) back to
every node at the same pace, so each node can place work elsewhere (spillback) and find the nodes
that hold objects. A node is declared dead when its connection to the head closes or when it has
sent no heartbeat for NODE_TIMEOUT_S: so a node that dies is known dead within NODE_TIMEOUT_S
(3 s) at worst, and at once when its process exits (the OS closes its connection).

A dead node's row stays in the table (and in the views the head sends) for DEAD_NODE_KEEP_S, so
`pyactor status` shows what died; then the head drops it, and members drop rows the head's view
no longer has. Dead is final: a node that loses the head (declared dead while stopped or cut off, or the head
itself died) stops, killing its workers; started again, it joins as a new node with a new id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyactor._private import protocol as P
from pyactor._private import transport

logger = logging.getLogger("pyactor.cluster")

HEARTBEAT_S = 0.5
NODE_TIMEOUT_S = 3.0
DEAD_NODE_KEEP_S = 300.0  # PYACTOR_DEAD_NODE_KEEP_S on the head overrides it


def dead_node_keep_s() -> float:
    value = os.environ.get("PYACTOR_DEAD_NODE_KEEP_S")
    if value is None:
        return DEAD_NODE_KEEP_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"PYACTOR_DEAD_NODE_KEEP_S must be a number of seconds, got "
                         f"{value!r}") from None
    if not seconds >= 0:
        raise ValueError(f"PYACTOR_DEAD_NODE_KEEP_S must be >= 0, got {value!r}")
    return seconds


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

    def wire(self) -> list:
        return [self.node_id, self.address, self.total, self.available, self.alive,
                self.is_head, self.store, self.actors, self.workers, self.metrics_url]

    @classmethod
    def from_wire(cls, fields: list) -> "NodeInfo":
        node_id, address, total, available, alive, is_head, store, actors, workers, metrics = fields
        return cls(node_id, address, total, available, alive, is_head, store, actors, workers,
                   metrics)


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

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        me = self._local_status()
        self.nodes[self.node_id] = me
        if not self.is_head:
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
            now = time.monotonic()
            for info in list(self.nodes.values()):
                if info.alive and not info.is_head and now - info.last_heartbeat > NODE_TIMEOUT_S:
                    self._declare_dead(info, f"no heartbeat for {NODE_TIMEOUT_S} s")
            self.forget_dead(now)
            self._broadcast()
        elif self.head_conn is not None and not self.head_conn.closed:
            self.head_conn.send(P.encode(P.Heartbeat(me.wire())))

    # ------------------------------------------------------------------ head side
    def on_join(self, conn, message: P.JoinCluster) -> None:
        info = NodeInfo.from_wire(message.node)
        info.conn = conn
        info.alive = True
        info.is_head = False
        info.last_heartbeat = time.monotonic()
        self.nodes[info.node_id] = info
        conn.user_data = info
        logger.info("node %s joined from %s", info.node_id.hex()[:12], info.address)
        self._broadcast()

    def on_heartbeat(self, conn, message: P.Heartbeat) -> None:
        update = NodeInfo.from_wire(message.node)
        info = self.nodes.get(update.node_id)
        if info is None or not info.alive:
            conn.close("heartbeat from a node declared dead: it must join again")
            return
        info.available, info.store = update.available, update.store
        info.actors, info.workers = update.actors, update.workers
        info.last_heartbeat = time.monotonic()

    def on_member_closed(self, conn) -> None:
        info = conn.user_data if isinstance(conn.user_data, NodeInfo) else None
        if info is not None and info.alive:
            self._declare_dead(info, "its connection to the head closed")
            self._broadcast()

    def forget_dead(self, now: float) -> list[bytes]:
        """Drop the rows of nodes dead for longer than dead_keep_s; returns their ids."""
        gone = [info.node_id for info in self.nodes.values()
                if not info.alive and now - info.died_at >= self.dead_keep_s]
        for node_id in gone:
            del self.nodes[node_id]
        return gone

    def _declare_dead(self, info: NodeInfo, reason: str) -> None:
        info.alive = False
        info.died_at = time.monotonic()
        info.available = {}
        logger.warning("node %s at %s is dead: %s", info.node_id.hex()[:12], info.address,
                       reason)
        if info.conn is not None:
            info.conn.close(f"declared dead: {reason}")
        self._on_node_dead(info.node_id)

    def _broadcast(self) -> None:
        view = P.encode(P.ClusterView([info.wire() for info in self.nodes.values()]))
        for info in self.nodes.values():
            if info.alive and info.conn is not None and not info.conn.closed:
                info.conn.send(view)
        self._on_view_changed()

    # ------------------------------------------------------------------ member side
    def on_view(self, conn, message: P.ClusterView) -> None:
        newly_dead = []
        listed = {fields[0] for fields in message.nodes}
        for node_id in [n for n in self.nodes if n not in listed and n != self.node_id]:
            old = self.nodes.pop(node_id)  # the head forgot it: long dead (or never told us)
            if old.alive:
                newly_dead.append(node_id)
        for fields in message.nodes:
            info = NodeInfo.from_wire(fields)
            old = self.nodes.get(info.node_id)
            if old is not None and old.alive and not info.alive:
                newly_dead.append(info.node_id)
            if info.is_head:
                self.head_node_id = info.node_id
            if info.node_id != self.node_id:
                self.nodes[info.node_id] = info
        for node_id in newly_dead:
            self._on_node_dead(node_id)
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
