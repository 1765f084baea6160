"""Actor placement without any process: actor_placement.place_actor over the head's ledger, and
the head's ActorDirectory driven by hand with heartbeat figures that lag behind its grants (a
burst, a node that defers, a node's death, actors asking for nothing)."""

from __future__ import annotations

import pickle
from collections import Counter

from hypothesis import given, settings, strategies as st

from pyactor._private import protocol as P
from pyactor._private.actor_directory import ActorDirectory
from pyactor._private.actor_placement import (ActorPlacement, NodeLedger, PlacementIndex,
                                              _actors_per_cpu, _load_after, fits_now,
                                              place_actor)
from pyactor._private.resources import ResourceSet
from pyactor._private.scheduler import NodeView


def rs(**amounts) -> ResourceSet:
    return ResourceSet.from_dict(amounts)


def ledger(index: int, total: ResourceSet, reserved: ResourceSet = ResourceSet(),
           actors: int = 0) -> NodeLedger:
    return NodeLedger(bytes([index]) * 4, total, total, reserved, actors)


# --- place_actor ---

def test_ties_spread_round_robin_instead_of_lowest_node_id():
    """Equal empty nodes: successive turns pick successive nodes."""
    nodes = [ledger(i, rs(CPU=1, slot=10)) for i in range(4)]
    picks = {place_actor(rs(slot=1), nodes, turn).node_id for turn in range(4)}
    assert len(picks) == 4


def test_reserved_amounts_count_as_used():
    """A node whose free slots are all reserved by earlier grants is not picked."""
    full = ledger(0, rs(slot=2), reserved=rs(slot=2))
    empty = ledger(1, rs(slot=2))
    assert place_actor(rs(slot=1), [full, empty]).node_id == empty.node_id
    assert place_actor(rs(slot=1), [full]).outcome is ActorPlacement.HOLD


def test_gpu_actor_is_placed_only_on_a_gpu_node():
    """An actor needing a GPU skips the idle CPU-only node."""
    cpu_node, gpu_node = ledger(0, rs(CPU=16)), ledger(1, rs(CPU=4, GPU=1))
    assert place_actor(rs(GPU=1), [cpu_node, gpu_node]).node_id == gpu_node.node_id


def test_infeasible_names_the_totals():
    decision = place_actor(rs(GPU=1), [ledger(0, rs(CPU=4))])
    assert decision.outcome is ActorPlacement.INFEASIBLE and "GPU" in decision.reason


def test_zero_resource_actor_goes_to_fewest_actors_per_cpu():
    """An actor asking for nothing picks the node with the fewest actors per CPU."""
    busy = ledger(0, rs(CPU=1), actors=3)
    big = ledger(1, rs(CPU=4), actors=4)  # 1 per CPU
    idle = ledger(2, rs(CPU=1), actors=2)
    assert place_actor(ResourceSet(), [busy, big, idle]).node_id == big.node_id


@settings(max_examples=60, deadline=None)
@given(totals=st.lists(st.integers(1, 6), min_size=1, max_size=8),
       demands=st.lists(st.integers(1, 3), min_size=1, max_size=60))
def test_a_burst_never_overfills_a_node_and_fills_evenly(totals, demands):
    """Placing a burst against the ledger alone (no heartbeat in between): no node goes over its
    slots, an actor is held only when no node has room for it, and the used fractions of the
    nodes never differ by more than one actor's share of the smallest node."""
    nodes = [ledger(i, rs(slot=t)) for i, t in enumerate(totals)]
    for turn, demand in enumerate(demands):
        decision = place_actor(rs(slot=demand), nodes, turn)
        if decision.outcome is ActorPlacement.INFEASIBLE:
            assert demand > max(totals)
            continue
        if decision.outcome is ActorPlacement.HOLD:
            assert not any(fits_now(rs(slot=demand), n) for n in nodes)
            continue
        assert decision.outcome is ActorPlacement.PLACE
        index = next(i for i, n in enumerate(nodes) if n.node_id == decision.node_id)
        chosen = nodes[index]
        assert fits_now(rs(slot=demand), chosen)
        nodes[index] = NodeLedger(chosen.node_id, chosen.total, chosen.available,
                                  chosen.reserved + rs(slot=demand), chosen.actors + 1)
    for n in nodes:
        assert n.reserved.units_of("slot") <= n.total.units_of("slot")
    if all(d == 1 for d in demands):  # unit demands: least-loaded-after is exactly even
        loads = [n.reserved.get("slot") / n.total.get("slot") for n in nodes]
        assert max(loads) - min(loads) <= 1 / min(totals) + 1e-9


