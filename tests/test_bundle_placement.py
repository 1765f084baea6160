"""Placement-group decisions without any process: bundle_placement.place_bundles, the group
resource names, the head's PlacementGroupTable driven by hand, and a node's scheduler gaining
and losing a bundle's resources."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from hypothesis import given, settings, strategies as st

from pyactor._private.bundle_placement import STRATEGIES, NodeCapacity, place_bundles
from pyactor._private.placement_groups import (PlacementGroupTable, bundle_offer,
                                               demand_in_bundle, is_group_work)
from pyactor._private.resources import ResourceSet
from pyactor._private.scheduler import LeaseRequest, LocalScheduler, NodeView, Outcome
from pyactor._private import protocol as P


def rs(**amounts) -> ResourceSet:
    return ResourceSet.from_dict(amounts)


def node(node_id: str, **free) -> NodeCapacity:
    return NodeCapacity(node_id, rs(**free))


# --- place_bundles: examples ---

def test_strict_pack_puts_every_bundle_on_one_node_that_holds_their_sum():
    """STRICT_PACK picks the node whose free resources hold the whole group."""
    nodes = [node("a", CPU=2), node("b", CPU=4)]
    assert place_bundles([rs(CPU=2), rs(CPU=2)], "STRICT_PACK", nodes).nodes == ("b", "b")


def test_strict_pack_refuses_when_no_single_node_holds_the_group():
    """Two 2-CPU nodes cannot STRICT_PACK 3 CPUs; the reason names the strategy."""
    decision = place_bundles([rs(CPU=2), rs(CPU=1)], "STRICT_PACK",
                             [node("a", CPU=2), node("b", CPU=2)])
    assert decision.nodes is None and "STRICT_PACK" in decision.reason


def test_pack_falls_back_to_several_nodes():
    """PACK uses as few nodes as it can, but more than one when it must."""
    decision = place_bundles([rs(CPU=2), rs(CPU=1)], "PACK", [node("a", CPU=2), node("b", CPU=2)])
    assert decision.nodes is not None and len(set(decision.nodes)) == 2


def test_strict_spread_finds_the_only_matching_when_greedy_would_fail():
    """A big bundle needs the big node even though the small bundle fits there too."""
    nodes = [node("a", CPU=4), node("b", CPU=1)]
    assert place_bundles([rs(CPU=1), rs(CPU=4)], "STRICT_SPREAD", nodes).nodes == ("b", "a")


def test_strict_spread_refuses_more_bundles_than_nodes():
    """Three bundles cannot spread strictly over two nodes."""
    nodes = [node("a", CPU=8), node("b", CPU=8)]
    assert place_bundles([rs(CPU=1)] * 3, "STRICT_SPREAD", nodes).nodes is None


def test_spread_uses_every_node_before_sharing_one():
    """SPREAD puts one bundle per node while nodes are left, then shares."""
    nodes = [node("a", CPU=8), node("b", CPU=8)]
    placed = place_bundles([rs(CPU=1)] * 3, "SPREAD", nodes).nodes
    assert sorted(placed[:2]) == ["a", "b"] and len(placed) == 3


def test_replacing_lost_bundles_keeps_the_strategy_with_the_bundles_that_stay():
    """After a node died, STRICT_SPREAD places its bundle away from the others' nodes."""
    nodes = [node("a", CPU=1), node("c", CPU=1), node("d", CPU=1)]
    decision = place_bundles([rs(CPU=1)] * 3, "STRICT_SPREAD", nodes, placed={0: "a", 2: "c"})
    assert decision.nodes == ("d",)


def test_an_unknown_strategy_is_a_value_error():
    """The strategy name is checked."""
    with pytest.raises(ValueError, match="strategy must be one of"):
        place_bundles([rs(CPU=1)], "TIGHT", [node("a", CPU=1)])


# --- place_bundles: properties ---

amounts = st.integers(min_value=0, max_value=4)
bundle_sets = st.lists(st.builds(lambda c, x: rs(CPU=c + 1, x=x), amounts, amounts),
                       min_size=1, max_size=5)
