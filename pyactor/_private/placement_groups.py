"""The cluster's placement groups: where each bundle is reserved. Kept by the head node.

A bundle is reserved on a node by leasing its resources there for good; the node then offers
them under the group's own resource names (as Ray does), so work scheduled into the group asks
for those names and the node's ordinary LocalScheduler counts it against the bundle, never
against the node's free pool a second time:

    bundle i of group G = {"CPU": 2}  reserves CPU: 2 on its node, which then offers
        CPU_group_i_G: 2, CPU_group_G: 2 (summed over G's bundles there),
        bundle_group_i_G: 1000, bundle_group_G: 1000 per bundle (so work asking for nothing
        still lands on a node of the group: it asks for 0.001 of these)

    driver --CreatePlacementGroup--> head: PlacementGroupTable --ReserveBundle--> node N
    node N --BundleReserved--> head;  owner --LocateBundle--> head: [node, address] once reserved
    owner --RequestLease(CPU_group_i_G: 1)--> node N (never spilled elsewhere)
    driver --RemovePlacementGroup--> head --ReturnBundles--> nodes: kill its work, free bundles

Where the bundles go is decided by bundle_placement.place_bundles (pure). A group that could not
fit even on the empty cluster is refused at creation (InfeasibleResourcesError); one that does not
fit now waits, and is tried again at each heartbeat and whenever a group is removed. A node's
death puts its bundles back to be placed (state RESCHEDULING); the group's other bundles stay.
Like the actor directory, this table does no I/O: `reserve`, `release` and `reply` are the
node's.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

from pyactor._private.bundle_placement import NodeCapacity, place_bundles
from pyactor._private.resources import SCALE, ResourceSet

logger = logging.getLogger("pyactor.placement_groups")

BUNDLE = "bundle"  # the per-bundle marker resource every piece of work in a group asks for
BUNDLE_MARKER_UNITS = 1000  # of BUNDLE per bundle; work asks for 0.001
BUNDLE_MARKER_DEMAND = 0.001


def group_resource(name: str, pg_hex: str, index: int = -1) -> str:
    """The name under which a bundle offers resource `name`: any bundle (-1) or bundle i."""
    return f"{name}_group_{pg_hex}" if index < 0 else f"{name}_group_{index}_{pg_hex}"


def bundle_offer(resources: ResourceSet, pg_hex: str, index: int) -> ResourceSet:
    """What a node offers once bundle `index` of the group is reserved there."""
    units: dict[str, int] = {}
    for name, amount in resources.units:
        units[group_resource(name, pg_hex, index)] = amount
        units[group_resource(name, pg_hex)] = amount
    units[group_resource(BUNDLE, pg_hex, index)] = BUNDLE_MARKER_UNITS * SCALE
    units[group_resource(BUNDLE, pg_hex)] = BUNDLE_MARKER_UNITS * SCALE
    return ResourceSet.from_units(units)


def is_group_work(demand: ResourceSet, pg_hex: str) -> bool:
    """Whether a lease's demand was scheduled into the group (it asks for a bundle marker)."""
    return any(name.startswith(BUNDLE + "_group_") and name.endswith(pg_hex)
               for name in demand.names)


def is_any_group_work(demand: ResourceSet) -> bool:
    """Whether a demand was scheduled into some group (it asks for a bundle marker)."""
    return any(name.startswith(BUNDLE + "_group_") for name in demand.names)


def demand_in_bundle(demand: dict, pg_hex: str, index: int) -> dict:
    """A task's or actor's demand rewritten to be served by the group's bundle(s)."""
    rewritten = {group_resource(name, pg_hex, index): amount for name, amount in demand.items()
                 if amount}
    rewritten[group_resource(BUNDLE, pg_hex, index)] = BUNDLE_MARKER_DEMAND
    return rewritten


@dataclass
class GroupRecord:
    pg_id: bytes
    bundles: list[ResourceSet]
    strategy: str
    name: str
    namespace: str
    detached: bool
    owner: tuple
    state: str = "PENDING"  # PENDING -> CREATED <-> RESCHEDULING; any -> REMOVED
    nodes: dict[int, bytes] = field(default_factory=dict)  # bundle -> node asked to reserve it
    reserved: set[int] = field(default_factory=set)  # bundles their node confirmed
    waiters: list = field(default_factory=list)  # (conn, request_id, index, demand)
    on_placed: list = field(default_factory=list)  # callbacks: actors waiting for the group
    turn: itertools.count = field(default_factory=itertools.count)  # round robin over nodes

    @property
    def hex(self) -> str:
        return self.pg_id.hex()

    def view(self) -> dict:
        """A row of placement_group_table(), as Ray shows it."""
        return {"placement_group_id": self.hex, "name": self.name, "namespace": self.namespace,
                "strategy": self.strategy, "state": self.state,
                "bundles": {i: b.to_dict() for i, b in enumerate(self.bundles)},
                "bundles_to_node_id": {i: self.nodes[i].hex() for i in sorted(self.reserved)},
                "is_detached": self.detached}