@settings(max_examples=40, deadline=None)
@given(cpus=st.lists(st.integers(1, 4), min_size=1, max_size=6), count=st.integers(1, 80))
def test_zero_resource_actors_spread_in_proportion_to_cpus(cpus, count):
    """Actors asking for nothing are never held and spread: actors per CPU differ by at most
    one actor's share of the smallest node."""
    nodes = [ledger(i, rs(CPU=c)) for i, c in enumerate(cpus)]
    for turn in range(count):
        decision = place_actor(ResourceSet(), nodes, turn)
        assert decision.outcome is ActorPlacement.PLACE
        index = next(i for i, n in enumerate(nodes) if n.node_id == decision.node_id)
        n = nodes[index]
        nodes[index] = NodeLedger(n.node_id, n.total, n.available, n.reserved, n.actors + 1)
    per_cpu = [n.actors / n.total.get("CPU") for n in nodes]
    assert max(per_cpu) - min(per_cpu) <= 1 + 1e-9


@settings(max_examples=80, deadline=None)
@given(totals=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=6),
       steps=st.lists(st.tuples(st.sampled_from(["place", "beat", "free", "die"]),
                                st.integers(0, 2), st.integers(0, 5)), max_size=50))
def test_the_index_decides_as_place_actor_does(totals, steps):
    """Through placements, heartbeats that change free figures, releases and node deaths, the
    PlacementIndex gives place_actor's outcome, and its node ranks as place_actor's pick does
    (same load after placing, same actors per CPU); ties may go to another equal node."""
    index = PlacementIndex()
    nodes = {}
    for i, (cpus, slots) in enumerate(totals):
        nodes[bytes([i]) * 4] = ledger(i, rs(CPU=cpus, slot=slots))
        index.set_node(bytes([i]) * 4, nodes[bytes([i]) * 4].total, nodes[bytes([i]) * 4].total)
    for what, amount, which in steps:
        alive = sorted(nodes)
        if what == "place":
            demand = rs(slot=amount) if amount else ResourceSet()
            expected = place_actor(demand, [nodes[n] for n in alive])
            got = index.place(demand)
            assert got.outcome is expected.outcome
            if got.outcome is ActorPlacement.PLACE:
                chosen, best = nodes[got.node_id], nodes[expected.node_id]
                assert fits_now(demand, chosen)
                assert (_load_after(demand, chosen), _actors_per_cpu(chosen)) == \
                    (_load_after(demand, best), _actors_per_cpu(best))
                nodes[got.node_id] = NodeLedger(chosen.node_id, chosen.total, chosen.available,
                                                chosen.reserved + demand, chosen.actors + 1)
                index.reserve(got.node_id, demand)
                index.count_actor(got.node_id, +1)
        elif not alive:
            continue
        elif what == "beat":  # a heartbeat: the node reports a different free figure
            n = nodes[alive[which % len(alive)]]
            free = rs(CPU=n.total.get("CPU"), slot=min(amount, n.total.get("slot")))
            nodes[n.node_id] = NodeLedger(n.node_id, n.total, free, n.reserved, n.actors)
            index.set_node(n.node_id, n.total, free)
        elif what == "free":  # what was reserved there is released
            n = nodes[alive[which % len(alive)]]
            index.reserve(n.node_id, n.reserved, -1)
            nodes[n.node_id] = NodeLedger(n.node_id, n.total, n.available, ResourceSet(),
                                          n.actors)
        else:
            node_id = alive[which % len(alive)]
            del nodes[node_id]
            index.remove_node(node_id)
    for node_id, n in nodes.items():
        assert index.ledger(node_id) == n


