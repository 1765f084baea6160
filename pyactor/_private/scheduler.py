"""Scheduling decisions, and nothing else: no I/O, no threads, no clocks.

The node daemon owns the processes; this module only answers "who runs now, and where". Both
schedulers are plain objects driven by method calls, so tests run them without a process:

    node daemon event loop                 LocalScheduler (one node)
    ----------------------                 -------------------------
    task arrives        --submit------->   Decision: GRANTED(allocation) | QUEUED | INFEASIBLE
    task finishes       --release------>   [Grant, ...]  queued requests that now run
    task cancelled      --cancel------->   [Grant, ...]
    worker blocks in get --lend_cpus---->  [Grant, ...]  its CPUs serve others meanwhile
    worker resumes      --reclaim_cpus->   []            may oversubscribe CPU for a while

    driver / owner                         ClusterScheduler (many nodes, stateless)
    --------------                         ----------------------------------------
    [NodeView, ...] + demand + locality -> Placement: SCHEDULE(node) | QUEUE(node) | INFEASIBLE

Fairness policy of LocalScheduler (design note)
-----------------------------------------------
Requests wait in one FIFO per demand shape (the ResourceSet they ask for), so a task waiting for a
GPU never holds up CPU-only tasks of another shape behind it (head-of-line blocking).

That alone lets a stream of small requests starve a big one: each time one CPU frees, a 1-CPU task
takes it and the 8-CPU task at the head of its own queue never sees 8 free. So scheduling walks the
shapes' heads oldest first over a scratch copy of the node, and a head that does not fit *reserves*
its whole demand there (amounts may go negative; its GPUs, or all GPUs if its GPUs cannot be picked
now). A younger request is granted only if it fits in what the older waiting heads leave over.
Hence, for every resource an older head needs, younger grants never push availability below that
head's need: what frees up accumulates toward the oldest waiters, and each head is granted once
enough of its resources are released (no starvation, given that running tasks finish).

The price, as in EASY backfilling without runtime estimates: resources a waiting head has already
got stay idle until the rest frees (an 8-CPU + 1-GPU head holds 8 CPUs back while the GPU is
busy). Only each shape's head reserves, not everything queued, so a backlog of 1,000 GPU tasks
holds back one task's CPUs, not 1,000. Requests asking for nothing (num_cpus=0 actors) always run.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Iterable, Mapping, Sequence

from pyactor._private.resources import (CPU, Allocation, NodeResources, ResourceSet,
                                        check_gpu_demand)


class Outcome(enum.Enum):
    """What `LocalScheduler.submit` decided for a request."""

    GRANTED = "granted"        # the scheduler handed it an Allocation: the daemon starts it now
    QUEUED = "queued"          # it fits the node's totals; the scheduler grants it on a release
    INFEASIBLE = "infeasible"  # it can never fit this node; the daemon fails or forwards it


@dataclass(frozen=True)
class LeaseRequest:
    """One request for resources on a node: a task to run or an actor to host."""

    request_id: Hashable
    demand: ResourceSet = ResourceSet()

    def __post_init__(self) -> None:
        check_gpu_demand(self.demand)


@dataclass(frozen=True)
class Grant:
    request_id: Hashable
    allocation: Allocation


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    request_id: Hashable
    allocation: Allocation | None = None  # set when GRANTED
    reason: str = ""                      # set when INFEASIBLE


def describe_shortfall(demand: ResourceSet, has: ResourceSet) -> str:
    """'{...}' of what a node has, listing requested names it lacks as 0."""
    shown = has.to_dict()
    for name in demand.names:
        shown.setdefault(name, 0)
    return str(shown)


class LocalScheduler:
    """Grants one node's resources to lease requests; see the module docstring for the policy."""

    def __init__(self, total: ResourceSet, gpu_ids: Sequence[int] | None = None):
        self._node = NodeResources(total, gpu_ids)
        # Shape -> {request_id: (arrival sequence, request)}, each dict in arrival order.
        self._queues: dict[ResourceSet, dict[Hashable, tuple[int, LeaseRequest]]] = {}
        self._queued_shape: dict[Hashable, ResourceSet] = {}
        self._granted: dict[Hashable, Allocation] = {}
        self._lent: dict[Hashable, ResourceSet] = {}
        self._arrivals = itertools.count()
        self.oversubscribing_reclaims = 0  # reclaims that drove some resource below zero

    # --- the calls the node daemon makes ---

    def submit(self, request: LeaseRequest) -> Decision:
        request_id = request.request_id
        if request_id in self._granted or request_id in self._queued_shape:
            raise ValueError(f"request {request_id!r} was already submitted")
        reason = self.infeasible_reason(request.demand)
        if reason is not None:
            return Decision(Outcome.INFEASIBLE, request_id, reason=reason)
        self._enqueue(request)
        grants = self._schedule()
        # Only the newcomer can be granted: everything queued before was already blocked, and
        # adding a request never frees anything.
        assert all(grant.request_id == request_id for grant in grants), grants
        if grants:
            return Decision(Outcome.GRANTED, request_id, allocation=grants[0].allocation)
        return Decision(Outcome.QUEUED, request_id)

    def release(self, request_id: Hashable) -> list[Grant]:
        """Free a granted request's resources; return the queued requests granted as a result."""
        if request_id not in self._granted:
            raise KeyError(f"request {request_id!r} holds no grant to release")
        self._free(request_id)
        return self._schedule()

    def cancel(self, request_id: Hashable) -> list[Grant]:
        """Drop a queued request or release a granted one; unknown ids are ignored (the request
        may have finished while its cancellation was on the way)."""
        if request_id in self._granted:
            self._free(request_id)
        elif request_id in self._queued_shape:
            shape = self._queued_shape.pop(request_id)
            del self._queues[shape][request_id]
            if not self._queues[shape]:
                del self._queues[shape]
        else:
            return []
        return self._schedule()

    def lend_cpus(self, request_id: Hashable) -> list[Grant]:
        """The request's worker blocked in `get`: its CPUs serve others until `reclaim_cpus`, so
        nested waits cannot deadlock the pool. Idempotent while already lent."""
        if request_id not in self._granted:
            raise KeyError(f"request {request_id!r} holds no grant to lend CPUs from")
        if request_id in self._lent:
            return []
        cpus = self._granted[request_id].resources.only(CPU)
        self._lent[request_id] = cpus
        self._node.give(cpus)
        return self._schedule()

    def reclaim_cpus(self, request_id: Hashable) -> list[Grant]:
        """The worker resumed: take its CPUs back even if others now hold them (CPU is then
        oversubscribed until enough releases; nothing new needing CPU is granted meanwhile)."""
        if request_id not in self._lent:
            return []
        self._node.take(self._lent.pop(request_id))
        if not self._node.oversubscribed().is_empty:
            self.oversubscribing_reclaims += 1
        return self._schedule()

    def add_resources(self, resources: ResourceSet) -> list[Grant]:
        """The node gained resources (a placement group bundle reserved here)."""
        self._node.add_total(resources)
        return self._schedule()

    def remove_resources(self, resources: ResourceSet) -> tuple[list[Hashable], list[Grant]]:
        """The node lost resources that nobody holds (a bundle returned). Returns the queued
        requests that can now never fit, dropped (the daemon fails them), and what their
        leaving let others be granted."""
        self._node.remove_total(resources)
        dropped = [request_id for request_id in self.queued_ids()
                   if not self._node.can_ever_fit(self._queued_shape[request_id])]
        for request_id in dropped:
            shape = self._queued_shape.pop(request_id)
            del self._queues[shape][request_id]
            if not self._queues[shape]:
                del self._queues[shape]
        return dropped, self._schedule()

    # --- questions that change nothing ---

    def can_ever_fit(self, demand: ResourceSet) -> bool:
        """Whether `demand` fits this node's totals (so it would be granted once all is free)."""
        return self._node.can_ever_fit(demand)

    def infeasible_reason(self, demand: ResourceSet) -> str | None:
        """The INFEASIBLE message `submit` would give for `demand`, or None if it can fit."""
        if self._node.can_ever_fit(demand):
            return None
        return (f"requested {demand.to_dict()} but the node has "
                f"{describe_shortfall(demand, self._node.total)}")

    # --- snapshots ---

    def total(self) -> dict[str, int | float]:
        return self._node.total.to_dict()

    def available(self) -> dict[str, int | float]:
        """Available now per resource of the node (zeros included), clamped at zero for display
        (see `oversubscribed`)."""
        available = self._node.available()
        return {name: available.get(name) for name in self._node.total.names}

    def oversubscribed(self) -> dict[str, int | float]:
        """How far below zero each resource's exact availability is (from reclaimed CPUs)."""
        return self._node.oversubscribed().to_dict()

    def available_resources(self) -> ResourceSet:
        return self._node.available()

    def oversubscribed_resources(self) -> ResourceSet:
        return self._node.oversubscribed()

    def queued(self) -> dict[ResourceSet, int]:
        """Number of waiting requests per demand shape."""
        return {shape: len(waiting) for shape, waiting in self._queues.items()}

    def queued_ids(self) -> list[Hashable]:
        """Waiting requests, oldest first."""
        entries = [entry for waiting in self._queues.values() for entry in waiting.values()]
        return [request.request_id for _, request in sorted(entries, key=lambda e: e[0])]

    def granted(self) -> dict[Hashable, Allocation]:
        return dict(self._granted)

    def lent(self) -> dict[Hashable, ResourceSet]:
        return dict(self._lent)

    def gpu_free_units(self) -> dict[int, int]:
        return self._node.gpu_free_units()

    def reschedule(self) -> list[Grant]:
        """Run a scheduling pass. Every call above already does; this is for callers that changed
        nothing, and for tests checking that nothing grantable was left waiting."""
        return self._schedule()

    # --- internals ---

    def _enqueue(self, request: LeaseRequest) -> None:
        shape = request.demand
        self._queues.setdefault(shape, {})[request.request_id] = (next(self._arrivals), request)
        self._queued_shape[request.request_id] = shape

    def _free(self, request_id: Hashable) -> None:
        self._node.free(self._granted.pop(request_id))
        lent = self._lent.pop(request_id, None)
        if lent is not None:  # those CPUs were already handed back when lent
            self._node.take(lent)

    def _schedule(self) -> list[Grant]:
        """Grant what the fairness policy allows, oldest first; see the module docstring."""
        scratch = self._node.copy()  # the node minus the reservations of older waiting heads
        heads = [(next(iter(waiting.values()))[0], shape) for shape, waiting in
                 self._queues.items()]
        heapq.heapify(heads)
        grants: list[Grant] = []
        while heads:
            _, shape = heapq.heappop(heads)
            waiting = self._queues[shape]
            request_id, (_, request) = next(iter(waiting.items()))
            allocation = scratch.allocate(request.demand)
            if allocation is None:
                scratch.reserve(request.demand)  # this shape waits; younger ones fit around it
                continue
            # The scratch copy has at most what the node has free, so its pick is valid here.
            self._node.commit(allocation)
            self._granted[request_id] = allocation
            del waiting[request_id], self._queued_shape[request_id]
            grants.append(Grant(request_id, allocation))
            if waiting:
                heapq.heappush(heads, (next(iter(waiting.values()))[0], shape))
            else:
                del self._queues[shape]
        return grants