node_sets = st.lists(st.builds(lambda c, x: {"CPU": c, "x": x}, st.integers(0, 8), amounts),
                     min_size=1, max_size=5)


def exists_placement(bundles, nodes, strategy) -> bool:
    """Brute force: any assignment of bundles to nodes that satisfies the strategy."""
    for choice in itertools.product(range(len(nodes)), repeat=len(bundles)):
        if strategy == "STRICT_PACK" and len(set(choice)) > 1:
            continue
        if strategy == "STRICT_SPREAD" and len(set(choice)) < len(choice):
            continue
        if fits(bundles, nodes, choice):
            return True
    return False


def fits(bundles, nodes, choice) -> bool:
    used = defaultdict(ResourceSet)
    for bundle, index in zip(bundles, choice):
        used[index] = used[index] + bundle
    return all(used[i].fits_in(nodes[i].free) for i in used)


@settings(max_examples=300, deadline=None)
@given(bundle_sets, node_sets, st.sampled_from(STRATEGIES))
def test_no_node_is_ever_given_more_than_it_has_and_strategies_hold(bundles, free, strategy):
    """Every placement fits each node's free resources, STRICT_PACK uses one node,
    STRICT_SPREAD distinct nodes; and a placement is found exactly when one exists (strict
    strategies search exhaustively; greedy ones succeed at least when STRICT_PACK would)."""
    nodes = [NodeCapacity(f"n{i}", ResourceSet.from_dict(f)) for i, f in enumerate(free)]
    decision = place_bundles(bundles, strategy, nodes)
    index = {n.node_id: i for i, n in enumerate(nodes)}
    if decision.nodes is not None:
        choice = [index[n] for n in decision.nodes]
        assert fits(bundles, nodes, choice)
        if strategy == "STRICT_PACK":
            assert len(set(choice)) == 1
        if strategy == "STRICT_SPREAD":
            assert len(set(choice)) == len(choice)
    if strategy.startswith("STRICT"):
        assert (decision.nodes is not None) == exists_placement(bundles, nodes, strategy)
    elif exists_placement(bundles, nodes, "STRICT_PACK"):
        assert decision.nodes is not None


# --- the group's resource names ---

def test_work_in_a_bundle_asks_for_the_bundles_names_and_its_marker():
    """A task's CPU becomes the bundle's CPU, plus a sliver of the bundle marker."""
    assert demand_in_bundle({"CPU": 1}, "ab", 0) == {"CPU_group_0_ab": 1,
                                                      "bundle_group_0_ab": 0.001}
    assert demand_in_bundle({}, "ab", -1) == {"bundle_group_ab": 0.001}
    assert is_group_work(ResourceSet.from_dict(demand_in_bundle({}, "ab", -1)), "ab")
    assert not is_group_work(rs(CPU=1), "ab")


def test_a_node_serves_work_of_a_bundle_from_the_bundle_only():
    """Reserving {CPU: 2} takes 2 of the node's CPUs and offers them under the group's names:
    work in the bundle is counted against the bundle, and the bundle's return restores all."""
    scheduler = LocalScheduler(rs(CPU=3))
    assert scheduler.submit(LeaseRequest("bundle", rs(CPU=2))).outcome is Outcome.GRANTED
    scheduler.add_resources(bundle_offer(rs(CPU=2), "ab", 0))
    assert scheduler.available()["CPU"] == 1
    inside = ResourceSet.from_dict(demand_in_bundle({"CPU": 1}, "ab", 0))
    assert scheduler.submit(LeaseRequest("t1", inside)).outcome is Outcome.GRANTED
    assert scheduler.submit(LeaseRequest("t2", inside)).outcome is Outcome.GRANTED
    assert scheduler.submit(LeaseRequest("t3", inside)).outcome is Outcome.QUEUED
    assert scheduler.available()["CPU"] == 1  # the node's own CPU is untouched
    assert [g.request_id for g in scheduler.release("t1")] == ["t3"]
    assert scheduler.submit(LeaseRequest("busy", rs(CPU=1))).outcome is Outcome.GRANTED
    mixed = ResourceSet.from_dict({"CPU": 1, "CPU_group_0_ab": 1})
    assert scheduler.submit(LeaseRequest("mixed", mixed)).outcome is Outcome.QUEUED
    scheduler.release("t2"), scheduler.release("t3")
    dropped, _ = scheduler.remove_resources(bundle_offer(rs(CPU=2), "ab", 0))
    assert dropped == ["mixed"]  # it can never run now
    scheduler.release("bundle"), scheduler.release("busy")
    assert scheduler.available() == {"CPU": 3} and scheduler.total() == {"CPU": 3}