# --- ActorDirectory with lagging heartbeats ---

class Head:
    """An ActorDirectory whose node views change only when the test says a heartbeat came."""

    def __init__(self, count: int, slots: int):
        self.ids = [bytes([i + 1]) * 16 for i in range(count)]
        self.total = {n: rs(CPU=1, slot=slots) for n in self.ids}
        self.reported = dict(self.total)  # last heartbeat's available
        self.hosted: list[tuple[bytes, bytes]] = []  # (node, actor) HostActor sent
        self.alive = set(self.ids)
        self.directory = ActorDirectory(
            nodes=lambda: [NodeView(n.hex(), self.total[n], self.reported[n])
                           for n in self.ids if n in self.alive],
            host=lambda node, actor: self.hosted.append((node, actor.actor_id)),
            kill_process=lambda node, actor_id: None,
            reply=lambda *args, **kw: None, local_node_id=b"head")

    def create(self, index: int, demand: dict, max_restarts: int = 0) -> bytes:
        actor_id = index.to_bytes(16, "big")
        spec = pickle.dumps({"options": {"max_restarts": max_restarts}})
        self.directory.create(None, P.CreateActor(index, actor_id, spec, demand, "", "ns",
                                                  False, False, ["h", 1]))
        return actor_id

    def where(self) -> Counter:
        return Counter(a.node_id for a in self.directory.actors.values()
                       if a.node_id is not None)


def test_burst_spreads_and_never_oversubscribes_before_any_heartbeat():
    """30 actors of slot 1 created at once on 4 nodes of 10 slots: no heartbeat in between, yet
    they spread 8/8/7/7 (not 30 on one node)."""
    head = Head(4, 10)
    for i in range(30):
        head.create(i, {"slot": 1})
    counts = head.where()
    assert sum(counts.values()) == 30 and max(counts.values()) <= 8 and len(counts) == 4


def test_burst_beyond_capacity_is_held_then_placed_when_a_beat_shows_room():
    """More actors than slots: the extra ones wait at the head, are placed at a later beat
    once an actor's death frees room, and never go to a full node."""
    head = Head(2, 2)
    ids = [head.create(i, {"slot": 1}) for i in range(5)]
    assert sum(head.where().values()) == 4 and len(head.directory.held) == 1
    for actor_id in ids[:4]:
        head.directory.on_hosted(actor_id, ["w", 1], None)
    for node in head.ids:
        head.reported[node] = rs(CPU=1)  # both full now, heartbeats say
        head.directory.on_heartbeat(node)
    head.directory.retry_held()
    assert len(head.directory.held) == 1
    head.directory.on_process_died(ids[0], "")  # killed, max_restarts=0
    node_of_dead = head.hosted[0][0]
    head.reported[node_of_dead] = rs(CPU=1, slot=1)
    head.directory.retry_held()
    assert not head.directory.held
    assert head.directory.actors[ids[4]].node_id == node_of_dead


def test_a_deferred_actor_is_placed_again_on_another_node():
    """A node that cannot take an actor after all (ActorDeferred) gets it placed elsewhere."""
    head = Head(2, 1)
    actor_id = head.create(0, {"slot": 1})
    first = head.directory.actors[actor_id].node_id
    head.reported[first] = rs(CPU=1)  # a task took the slot meanwhile
    head.directory.on_deferred(actor_id, 0)
    second = head.directory.actors[actor_id].node_id
    assert second is not None and second != first
    assert head.directory.actors[actor_id].restarts == 0


def test_restarts_after_a_node_death_spread_over_the_others():
    """Eight restartable actors on a node that dies are restarted over the three others."""
    head = Head(4, 10)
    victim = head.ids[0]
    head.alive = {victim}  # only the victim at first: all land there
    ids = [head.create(i, {"slot": 1}, max_restarts=1) for i in range(8)]
    for actor_id in ids:
        head.directory.on_hosted(actor_id, ["w", 1], None)
    head.alive = set(head.ids[1:])
    head.directory.on_node_dead(victim)
    counts = head.where()
    assert sum(counts.values()) == 8 and victim not in counts and max(counts.values()) == 3
    assert all(head.directory.actors[a].state == "restarting" for a in ids)


