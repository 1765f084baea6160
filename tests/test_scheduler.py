"""LocalScheduler (one node) and ClusterScheduler (many), driven without any process."""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest
from hypothesis import given, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyactor._private.resources import SCALE, ResourceSet
from pyactor._private.scheduler import (ClusterScheduler, Grant, LeaseRequest, LocalScheduler,
                                        NodeAffinity, NodeView, Outcome, Placement)


def rs(**amounts) -> ResourceSet:
    return ResourceSet.from_dict(amounts)


def req(request_id, **amounts) -> LeaseRequest:
    return LeaseRequest(request_id, rs(**amounts))


def granted_ids(grants) -> list:
    return [grant.request_id for grant in grants]


# --- LocalScheduler: unit behaviour ---

def test_infeasible_message_names_the_request_and_the_node():
    """A GPU request on a CPU-only node is INFEASIBLE, listing the missing GPU as 0."""
    scheduler = LocalScheduler(rs(CPU=2))
    decision = scheduler.submit(req("t", GPU=1, CPU=1))
    assert decision.outcome is Outcome.INFEASIBLE
    assert decision.reason == "requested {'CPU': 1, 'GPU': 1} but the node has {'CPU': 2, 'GPU': 0}"
    assert scheduler.queued() == {}
    assert not scheduler.can_ever_fit(rs(GPU=1)) and scheduler.can_ever_fit(rs(CPU=2))
    assert scheduler.infeasible_reason(rs(GPU=1, CPU=1)) == decision.reason
    assert scheduler.infeasible_reason(rs(CPU=2)) is None


def test_more_than_the_node_total_is_infeasible_not_queued():
    """3 CPUs on a 2-CPU node can never run, whatever frees up."""
    decision = LocalScheduler(rs(CPU=2, accel=1)).submit(req("t", CPU=3))
    assert decision.outcome is Outcome.INFEASIBLE
    assert decision.reason == "requested {'CPU': 3} but the node has {'CPU': 2, 'accel': 1}"


def test_request_that_fits_now_is_granted_with_its_allocation():
    """On an idle node the request runs at once and available() shrinks by its demand."""
    scheduler = LocalScheduler(rs(CPU=4, GPU=1))
    decision = scheduler.submit(req("t", CPU=1.5, GPU=0.5))
    assert decision.outcome is Outcome.GRANTED
    assert decision.allocation.resources == rs(CPU=1.5, GPU=0.5)
    assert decision.allocation.cuda_visible_devices == "0"
    assert scheduler.available() == {"CPU": 2.5, "GPU": 0.5}


def test_same_shape_requests_are_granted_in_arrival_order():
    """Queued 1-CPU requests run first-in first-out as CPUs free up."""
    scheduler = LocalScheduler(rs(CPU=1))
    assert scheduler.submit(req("running", CPU=1)).outcome is Outcome.GRANTED
    for name in "abc":
        assert scheduler.submit(req(name, CPU=1)).outcome is Outcome.QUEUED
    assert scheduler.queued() == {rs(CPU=1): 3}
    assert granted_ids(scheduler.release("running")) == ["a"]
    assert granted_ids(scheduler.release("a")) == ["b"]
    assert granted_ids(scheduler.release("b")) == ["c"]


def test_release_grants_several_waiting_requests_oldest_first():
    """Freeing 4 CPUs at once grants the queued requests in the order they arrived."""
    scheduler = LocalScheduler(rs(CPU=4))
    scheduler.submit(req("big", CPU=4))
    scheduler.submit(req("x", CPU=1))
    scheduler.submit(req("y", CPU=2))
    scheduler.submit(req("z", CPU=1))
    assert granted_ids(scheduler.release("big")) == ["x", "y", "z"]


