"""Where the head places an actor: a pure decision over its own ledger of the nodes.

A node's heartbeat says what it has free, but only every HEARTBEAT_S; the head places many actors
in between. So the head keeps, per node, what it has granted there that no heartbeat reflects yet
(`reserved`), and places against `available - reserved`:

    place_actor(demand, [NodeLedger...], turn) -> ActorPlacement: PLACE(node) | HOLD | INFEASIBLE

  - PLACE on the node whose resources asked for would be least used afterwards (so a burst fills
    nodes evenly), then the one hosting fewest actors per CPU, then round-robin from `turn`, so
    ties spread instead of all going to the lowest node id;
  - HOLD when some alive node could take it once things free, but none can now: the head keeps
    it and tries again at the next heartbeat (never queued on a node that cannot take it);
  - INFEASIBLE when no alive node's totals fit it.

An actor that asks for nothing (num_cpus=0) is placed as if it held one CPU's share: on the node
with the fewest actors per CPU; it still runs with 0, and never waits.
No I/O, no clock: the actor directory feeds it and acts on the answer.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from pyactor._private.resources import CPU, SCALE, ResourceSet


@dataclass(frozen=True)
class NodeLedger:
    """The head's view of one alive node, for placement."""

    node_id: bytes
    total: ResourceSet
    available: ResourceSet  # from its last heartbeat
    reserved: ResourceSet = ResourceSet()  # granted by the head since, not in a heartbeat yet
    actors: int = 0  # actors the head has placed there and not seen die

    def free(self) -> dict[str, int]:
        """Units free for new placements (available minus reserved; may be below zero)."""
        free = self.available.units_dict()
        for name, units in self.reserved.units:
            free[name] = free.get(name, 0) - units
        return free


class ActorPlacement(enum.Enum):
    PLACE = "place"
    HOLD = "hold"
    INFEASIBLE = "infeasible"


@dataclass(frozen=True)
class ActorDecision:
    outcome: ActorPlacement
    node_id: bytes | None = None
    reason: str = ""


def fits_now(demand: ResourceSet, node: NodeLedger) -> bool:
    free = node.free()
    return all(units <= free.get(name, 0) for name, units in demand.units)


def place_actor(demand: ResourceSet, nodes: Sequence[NodeLedger], turn: int = 0) -> ActorDecision:
    feasible = [n for n in nodes if demand.fits_in(n.total)]
    if not feasible:
        totals = {n.node_id.hex()[:12]: n.total.to_dict() for n in nodes}
        return ActorDecision(ActorPlacement.INFEASIBLE, reason=(
            f"requested {demand.to_dict()} but no alive node can ever fit it; alive nodes' "
            f"totals: {totals}"))
    ready = [n for n in feasible if fits_now(demand, n)]
    if not ready:
        return ActorDecision(ActorPlacement.HOLD)
    count = len(nodes)
    position = {n.node_id: i for i, n in enumerate(nodes)}
    best = min(ready, key=lambda n: (_load_after(demand, n), _actors_per_cpu(n),
                                     (position[n.node_id] - turn) % count))
    return ActorDecision(ActorPlacement.PLACE, best.node_id)


def _load_after(demand: ResourceSet, node: NodeLedger) -> Fraction:
    """Highest used fraction, after placing, among the resources asked for (0 if none)."""
    free = node.free()
    loads = [Fraction(node.total.units_of(name) - free.get(name, 0) + units,
                      node.total.units_of(name))
             for name, units in demand.units if node.total.units_of(name) > 0]
    return max(loads, default=Fraction(0))


def _actors_per_cpu(node: NodeLedger) -> Fraction:
    return Fraction(node.actors * SCALE, max(node.total.units_of(CPU), SCALE))