# --- dead rows leave the membership table ---

def _membership(is_head: bool):
    from pyactor._private.cluster import Membership, NodeInfo
    me = NodeInfo(b"me" * 8, ["h", 1], {"CPU": 1}, {"CPU": 1}, is_head=is_head)
    dead: list[bytes] = []
    membership = Membership(me.node_id, me.address, b"t", head_address=None if is_head else "h:1",
                            local_status=lambda: me, on_message=None,
                            on_node_dead=dead.append, on_view_changed=lambda: None)
    membership.nodes[me.node_id] = me
    return membership, dead


def test_head_forgets_dead_rows_after_the_keep_time_only():
    """A dead row stays for dead_keep_s, then forget_dead drops it; alive rows stay."""
    from pyactor._private.cluster import NodeInfo
    head, _ = _membership(True)
    head.dead_keep_s = 10.0
    gone = NodeInfo(b"x" * 16, ["h", 2], {}, {}, alive=False, died_at=100.0)
    head.nodes[gone.node_id] = gone
    assert head.forget_dead(109.0) == [] and gone.node_id in head.nodes
    assert head.forget_dead(110.0) == [gone.node_id] and gone.node_id not in head.nodes
    assert b"me" * 8 in head.nodes


def test_member_drops_rows_the_head_view_no_longer_has():
    """A member drops a node the head's view leaves out; if it thought it alive, it is told
    the node died."""
    from pyactor._private import protocol as P
    from pyactor._private.cluster import NodeInfo
    member, dead = _membership(False)
    other = NodeInfo(b"o" * 16, ["h", 3], {"CPU": 1}, {"CPU": 1})
    head_row = NodeInfo(b"h" * 16, ["h", 1], {"CPU": 1}, {"CPU": 1}, is_head=True)
    member.on_snapshot(None, P.ViewSnapshot(2, [[head_row.node_id, head_row.wire()],
                                                [other.node_id, other.wire()]]))
    assert other.node_id in member.nodes
    member.on_delta(None, P.ViewDelta(2, 3, [], [other.node_id]))
    assert other.node_id not in member.nodes and dead == [other.node_id]
    assert member.node_id in member.nodes


def test_a_restart_onto_a_node_that_dies_before_it_came_up_is_not_counted():
    """Two nodes die in one burst: an actor restarted from the first onto the second (not up
    yet there) is placed again on a third, and still counts one restart, not two."""
    head = Head(3, 10)
    first, second, third = head.ids
    head.alive = {first}
    actor_id = head.create(0, {"slot": 1}, max_restarts=1)
    head.directory.on_hosted(actor_id, ["w", 1], None)
    head.alive = {second}  # the third is not known yet: the restart goes to the second
    head.directory.on_node_dead(first)
    actor = head.directory.actors[actor_id]
    assert actor.node_id == second and actor.state == "restarting" and actor.restarts == 1
    head.alive = {third}
    head.directory.on_node_dead(second)
    assert actor.node_id == third and actor.state == "restarting" and actor.restarts == 1


def test_timeouts_from_the_environment_are_checked(monkeypatch):
    """PYACTOR_NODE_TIMEOUT_S must be a number above the heartbeat interval; a bad value is a
    ValueError naming the variable."""
    import pytest
    from pyactor._private.cluster import HEARTBEAT_S, node_timeout_s
    monkeypatch.setenv("PYACTOR_NODE_TIMEOUT_S", "12.5")
    assert node_timeout_s() == 12.5
    for bad in ("soon", str(HEARTBEAT_S)):
        monkeypatch.setenv("PYACTOR_NODE_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="PYACTOR_NODE_TIMEOUT_S"):
            node_timeout_s()