def test_big_request_is_not_starved_by_a_stream_of_small_ones():
    """Once a 4-CPU request waits, younger 1-CPU requests do not take the CPUs it needs."""
    scheduler = LocalScheduler(rs(CPU=4))
    for i in range(4):
        scheduler.submit(req(f"small{i}", CPU=1))
    assert scheduler.submit(req("big", CPU=4)).outcome is Outcome.QUEUED
    for i in range(3):
        assert scheduler.submit(req(f"late{i}", CPU=1)).outcome is Outcome.QUEUED
        assert scheduler.release(f"small{i}") == []
    assert granted_ids(scheduler.release("small3")) == ["big"]
    assert granted_ids(scheduler.release("big")) == ["late0", "late1", "late2"]


def test_waiting_gpu_request_does_not_block_cpu_only_requests():
    """Per-shape queues: a request waiting for a busy GPU lets CPU-only work run beside it."""
    scheduler = LocalScheduler(rs(CPU=4, GPU=1))
    scheduler.submit(req("trainer", GPU=1))
    assert scheduler.submit(req("second-trainer", GPU=1)).outcome is Outcome.QUEUED
    assert scheduler.submit(req("cpu-task", CPU=1)).outcome is Outcome.GRANTED


def test_waiting_head_keeps_the_cpus_it_will_need():
    """A waiting 2-CPU + 1-GPU request holds back 2 CPUs, so only 2 of 4 go to CPU-only work."""
    scheduler = LocalScheduler(rs(CPU=4, GPU=1))
    scheduler.submit(req("trainer", GPU=1))
    assert scheduler.submit(req("head", CPU=2, GPU=1)).outcome is Outcome.QUEUED
    outcomes = [scheduler.submit(req(f"cpu{i}", CPU=1)).outcome for i in range(3)]
    assert outcomes == [Outcome.GRANTED, Outcome.GRANTED, Outcome.QUEUED]
    assert granted_ids(scheduler.release("trainer")) == ["head"]


def test_cancelling_a_waiting_head_releases_its_reservation():
    """Cancelling the queued big request lets the younger small one behind it run."""
    scheduler = LocalScheduler(rs(CPU=2))
    scheduler.submit(req("running", CPU=1))
    scheduler.submit(req("big", CPU=2))
    assert scheduler.submit(req("small", CPU=1)).outcome is Outcome.QUEUED
    assert granted_ids(scheduler.cancel("big")) == ["small"]
    assert scheduler.queued() == {}


def test_zero_resource_requests_always_run():
    """num_cpus=0 actors are granted even on a full, oversubscribed node with a queue."""
    scheduler = LocalScheduler(rs(CPU=1))
    scheduler.submit(req("a", CPU=1))
    scheduler.lend_cpus("a")
    scheduler.submit(req("b", CPU=1))
    scheduler.reclaim_cpus("a")
    scheduler.submit(req("c", CPU=1))
    assert scheduler.oversubscribed() == {"CPU": 1}
    for i in range(3):
        decision = scheduler.submit(LeaseRequest(f"actor{i}"))
        assert decision.outcome is Outcome.GRANTED
        assert decision.allocation.resources.is_empty and decision.allocation.gpu_ids == ()


def test_lending_cpus_lets_a_nested_task_run_and_reclaiming_oversubscribes():
    """A worker blocked in get lends its CPU to the task it waits for, then takes it back."""
    scheduler = LocalScheduler(rs(CPU=1, GPU=1))
    scheduler.submit(req("parent", CPU=1, GPU=1))
    assert scheduler.submit(req("child", CPU=1)).outcome is Outcome.QUEUED
    assert granted_ids(scheduler.lend_cpus("parent")) == ["child"]
    assert scheduler.lend_cpus("parent") == []  # idempotent
    assert scheduler.reclaim_cpus("parent") == []
    assert scheduler.available() == {"CPU": 0, "GPU": 0}
    assert scheduler.oversubscribed() == {"CPU": 1}
    assert scheduler.oversubscribing_reclaims == 1
    scheduler.release("child")
    assert scheduler.available() == {"CPU": 0, "GPU": 0} and scheduler.oversubscribed() == {}
    scheduler.release("parent")
    assert scheduler.available() == scheduler.total() == {"CPU": 1, "GPU": 1}


