"""Placement groups end to end: on one host (a 2-CPU local node) and across a cluster of nodes
started with the CLI on this host (the pattern of test_cluster.py), including a node's death."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import pyactor as pa
from pyactor.exceptions import (ActorDiedError, InfeasibleResourcesError,
                                PlacementGroupRemovedError)
from pyactor.util import (get_placement_group, placement_group, placement_group_table,
                          remove_placement_group)
from pyactor.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from conftest import wait_until
from test_cluster import CliCluster

GUARD_S = 60


@pa.remote(num_cpus=1)
def whoami() -> tuple[str, int]:
    return pa.get_runtime_context()["node_id"], os.getpid()


@pa.remote(num_cpus=1)
class Member:
    def where(self) -> tuple[str, int]:
        return pa.get_runtime_context()["node_id"], os.getpid()


def in_bundle(pg, index: int = -1) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, index)


# ---------------------------------------------------------------------- one host
def test_ready_resolves_to_the_group_and_its_resources_leave_the_free_pool(pa_module):
    """pa.get(pg.ready()) returns the group; its CPUs are taken from the node's free CPUs
    and offered under the group's names; removing it gives them back."""
    pg = placement_group([{"CPU": 1}], strategy="STRICT_PACK", name="one")
    assert pa.get(pg.ready(), timeout=GUARD_S) == pg
    assert pg.wait(GUARD_S) is True
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["strategy"] == "STRICT_PACK"
    assert row["bundles"] == {0: {"CPU": 1}} and len(row["bundles_to_node_id"]) == 1
    assert pg.id.hex() in placement_group_table()
    assert get_placement_group("one") == pg
    available = pa.available_resources()
    assert available["CPU"] == 1 and available[f"CPU_group_0_{pg.id.hex()}"] == 1
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    assert wait_until(lambda: pa.available_resources() == {"CPU": 2}, 10)
    with pytest.raises(ValueError, match="no placement group named 'one'"):
        get_placement_group("one")


async def test_ready_is_awaitable(pa_module):
    """`await pg.ready()` works inside asyncio code."""
    pg = placement_group([{"CPU": 0.5}])
    try:
        assert await asyncio.wait_for(pg.ready(), GUARD_S) == pg
    finally:
        remove_placement_group(pg)


def test_tasks_in_a_bundle_are_counted_against_it_not_the_node(pa_module):
    """A 1-CPU bundle runs its 1-CPU tasks one at a time (they queue on the bundle), while the
    node's other CPU stays free for ordinary tasks."""
    pg = placement_group([{"CPU": 1}])
    try:
        pa.get(pg.ready(), timeout=GUARD_S)
        refs = [whoami.options(scheduling_strategy=in_bundle(pg, 0)).remote() for _ in range(4)]
        assert len(pa.get(refs, timeout=GUARD_S)) == 4
        assert pa.get(whoami.remote(), timeout=GUARD_S)  # the free CPU still serves others
        # Once the leases linger no more, the node's free CPU is the one outside the bundle.
        assert wait_until(lambda: pa.available_resources()["CPU"] == 1, 10)
    finally:
        remove_placement_group(pg)


def test_work_that_cannot_fit_its_bundle_is_refused_at_the_call(pa_module):
    """Asking a bundle for more than it holds is a ValueError naming the bundle."""
    pg = placement_group([{"CPU": 1}])
    try:
        with pytest.raises(ValueError, match="cannot fit bundle 0"):
            whoami.options(num_cpus=2, scheduling_strategy=in_bundle(pg, 0))
        with pytest.raises(ValueError, match="placement_group_bundle_index"):
            in_bundle(pg, 1)
    finally:
        remove_placement_group(pg)