# --- the head's table, driven by hand ---

class FakeCluster:
    """The node's side of PlacementGroupTable: records reservations, answers nothing itself."""

    def __init__(self, **nodes):
        self.views = {n: NodeView(n, rs(**r), rs(**r)) for n, r in nodes.items()}
        self.reserved: list = []
        self.released: list = []
        self.replies: list = []
        self.removed: list = []
        self.table = PlacementGroupTable(
            nodes=lambda: list(self.views.values()), address_of=lambda n: ["h", n.hex()],
            reserve=lambda *a: self.reserved.append(a), release=lambda *a: self.released.append(a),
            reply=lambda conn, rid, value=None, error=None: self.replies.append((rid, value, error)),
            on_removed=self.removed.append)

    def create(self, pg_id: bytes, bundles, strategy="PACK"):
        self.table.create(None, P.CreatePlacementGroup(1, pg_id, bundles, strategy, "", "", False,
                                                       ["h", 1]))

    def confirm_all(self):
        for node_id, pg_id, index, _ in self.reserved:
            self.table.on_reserved(pg_id, index, node_id, None)
        self.reserved.clear()


def test_a_group_that_can_never_fit_is_refused_at_creation():
    """The reply is an InfeasibleResourcesError naming the strategy, and nothing is reserved."""
    cluster = FakeCluster(**{"aa": {"CPU": 1}})
    cluster.create(b"\x01", [{"CPU": 2}])
    (_, value, error), = cluster.replies
    assert error[0] == "InfeasibleResourcesError" and "PACK" in error[1]
    assert cluster.reserved == [] and cluster.table.groups == {}


def test_locating_a_bundle_waits_for_its_reservation_and_removal_fails_the_waiters():
    """LocateBundle is answered once the node confirmed; removal answers waiters with
    PlacementGroupRemovedError and asks each node to give the bundles back."""
    cluster = FakeCluster(**{"aa": {"CPU": 2}, "bb": {"CPU": 2}})
    cluster.create(b"\x01", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    cluster.table.locate(None, P.LocateBundle(7, b"\x01", 1, {"bundle_group_1_01": 0.001}))
    assert [r for r in cluster.replies if r[0] == 7] == []
    cluster.confirm_all()
    (_, (node_id, address), _), = [r for r in cluster.replies if r[0] == 7]
    assert node_id in (b"\xaa", b"\xbb") and cluster.table.groups[b"\x01"].state == "CREATED"
    cluster.table.locate(None, P.LocateBundle(8, b"\x02", 0, {}))
    assert [r[2][0] for r in cluster.replies if r[0] == 8] == ["PlacementGroupRemovedError"]
    cluster.table.remove(None, P.RemovePlacementGroup(9, b"\x01"))
    assert sorted(cluster.released) == [(b"\xaa", b"\x01"), (b"\xbb", b"\x01")]
    assert cluster.removed == [b"\x01"]


def test_a_dead_nodes_bundles_are_placed_again_elsewhere():
    """The group goes RESCHEDULING and its lost bundle is reserved on another node."""
    cluster = FakeCluster(**{"aa": {"CPU": 1}, "bb": {"CPU": 1}, "cc": {"CPU": 1}})
    cluster.create(b"\x01", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    cluster.confirm_all()
    group = cluster.table.groups[b"\x01"]
    lost = group.nodes[0]
    del cluster.views[lost.hex()]
    cluster.table.on_node_dead(lost)
    assert group.state == "RESCHEDULING"
    (node_id, _, index, _), = cluster.reserved
    assert index == 0 and node_id not in (lost, group.nodes[1])
    cluster.confirm_all()
    assert group.state == "CREATED"