def test_releasing_a_request_while_its_cpus_are_lent_frees_only_what_it_still_held():
    """The lent CPU is not returned twice: after the release the node is exactly full again."""
    scheduler = LocalScheduler(rs(CPU=1))
    scheduler.submit(req("parent", CPU=1))
    scheduler.submit(req("child", CPU=1))
    scheduler.lend_cpus("parent")
    assert scheduler.release("parent") == []
    assert scheduler.available() == {"CPU": 0} and scheduler.oversubscribed() == {}
    scheduler.release("child")
    assert scheduler.available() == {"CPU": 1}


def test_fractional_gpu_holders_share_an_id_and_a_waiter_gets_it_on_release():
    """Two 0.5-GPU requests share GPU 0; a third waits and gets GPU 0 when one leaves."""
    scheduler = LocalScheduler(rs(GPU=1))
    a, b = scheduler.submit(req("a", GPU=0.5)), scheduler.submit(req("b", GPU=0.5))
    assert a.allocation.gpu_ids == b.allocation.gpu_ids == (0,)
    assert scheduler.submit(req("c", GPU=0.5)).outcome is Outcome.QUEUED
    [grant] = scheduler.release("a")
    assert (grant.request_id, grant.allocation.gpu_ids) == ("c", (0,))


def test_misuse_raises_and_late_cancels_are_ignored():
    """Duplicate ids and releasing what holds nothing raise; cancelling an unknown id is a no-op."""
    scheduler = LocalScheduler(rs(CPU=1))
    scheduler.submit(req("a", CPU=1))
    with pytest.raises(ValueError, match="already submitted"):
        scheduler.submit(req("a", CPU=1))
    with pytest.raises(KeyError):
        scheduler.release("nope")
    with pytest.raises(KeyError):
        scheduler.lend_cpus("nope")
    assert scheduler.cancel("nope") == []
    assert scheduler.reclaim_cpus("a") == []
    with pytest.raises(ValueError, match="whole number"):
        req("x", GPU=1.5)


# --- LocalScheduler: state machine ---

NODE_TOTAL = rs(CPU=2, GPU=2, accel=1)
GPU_IDS = (3, 7)  # not 0..n-1, so an id made up from a count would be caught

demands = st.builds(
    lambda cpu, gpu, accel: rs(CPU=cpu, GPU=gpu, accel=accel),
    st.sampled_from([0, 0.25, 0.5, 1, 1, 2, 3]),
    st.sampled_from([0, 0, 0.25, 0.3, 0.5, 1, 2, 3]),
    st.sampled_from([0, 0, 1, 2]),
)


