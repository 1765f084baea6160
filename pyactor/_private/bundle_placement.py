"""Where a placement group's bundles go: pure decisions, no I/O (the scheduler module's style).

The head's placement-group table (placement_groups.py) calls `place_bundles` with the bundles
still to place, the alive nodes' free resources, and the nodes already holding the group's other
bundles (after a node died, only its bundles are placed again). It answers a node id per bundle,
or None with the reason, and whether the group could fit at all if the nodes were empty
(`place_bundles(..., use_totals=True)`): a group that never fits is refused at creation.

Strategies (Ray's):
  PACK           as few nodes as possible; several nodes when one is too small
  SPREAD         each bundle on the node holding the fewest of the group's bundles; shared if needed
  STRICT_PACK    all bundles on one node, or not placed
  STRICT_SPREAD  every bundle on a different node, or not placed

Each bundle's resources are taken from the node's free resources as it is placed, so no node is
ever given more than it has. The strict strategies search exhaustively (a backtracking search
over nodes, largest bundles first), so they find a placement whenever one exists; groups are a
handful of bundles, so this is cheap. The non-strict ones are greedy and never fail while each
bundle fits somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from pyactor._private.resources import ResourceSet

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class NodeCapacity:
    """What placement knows of a node: its id, and the resources bundles may take there."""

    node_id: str
    free: ResourceSet


@dataclass(frozen=True)
class BundlePlacement:
    nodes: tuple[str, ...] | None  # node id per bundle to place, in order; None: not now
    reason: str = ""


def place_bundles(bundles: Sequence[ResourceSet], strategy: str,
                  nodes: Sequence[NodeCapacity],
                  placed: Mapping[int, str] | None = None) -> BundlePlacement:
    """Nodes for the bundles whose index is not in `placed` (index -> node id of the group's
    bundles that stay where they are). The answer lists nodes for the unplaced ones, in index
    order."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    placed = dict(placed or {})
    todo = [i for i in range(len(bundles)) if i not in placed]
    # A private copy: the greedy strategies take each bundle from it as they place it.
    free = {n.node_id: n.free.units_dict() for n in sorted(nodes, key=lambda n: n.node_id)}
    if strategy == "STRICT_PACK":
        choice = _strict_pack(bundles, todo, free, placed)
    elif strategy == "STRICT_SPREAD":
        choice = _strict_spread(bundles, todo, free, placed)
    elif strategy == "PACK":
        choice = _greedy(bundles, todo, free, placed, spread=False)
    else:
        choice = _greedy(bundles, todo, free, placed, spread=True)
    if choice is None:
        shown = {node_id: ResourceSet.from_units(units).to_dict()
                 for node_id, units in free.items()}
        return BundlePlacement(None, f"{strategy} cannot place bundles "
                                     f"{[bundles[i].to_dict() for i in todo]} on the nodes' "
                                     f"resources {shown}")
    return BundlePlacement(tuple(choice[i] for i in todo))


def _fits(demand: ResourceSet, units: dict) -> bool:
    return all(amount <= units.get(name, 0) for name, amount in demand.units)


def _take(demand: ResourceSet, units: dict) -> None:
    for name, amount in demand.units:
        units[name] = units.get(name, 0) - amount


def _strict_pack(bundles, todo, free, placed) -> dict[int, str] | None:
    homes = set(placed.values())
    if len(homes) > 1:
        return None
    total = ResourceSet()
    for i in todo:
        total = total + bundles[i]
    candidates = list(homes) if homes else list(free)
    for node_id in candidates:
        if node_id in free and _fits(total, free[node_id]):
            return {i: node_id for i in todo}
    return None


def _strict_spread(bundles, todo, free, placed) -> dict[int, str] | None:
    used = set(placed.values())
    order = sorted(todo, key=lambda i: -sum(u for _, u in bundles[i].units))
    choice: dict[int, str] = {}

    def search(k: int) -> bool:
        if k == len(order):
            return True
        index = order[k]
        for node_id, units in free.items():
            if node_id in used or not _fits(bundles[index], units):
                continue
            used.add(node_id)
            choice[index] = node_id
            if search(k + 1):
                return True
            used.discard(node_id)
            del choice[index]
        return False
    return choice if search(0) else None


def _greedy(bundles, todo, free, placed, spread: bool) -> dict[int, str] | None:
    count: dict[str, int] = {node_id: 0 for node_id in free}
    for node_id in placed.values():
        if node_id in count:
            count[node_id] += 1
    if not spread:  # PACK: the whole rest on one node when one can hold it
        whole = _strict_pack(bundles, todo, free, {})
        preferred = [n for n, c in count.items() if c]  # next to the bundles that stay
        if preferred:
            total = ResourceSet()
            for i in todo:
                total = total + bundles[i]
            home = next((n for n in preferred if _fits(total, free[n])), None)
            if home is not None:
                whole = {i: home for i in todo}
        if whole is not None:
            return whole
    choice: dict[int, str] = {}
    for index in todo:
        fitting = [n for n, units in free.items() if _fits(bundles[index], units)]
        if not fitting:
            return None
        if spread:
            node_id = min(fitting, key=lambda n: (count[n], n))
        else:  # fill the nodes already used first, the fullest-used first
            node_id = min(fitting, key=lambda n: (-count[n], n))
        _take(bundles[index], free[node_id])
        count[node_id] += 1
        choice[index] = node_id
    return choice
