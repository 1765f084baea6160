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