class LocalSchedulerMachine(RuleBasedStateMachine):
    """Random submit/release/cancel/lend/reclaim against a model of what is granted and queued."""

    def __init__(self):
        super().__init__()
        self.scheduler = LocalScheduler(NODE_TOTAL, gpu_ids=GPU_IDS)
        self.next_id = 0
        self.demand: dict[int, ResourceSet] = {}
        self.queued: list[int] = []           # oldest first
        self.granted: dict[int, object] = {}  # id -> Allocation
        self.lent: set[int] = set()
        self.ever_granted: set[int] = set()

    def take_grants(self, grants) -> None:
        ids = granted_ids(grants)
        assert ids == [i for i in self.queued if i in ids], "grants out of arrival order"
        for grant in grants:
            assert grant.request_id not in self.ever_granted, "granted twice"
            assert grant.allocation.resources == self.demand[grant.request_id]
            self.queued.remove(grant.request_id)
            self.granted[grant.request_id] = grant.allocation
            self.ever_granted.add(grant.request_id)

    @rule(demand=demands)
    def submit(self, demand):
        request_id, self.next_id = self.next_id, self.next_id + 1
        decision = self.scheduler.submit(LeaseRequest(request_id, demand))
        if not demand.fits_in(NODE_TOTAL):
            assert decision.outcome is Outcome.INFEASIBLE
            assert decision.reason.startswith(f"requested {demand.to_dict()} but the node has")
            return
        self.demand[request_id] = demand
        if decision.outcome is Outcome.GRANTED:
            self.queued.append(request_id)
            self.take_grants([Grant(request_id, decision.allocation)])
        else:
            assert decision.outcome is Outcome.QUEUED
            assert not demand.is_empty
            self.queued.append(request_id)

    @precondition(lambda self: self.granted)
    @rule(data=st.data())
    def release(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.granted)))
        del self.granted[request_id]
        self.lent.discard(request_id)
        self.take_grants(self.scheduler.release(request_id))

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def cancel_queued(self, data):
        request_id = data.draw(st.sampled_from(self.queued))
        self.queued.remove(request_id)
        self.take_grants(self.scheduler.cancel(request_id))

    @precondition(lambda self: self.granted)
    @rule(data=st.data())
    def cancel_granted(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.granted)))
        del self.granted[request_id]
        self.lent.discard(request_id)
        self.take_grants(self.scheduler.cancel(request_id))

    @rule()
    def cancel_unknown(self):
        assert self.scheduler.cancel("never-submitted") == []

    @precondition(lambda self: self.granted)
    @rule(data=st.data())
    def lend(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.granted)))
        grants = self.scheduler.lend_cpus(request_id)
        if request_id in self.lent:
            assert grants == []
        self.lent.add(request_id)
        self.take_grants(grants)

    @precondition(lambda self: self.lent)
    @rule(data=st.data())
    def reclaim(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.lent)))
        self.lent.remove(request_id)
        assert self.scheduler.reclaim_cpus(request_id) == []

    @rule()
    def release_everything(self):
        """Releasing until nothing runs grants every queued request and restores the total."""
        while self.granted:
            request_id = min(self.granted)
            del self.granted[request_id]
            self.lent.discard(request_id)
            self.take_grants(self.scheduler.release(request_id))
        assert self.queued == []
        assert self.scheduler.available_resources() == NODE_TOTAL
        assert self.scheduler.oversubscribed() == {}
        assert self.scheduler.gpu_free_units() == {3: SCALE, 7: SCALE}

    @invariant()
    def model_matches(self):
        assert set(self.scheduler.granted()) == set(self.granted)
        assert self.scheduler.queued_ids() == self.queued
        assert set(self.scheduler.lent()) == self.lent

    @invariant()
    def accounting_is_exact(self):
        """available == total - sum(granted) + sum(lent CPUs), exactly; only CPU goes negative."""
        available = self.scheduler.available_resources()
        over = self.scheduler.oversubscribed_resources()
        assert set(over.names) <= {"CPU"}
        if not over.is_empty:
            assert self.scheduler.oversubscribing_reclaims > 0
        for name in ("CPU", "GPU", "accel"):
            expected = NODE_TOTAL.units_of(name)
            for request_id, allocation in self.granted.items():
                expected -= allocation.resources.units_of(name)
                if name == "CPU" and request_id in self.lent:
                    expected += allocation.resources.units_of(name)
            assert available.units_of(name) - over.units_of(name) == expected

    @invariant()
    def gpu_ids_are_valid_and_not_over_shared(self):
        used = defaultdict(int)
        whole_holders = defaultdict(int)
        for allocation in self.granted.values():
            gpu_units = allocation.resources.units_of("GPU")
            assert set(allocation.gpu_ids) <= set(GPU_IDS)
            assert len(set(allocation.gpu_ids)) == len(allocation.gpu_ids)
            if gpu_units >= SCALE:
                assert len(allocation.gpu_ids) == gpu_units // SCALE
                for gpu_id in allocation.gpu_ids:
                    whole_holders[gpu_id] += 1
                    used[gpu_id] += SCALE
            elif gpu_units:
                assert len(allocation.gpu_ids) == 1
                used[allocation.gpu_ids[0]] += gpu_units
            else:
                assert allocation.gpu_ids == ()
        for gpu_id in GPU_IDS:
            assert used[gpu_id] <= SCALE
            if whole_holders[gpu_id]:
                assert used[gpu_id] == SCALE and whole_holders[gpu_id] == 1
            assert self.scheduler.gpu_free_units()[gpu_id] == SCALE - used[gpu_id]

    @invariant()
    def nothing_grantable_is_left_waiting(self):
        """No lost wake-up: the oldest waiter does not fit, and a fresh pass grants nothing."""
        assert copy.deepcopy(self.scheduler).reschedule() == []
        if not self.queued:
            return
        head = self.demand[self.queued[0]]
        available = self.scheduler.available_resources()
        over = self.scheduler.oversubscribed_resources()
        fits_amounts = all(units <= available.units_of(name) - over.units_of(name)
                           for name, units in head.units)
        free = self.scheduler.gpu_free_units()
        gpu_units = head.units_of("GPU")
        if gpu_units >= SCALE:
            fits_gpus = sum(f == SCALE for f in free.values()) >= gpu_units // SCALE
        else:
            fits_gpus = gpu_units == 0 or any(f >= gpu_units for f in free.values())
        assert not (fits_amounts and fits_gpus), f"head {head} fits but waits"