class PlacementIndex:
    """place_actor's decision in O(log N) per actor, for the head at hundreds of nodes.

    It keeps each node's free units (heartbeat figure minus what the head reserved since) and,
    per demand shape, a heap of candidate nodes keyed as place_actor ranks them (least loaded
    after placing, then fewest actors per CPU), ties going to the node chosen longest ago (so
    equal nodes take turns, as place_actor's round-robin does). A change to a node (a
    heartbeat, a reservation, a death) bumps its version and is logged; a heap catches up on the
    log when next used, and skips entries whose version is old. So a burst between two
    heartbeats costs a heap pop and push per actor, not a pass over every node.
    """

    MAX_SHAPES = 32

    def __init__(self) -> None:
        self.nodes: dict[bytes, _IndexedNode] = {}
        self._log: list[bytes] = []  # node ids, in the order they changed
        self._heaps: dict[tuple, list] = {}  # shape -> heap of (key, version, node id)
        self._seen: dict[tuple, int] = {}  # shape -> how much of the log its heap has taken in
        self._chosen = 0  # the count of placements: a node's last one breaks ties

    # -- what the head tells it
    def set_node(self, node_id: bytes, total: ResourceSet, available: ResourceSet) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = _IndexedNode(node_id, total.units_dict())
        elif node.total != total.units_dict():
            node.total = total.units_dict()
        elif node.available == available.units_dict():
            return
        node.available = available.units_dict()
        self._changed(node)

    def remove_node(self, node_id: bytes) -> None:
        if self.nodes.pop(node_id, None) is not None:
            self._log.append(node_id)

    def reserve(self, node_id: bytes, demand: ResourceSet, sign: int = 1) -> None:
        """Count `demand` as granted on the node (sign=-1: no longer)."""
        node = self.nodes.get(node_id)
        if node is None:
            return
        for name, units in demand.units:
            node.reserved[name] = node.reserved.get(name, 0) + sign * units
        self._changed(node)

    def count_actor(self, node_id: bytes, delta: int) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.actors = max(0, node.actors + delta)
            self._changed(node)

    def ledger(self, node_id: bytes) -> NodeLedger | None:
        node = self.nodes.get(node_id)
        if node is None:
            return None
        return NodeLedger(node_id, ResourceSet.from_units(node.total),
                          ResourceSet.from_units(node.available),
                          ResourceSet.from_units({k: v for k, v in node.reserved.items() if v}),
                          node.actors)

    # -- the decision
    def place(self, demand: ResourceSet) -> ActorDecision:
        shape = demand.units
        heap = self._heap_for(shape)
        while heap:
            _, version, node_id = heapq.heappop(heap)
            node = self.nodes.get(node_id)
            if node is None or node.version != version or not node.fits(shape):
                continue
            self._chosen += 1
            node.last_chosen = self._chosen
            return ActorDecision(ActorPlacement.PLACE, node_id)
        if any(all(units <= node.total.get(name, 0) for name, units in shape)
               for node in self.nodes.values()):
            return ActorDecision(ActorPlacement.HOLD)
        totals = {n.node_id.hex()[:12]: ResourceSet.from_units(n.total).to_dict()
                  for n in self.nodes.values()}
        return ActorDecision(ActorPlacement.INFEASIBLE, reason=(
            f"requested {demand.to_dict()} but no alive node can ever fit it; alive nodes' "
            f"totals: {totals}"))

    def _heap_for(self, shape: tuple) -> list:
        if len(self._log) > 4 * len(self.nodes) + 1024 or (
                shape not in self._heaps and len(self._heaps) >= self.MAX_SHAPES):
            self._heaps.clear()  # rebuilt from the nodes on use: the log can start again
            self._seen.clear()
            self._log.clear()
        heap = self._heaps.get(shape)
        if heap is None:
            heap = self._heaps[shape] = [node.entry(shape) for node in self.nodes.values()
                                         if node.fits(shape)]
            heapq.heapify(heap)
        else:
            fresh = {node_id for node_id in self._log[self._seen[shape]:]}
            for node_id in fresh:
                node = self.nodes.get(node_id)
                if node is not None and node.fits(shape):
                    heapq.heappush(heap, node.entry(shape))
        self._seen[shape] = len(self._log)
        return heap

    def _changed(self, node: "_IndexedNode") -> None:
        node.version += 1
        self._log.append(node.node_id)


class _IndexedNode:
    __slots__ = ("node_id", "total", "available", "reserved", "actors", "version",
                 "last_chosen")

    def __init__(self, node_id: bytes, total: dict[str, int]):
        self.node_id, self.total = node_id, total
        self.available: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.actors = 0
        self.version = 0
        self.last_chosen = 0

    def free(self, name: str) -> int:
        return self.available.get(name, 0) - self.reserved.get(name, 0)

    def fits(self, shape: tuple) -> bool:
        return all(units <= self.free(name) for name, units in shape)

    def entry(self, shape: tuple) -> tuple:
        """Its heap entry: (rank, version, id); smaller ranks are placed first. The ratios are
        floats here (a Fraction each cost more than the rest of a placement): two different
        ratios of integer units below 10**7 differ by far more than a float's rounding, so
        floats order nodes exactly as place_actor's Fractions do."""
        load = max(((self.total[name] - self.free(name) + units) / self.total[name]
                    for name, units in shape if self.total.get(name, 0) > 0), default=0.0)
        per_cpu = self.actors * SCALE / max(self.total.get(CPU, 0), SCALE)
        return ((load, per_cpu, self.last_chosen, self.node_id), self.version, self.node_id)