def test_bad_groups_get_clear_errors(pa_module):
    """Bad bundles or strategies are ValueErrors; a group no node could ever hold is an
    InfeasibleResourcesError at creation (it would otherwise wait forever)."""
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    with pytest.raises(ValueError, match="bundle 0 asks for no resources"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="strategy must be one of"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(InfeasibleResourcesError, match="can never be created: STRICT_SPREAD"):
        placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    with pytest.raises(InfeasibleResourcesError, match="can never be created"):
        placement_group([{"CPU": 3}])


def test_a_group_that_does_not_fit_now_waits_for_resources(pa_module):
    """A group needing CPUs another group holds is PENDING until that one is removed."""
    first = placement_group([{"CPU": 2}])
    pa.get(first.ready(), timeout=GUARD_S)
    second = placement_group([{"CPU": 1}])
    assert second.wait(0.3) is False
    assert placement_group_table(second)["state"] == "PENDING"
    remove_placement_group(first)
    assert pa.get(second.ready(), timeout=GUARD_S) == second
    remove_placement_group(second)


def test_removing_a_group_kills_its_actors_and_fails_its_queued_tasks(pa_module, tmp_path):
    """After removal the group's actor is dead and a task still waiting for the bundle fails
    with PlacementGroupRemovedError; so does work submitted into it afterwards."""
    from helpers import wait_for_file
    pg = placement_group([{"CPU": 1}])
    pa.get(pg.ready(), timeout=GUARD_S)
    actor = Member.options(scheduling_strategy=in_bundle(pg, 0), num_cpus=0.5).remote()
    pa.get(actor.where.remote(), timeout=GUARD_S)
    gate = str(tmp_path / "gate")
    blocked = wait_for_file.options(num_cpus=0.5, max_retries=0,
                                    scheduling_strategy=in_bundle(pg, 0)).remote(gate)
    waiting = whoami.options(num_cpus=0.5, scheduling_strategy=in_bundle(pg, 0)).remote()
    ready, _ = pa.wait([waiting], timeout=0.3)
    assert not ready  # the bundle's CPU is taken by the actor and the blocked task
    remove_placement_group(pg)
    with pytest.raises(PlacementGroupRemovedError):
        pa.get(waiting, timeout=GUARD_S)
    with pytest.raises(ActorDiedError, match="placement group was removed"):
        pa.get(actor.where.remote(), timeout=GUARD_S)
    with pytest.raises(pa.exceptions.PyActorError):
        pa.get(blocked, timeout=GUARD_S)  # its worker was killed with the group
    with pytest.raises(PlacementGroupRemovedError):
        pa.get(whoami.options(scheduling_strategy=in_bundle(pg)).remote(), timeout=GUARD_S)
    assert wait_until(lambda: pa.available_resources() == {"CPU": 2}, 10)


def test_an_actor_created_before_its_group_is_placed_starts_once_it_is(pa_module):
    """An actor scheduled into a PENDING group waits for the bundle instead of failing."""
    hog = placement_group([{"CPU": 2}])
    pa.get(hog.ready(), timeout=GUARD_S)
    pg = placement_group([{"CPU": 1}])
    actor = Member.options(scheduling_strategy=in_bundle(pg, 0)).remote()
    remove_placement_group(hog)
    node_id, _ = pa.get(actor.where.remote(), timeout=GUARD_S)
    assert node_id == pa.get_runtime_context()["node_id"]
    remove_placement_group(pg)


# ---------------------------------------------------------------------- a cluster
@pytest.fixture
def three_nodes():
    """A head and two nodes, 1 CPU each; stopped (and checked for leftovers) afterwards."""
    c = CliCluster()
    try:
        c.start_head(1)
        c.add_node(1)
        c.add_node(1)
        c.connect()
        yield c
    finally:
        c.stop()


@pytest.mark.slow
def test_strict_spread_across_nodes_and_rescheduling_after_a_node_dies(three_nodes):
    """PACK falls back to two nodes when none holds the group; STRICT_SPREAD puts two bundles
    on two nodes; tasks and actors run in their bundle's
    node; when a bundle's node is SIGKILLed the bundle is reserved again on the third node and
    a restartable actor in it comes back there. STRICT_PACK of 2 CPUs can never fit."""
    with pytest.raises(InfeasibleResourcesError):
        placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    packed = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    pa.get(packed.ready(), timeout=GUARD_S)  # no node holds both: PACK uses two
    assert len(set(placement_group_table(packed)["bundles_to_node_id"].values())) == 2
    remove_placement_group(packed)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    pa.get(pg.ready(), timeout=GUARD_S)
    homes = placement_group_table(pg)["bundles_to_node_id"]
    assert len(set(homes.values())) == 2
    for index in (0, 1):
        node_id, _ = pa.get(whoami.options(scheduling_strategy=in_bundle(pg, index)).remote(),
                            timeout=GUARD_S)
        assert node_id == homes[index]
    head_id = pa.get_runtime_context()["node_id"]
    victim_index = next(i for i, n in homes.items() if n != head_id)
    actor = Member.options(scheduling_strategy=in_bundle(pg, victim_index),
                           max_restarts=1).remote()
    assert pa.get(actor.where.remote(), timeout=GUARD_S)[0] == homes[victim_index]
    victim_pid = {v: k for k, v in three_nodes.node_ids().items()}[homes[victim_index]]
    os.kill(victim_pid, signal.SIGKILL)

    def moved() -> bool:
        row = placement_group_table(pg)
        return row["state"] == "CREATED" and \
            row["bundles_to_node_id"].get(victim_index, homes[victim_index]) != \
            homes[victim_index]
    assert wait_until(moved, 30)
    new_home = placement_group_table(pg)["bundles_to_node_id"][victim_index]
    assert new_home not in homes.values()
    assert wait_until(lambda: _where_or_none(actor) == new_home, 30)
    remove_placement_group(pg)


def _where_or_none(actor):
    try:
        return pa.get(actor.where.remote(), timeout=5)[0]
    except Exception:  # noqa: BLE001 - restarting: ask again
        return None