TestLocalSchedulerMachine = LocalSchedulerMachine.TestCase


# --- ClusterScheduler ---

def view(node_id, total, available=None, **kwargs) -> NodeView:
    return NodeView(node_id, total, total if available is None else available, **kwargs)


CLUSTER = ClusterScheduler()


def test_node_holding_most_argument_bytes_is_preferred_when_it_has_capacity():
    """A task goes where most of its argument bytes already are, even over the local node."""
    nodes = [view("a", rs(CPU=4), is_local=True), view("b", rs(CPU=4)), view("c", rs(CPU=4))]
    decision = CLUSTER.pick_node_for_task(rs(CPU=1), nodes, locality={"b": 100, "c": 10**6})
    assert (decision.placement, decision.node_id) == (Placement.SCHEDULE, "c")


def test_local_node_is_chosen_when_the_data_node_is_busy():
    """Locality only wins with capacity now; otherwise the local node takes the task."""
    nodes = [view("a", rs(CPU=4), is_local=True), view("b", rs(CPU=4), rs())]
    decision = CLUSTER.pick_node_for_task(rs(CPU=1), nodes, locality={"b": 10**9})
    assert (decision.placement, decision.node_id) == (Placement.SCHEDULE, "a")


def test_work_spills_to_the_least_loaded_node_when_the_local_one_is_full():
    """With the local node busy, the node with the shortest queue, then lowest use, is picked."""
    nodes = [view("local", rs(CPU=4), rs(), is_local=True),
             view("b", rs(CPU=4), rs(CPU=1)),
             view("c", rs(CPU=4), rs(CPU=3)),
             view("d", rs(CPU=4), rs(CPU=4), queue_len=2)]
    decision = CLUSTER.pick_node_for_task(rs(CPU=1), nodes)
    assert (decision.placement, decision.node_id) == (Placement.SCHEDULE, "c")


def test_dead_nodes_are_skipped_and_infeasible_names_the_alive_totals():
    """If the only GPU node is dead, a GPU request is INFEASIBLE with an exact message."""
    nodes = [view("a", rs(CPU=2)), view("g", rs(CPU=4, GPU=1), alive=False)]
    decision = CLUSTER.pick_node_for_task(rs(GPU=1), nodes)
    assert decision.placement is Placement.INFEASIBLE and decision.node_id is None
    assert decision.reason == ("requested {'GPU': 1} but no alive node can ever fit it; "
                               "alive nodes' totals: {'a': {'CPU': 2}}")


def test_when_no_node_has_capacity_the_request_queues_on_the_shortest_queue():
    """Everything busy: queue where the fewest wait, ties to the node_id order."""
    nodes = [view("b", rs(CPU=2), rs(), queue_len=1), view("c", rs(CPU=2), rs(), queue_len=1),
             view("a", rs(CPU=2), rs(), queue_len=3), view("tiny", rs(CPU=0.5))]
    decision = CLUSTER.pick_node_for_task(rs(CPU=1), nodes)
    assert (decision.placement, decision.node_id) == (Placement.QUEUE, "b")