class PlacementGroupTable:
    def __init__(self, *, nodes: Callable[[], list], address_of: Callable[[bytes], list | None],
                 reserve: Callable[[bytes, bytes, int, dict], None],
                 release: Callable[[bytes, bytes], None], reply: Callable[..., None],
                 on_removed: Callable[[bytes], None]):
        self.groups: dict[bytes, GroupRecord] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self._nodes = nodes  # NodeViews of alive nodes (node_id as hex)
        self._address_of = address_of
        self._reserve = reserve  # (node_id, pg_id, index, resources): ask a node to reserve
        self._release = release  # (node_id, pg_id): the node kills the group's work, frees it
        self._reply = reply
        self._on_removed = on_removed  # (pg_id): the actor directory kills the group's actors

    # ------------------------------------------------------------------ requests
    def create(self, conn, message) -> None:
        key = (message.namespace, message.name)
        if message.name and self.named.get(key) in self.groups:
            self._reply(conn, message.request_id, error=[
                "ValueError", f"a placement group named {message.name!r} already exists in "
                              f"namespace {message.namespace!r}"])
            return
        bundles = [ResourceSet.from_dict(b) for b in message.bundles]
        totals = [NodeCapacity(n.node_id, n.total) for n in self._nodes()]
        never = place_bundles(bundles, message.strategy, totals)
        if never.nodes is None:
            self._reply(conn, message.request_id, error=[
                "InfeasibleResourcesError",
                f"placement group can never be created: {never.reason} (the alive nodes' "
                f"total resources, all free)"])
            return
        group = GroupRecord(message.pg_id, bundles, message.strategy, message.name,
                            message.namespace, message.detached, tuple(message.owner))
        self.groups[group.pg_id] = group
        if message.name:
            self.named[key] = group.pg_id
        self._reply(conn, message.request_id, True)
        self._try_place(group)

    def remove(self, conn, message) -> None:
        group = self.groups.get(message.pg_id)
        if group is not None:
            self._remove(group)
        self._reply(conn, message.request_id, True)

    def info(self, conn, message) -> None:
        if message.name:
            group = self.groups.get(self.named.get((message.namespace, message.name), b""))
            if group is None or group.state == "REMOVED":
                self._reply(conn, message.request_id, error=[
                    "ValueError", f"no placement group named {message.name!r} in namespace "
                                  f"{message.namespace!r}"])
                return
            self._reply(conn, message.request_id, [group.view(), [b.to_dict() for b in
                                                                  group.bundles]])
        elif message.pg_id:
            group = self.groups.get(message.pg_id)
            self._reply(conn, message.request_id, group.view() if group else None)
        else:
            self._reply(conn, message.request_id,
                        {g.hex: g.view() for g in self.groups.values()})

    def locate(self, conn, message) -> None:
        group = self.groups.get(message.pg_id)
        if group is None or group.state == "REMOVED":
            self._reply(conn, message.request_id, error=_removed_error(message.pg_id))
            return
        if message.index >= len(group.bundles):
            self._reply(conn, message.request_id, error=[
                "ValueError", f"bundle index {message.index} is out of range: the placement "
                              f"group has {len(group.bundles)} bundles"])
            return
        demand = ResourceSet.from_dict(message.demand)
        outcome, value = self.node_for(group, message.index, demand)
        if outcome == "ok":
            self._reply(conn, message.request_id, [value, self._address_of(value)])
        elif outcome == "wait":
            group.waiters.append((conn, message.request_id, message.index, demand))
        else:
            self._reply(conn, message.request_id, error=value)

    def node_for(self, group: GroupRecord, index: int, demand: ResourceSet):
        """("ok", node_id) where work asking `demand` of bundle `index` (-1: any) runs;
        ("wait", None) until that bundle is reserved; ("error", [class, message])."""
        if index >= 0:
            if index in group.reserved:
                return "ok", group.nodes[index]
            return "wait", None
        if group.state == "PENDING":
            return "wait", None
        offers: dict[bytes, ResourceSet] = {}
        for i in sorted(group.reserved):
            node_id = group.nodes[i]
            offers[node_id] = offers.get(node_id, ResourceSet()) + bundle_offer(
                group.bundles[i], group.hex, i)
        fitting = [node_id for node_id, offer in offers.items() if demand.fits_in(offer)]
        if fitting:
            return "ok", fitting[next(group.turn) % len(fitting)]
        if group.state == "RESCHEDULING":
            return "wait", None  # the bundle that fits may be the one being moved
        return "error", ["InfeasibleResourcesError",
                         f"requested {demand.to_dict()} but no bundle of placement group "
                         f"{group.hex} can hold it: bundles {[b.to_dict() for b in group.bundles]}"]

    def when_placed(self, pg_id: bytes, callback: Callable[[], None]) -> bool:
        """Call back (once) when the group's bundles change state; False if it is removed."""
        group = self.groups.get(pg_id)
        if group is None or group.state == "REMOVED":
            return False
        group.on_placed.append(callback)
        return True

    def get(self, pg_id: bytes) -> GroupRecord | None:
        return self.groups.get(pg_id)

    # ------------------------------------------------------------------ events
    def on_reserved(self, pg_id: bytes, index: int, node_id: bytes, error) -> None:
        group = self.groups.get(pg_id)
        if group is None or group.state == "REMOVED" or group.nodes.get(index) != node_id:
            if error is None:  # too late: the group went (or moved) meanwhile
                self._release(node_id, pg_id)
            return
        if error is not None:
            logger.warning("bundle %d of placement group %s refused by its node: %s", index,
                           group.hex, error)
            del group.nodes[index]
            return  # tried again at the next retry_pending
        group.reserved.add(index)
        if len(group.reserved) == len(group.bundles):
            group.state = "CREATED"
        self._wake(group)

    def on_node_dead(self, node_id: bytes) -> None:
        for group in self.groups.values():
            lost = [i for i, n in group.nodes.items() if n == node_id]
            if group.state == "REMOVED" or not lost:
                continue
            for i in lost:
                del group.nodes[i]
                group.reserved.discard(i)
            group.state = "RESCHEDULING" if group.state == "CREATED" or group.reserved \
                else "PENDING"
            logger.info("placement group %s: bundles %s lost with node %s, placing them again",
                        group.hex, lost, node_id.hex()[:12])
            self._try_place(group)

    def on_owner_exited(self, owner: tuple) -> None:
        """A driver is gone: its groups go too, except detached ones (like Ray's job end)."""
        for group in list(self.groups.values()):
            if group.owner == owner and not group.detached and group.state != "REMOVED":
                self._remove(group)

    def retry_pending(self) -> None:
        for group in list(self.groups.values()):
            if group.state in ("PENDING", "RESCHEDULING") and \
                    len(group.nodes) < len(group.bundles):
                self._try_place(group)

    # ------------------------------------------------------------------ internals
    def _try_place(self, group: GroupRecord) -> None:
        views = self._nodes()
        alive = {bytes.fromhex(n.node_id) for n in views}
        placed = {i: n.hex() for i, n in group.nodes.items() if n in alive}
        if len(placed) == len(group.bundles):
            return
        decision = place_bundles(group.bundles, group.strategy,
                                 [NodeCapacity(n.node_id, n.available) for n in views], placed)
        if decision.nodes is None:
            return
        todo = [i for i in range(len(group.bundles)) if i not in placed]
        for index, node_hex in zip(todo, decision.nodes):
            node_id = bytes.fromhex(node_hex)
            group.nodes[index] = node_id
            self._reserve(node_id, group.pg_id, index, group.bundles[index].to_dict())

    def _remove(self, group: GroupRecord) -> None:
        group.state = "REMOVED"
        if self.named.get((group.namespace, group.name)) == group.pg_id:
            del self.named[(group.namespace, group.name)]
        for node_id in set(group.nodes.values()):
            self._release(node_id, group.pg_id)
        group.nodes.clear()
        group.reserved.clear()
        self._wake(group)
        self._on_removed(group.pg_id)
        self.retry_pending()  # what it held may let a waiting group fit

    def _wake(self, group: GroupRecord) -> None:
        waiters, group.waiters = group.waiters, []
        for conn, request_id, index, demand in waiters:
            if group.state == "REMOVED":
                self._reply(conn, request_id, error=_removed_error(group.pg_id))
                continue
            outcome, value = self.node_for(group, index, demand)
            if outcome == "ok":
                self._reply(conn, request_id, [value, self._address_of(value)])
            elif outcome == "wait":
                group.waiters.append((conn, request_id, index, demand))
            else:
                self._reply(conn, request_id, error=value)
        callbacks, group.on_placed = group.on_placed, []
        for callback in callbacks:
            callback()

    def on_requester_closed(self, conn) -> None:
        for group in self.groups.values():
            group.waiters = [w for w in group.waiters if w[0] is not conn]


def _removed_error(pg_id: bytes) -> list:
    return ["PlacementGroupRemovedError",
            f"placement group {pg_id.hex()} was removed (or never existed)"]