# --------------------------------------------------------------------------------------------
# Cluster level


@dataclass(frozen=True)
class NodeView:
    """What the cluster scheduler knows of one node (a snapshot from its heartbeat)."""

    node_id: str
    total: ResourceSet
    available: ResourceSet
    is_local: bool = False
    alive: bool = True
    queue_len: int = 0


@dataclass(frozen=True)
class NodeAffinity:
    """Run on `node_id`; if `soft`, fall back to the normal policy when it is dead or busy."""

    node_id: str
    soft: bool = False


class Placement(enum.Enum):
    SCHEDULE = "schedule"      # the node has capacity now: send it there to run
    QUEUE = "queue"            # no node has capacity now: send it to wait on this one
    INFEASIBLE = "infeasible"  # no alive node could ever run it (or its hard affinity is broken)


@dataclass(frozen=True)
class PlacementDecision:
    placement: Placement
    node_id: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class ClusterScheduler:
    """Picks a node for a task from node snapshots (actors: actor_placement); stateless.

    Order of preference among alive nodes whose totals fit the demand:
      1. capacity now, holding the most bytes of the task's arguments (no transfer);
      2. capacity now, the local node (no hop);
      3. capacity now, the least-loaded node (spill): fewest queued, then lowest utilisation of
         the resources asked for, then node_id;
      4. nobody has capacity: QUEUE on the node with the fewest queued, then the most argument
         bytes, then local first, then node_id.
    Node-level GPU fragmentation is not visible here; the chosen node's LocalScheduler queues the
    request if its GPU ids cannot be picked yet.
    """

    def pick_node_for_task(self, demand: ResourceSet, nodes: Sequence[NodeView], *,
                           locality: Mapping[str, int] | None = None,
                           affinity: NodeAffinity | None = None) -> PlacementDecision:
        check_gpu_demand(demand)
        by_id = _index_nodes(nodes)
        locality = dict(locality or {})
        if affinity is not None:
            decision = self._place_with_affinity(demand, by_id, affinity)
            if decision is not None:
                return decision
        feasible = [n for n in by_id.values() if n.alive and demand.fits_in(n.total)]
        if not feasible:
            alive = {n.node_id: n.total.to_dict() for n in by_id.values() if n.alive}
            return PlacementDecision(
                Placement.INFEASIBLE,
                reason=f"requested {demand.to_dict()} but no alive node can ever fit it; "
                       f"alive nodes' totals: {alive}")
        ready = [n for n in feasible if demand.fits_in(n.available)]
        if ready:
            holding = [n for n in ready if locality.get(n.node_id, 0) > 0]
            if holding:
                best = min(holding, key=lambda n: (-locality[n.node_id], n.node_id))
                return PlacementDecision(Placement.SCHEDULE, best.node_id)
            local = [n for n in ready if n.is_local]
            if local:
                return PlacementDecision(Placement.SCHEDULE, local[0].node_id)
            best = min(ready, key=lambda n: (n.queue_len, _utilisation(n, demand), n.node_id))
            return PlacementDecision(Placement.SCHEDULE, best.node_id)
        best = min(feasible, key=lambda n: (n.queue_len, -locality.get(n.node_id, 0),
                                            not n.is_local, n.node_id))
        return PlacementDecision(Placement.QUEUE, best.node_id)

    def _place_with_affinity(self, demand: ResourceSet, by_id: Mapping[str, NodeView],
                             affinity: NodeAffinity) -> PlacementDecision | None:
        """The decision a node affinity forces, or None to fall back to the normal policy."""
        node = by_id.get(affinity.node_id)
        if node is not None and node.alive and demand.fits_in(node.available):
            return PlacementDecision(Placement.SCHEDULE, node.node_id)
        if affinity.soft:
            return None
        if node is None or not node.alive:
            state = "unknown" if node is None else "dead"
            return PlacementDecision(
                Placement.INFEASIBLE,
                reason=f"requested {demand.to_dict()} with hard affinity to node "
                       f"{affinity.node_id!r}, which is {state}")
        if not demand.fits_in(node.total):
            return PlacementDecision(
                Placement.INFEASIBLE,
                reason=f"requested {demand.to_dict()} with hard affinity to node "
                       f"{affinity.node_id!r}, which has "
                       f"{describe_shortfall(demand, node.total)}")
        return PlacementDecision(Placement.QUEUE, node.node_id)


def _index_nodes(nodes: Iterable[NodeView]) -> dict[str, NodeView]:
    by_id: dict[str, NodeView] = {}
    for node in sorted(nodes, key=lambda n: n.node_id):
        if node.node_id in by_id:
            raise ValueError(f"node {node.node_id!r} appears twice in the cluster view")
        by_id[node.node_id] = node
    return by_id


def _utilisation(node: NodeView, demand: ResourceSet) -> Fraction:
    """Highest used fraction among the resources asked for (all of the node's if none)."""
    names = demand.names or node.total.names
    used = [Fraction(node.total.units_of(n) - node.available.units_of(n), node.total.units_of(n))
            for n in names if node.total.units_of(n) > 0]
    return max(used, default=Fraction(0))