def test_hard_affinity_runs_queues_or_fails_on_that_node_only():
    """node_id=... with soft=False never moves: run there, wait there, or INFEASIBLE."""
    idle, busy = view("idle", rs(CPU=2)), view("busy", rs(CPU=2), rs())
    dead = view("dead", rs(CPU=2), alive=False)
    nodes = [idle, busy, dead]
    pick = lambda node_id: CLUSTER.pick_node_for_task(rs(CPU=1), nodes,
                                                      affinity=NodeAffinity(node_id))
    assert (pick("busy").placement, pick("busy").node_id) == (Placement.QUEUE, "busy")
    assert pick("idle").node_id == "idle"
    assert pick("dead").reason == ("requested {'CPU': 1} with hard affinity to node 'dead', "
                                   "which is dead")
    assert pick("ghost").placement is Placement.INFEASIBLE
    too_big = CLUSTER.pick_node_for_task(rs(CPU=1, GPU=1), nodes, affinity=NodeAffinity("idle"))
    assert too_big.reason == ("requested {'CPU': 1, 'GPU': 1} with hard affinity to node 'idle', "
                              "which has {'CPU': 2, 'GPU': 0}")


def test_soft_affinity_falls_back_when_the_node_is_busy_or_dead():
    """soft=True prefers the node but uses the normal policy when it cannot run the task now."""
    nodes = [view("idle", rs(CPU=2)), view("busy", rs(CPU=2), rs()),
             view("dead", rs(CPU=2), alive=False)]
    for target in ("busy", "dead"):
        decision = CLUSTER.pick_node_for_task(rs(CPU=1), nodes,
                                              affinity=NodeAffinity(target, soft=True))
        assert (decision.placement, decision.node_id) == (Placement.SCHEDULE, "idle")


def test_duplicate_node_ids_are_refused():
    """Two views of one node are a caller bug, not something to pick between."""
    with pytest.raises(ValueError, match="appears twice"):
        CLUSTER.pick_node_for_task(rs(CPU=1), [view("a", rs(CPU=1)), view("a", rs(CPU=2))])


node_views = st.lists(
    st.builds(lambda cpu, free_cpu, gpu, local, alive, queue_len: (cpu, free_cpu, gpu, local,
                                                                   alive, queue_len),
              st.integers(0, 4), st.integers(0, 4), st.integers(0, 2), st.booleans(),
              st.booleans(), st.integers(0, 3)),
    max_size=6,
).map(lambda rows: [view(f"n{i}", rs(CPU=c, GPU=g), rs(CPU=min(f, c), GPU=g), is_local=loc,
                         alive=alive, queue_len=q)
                    for i, (c, f, g, loc, alive, q) in enumerate(rows)])


@given(node_views, demands, st.randoms())
def test_cluster_choice_is_deterministic_and_valid_whatever_the_node_order(nodes, demand, rnd):
    """Shuffling the node list never changes the decision, and the chosen node can host it."""
    locality = {node.node_id: i * 10 for i, node in enumerate(nodes)}
    decision = CLUSTER.pick_node_for_task(demand, nodes, locality=locality)
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert CLUSTER.pick_node_for_task(demand, shuffled, locality=locality) == decision
    by_id = {node.node_id: node for node in nodes}
    if decision.placement is Placement.INFEASIBLE:
        assert not any(n.alive and demand.fits_in(n.total) for n in nodes)
    else:
        chosen = by_id[decision.node_id]
        assert chosen.alive and demand.fits_in(chosen.total)
        ready = any(n.alive and demand.fits_in(n.available) for n in nodes)
        assert (decision.placement is Placement.SCHEDULE) == ready
        if decision.placement is Placement.SCHEDULE:
            assert demand.fits_in(chosen.available)
