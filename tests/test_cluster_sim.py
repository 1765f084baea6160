"""A real head with simulated nodes (pyactor/_private/sim_cluster.py; sim_fleet.py spreads them
over processes, as bench/cluster_sim.py does): 2,000 actors created at once on 200 nodes spread
evenly with no node over its CPUs, and when a tenth of the nodes die at once every actor they
hosted is hosted again elsewhere; a burst of actors sends the other nodes' load only to the
members that ask for it, while deaths reach every member."""

from __future__ import annotations

import asyncio

import pytest

from pyactor._private.cluster import HEARTBEAT_S
from pyactor._private.sim_cluster import HeadProcess, SimCluster, SimDriver
from pyactor._private.sim_fleet import SimFleet

NODES, ACTORS, CPUS = 200, 2000, 16
# A starved simulator (hundreds of nodes on a loaded host) must not lose nodes to the heartbeat
# timeout; the deaths tested close their connections, detected at once.
HEAD_ENV = {"PYACTOR_NODE_TIMEOUT_S": "20"}


@pytest.fixture
async def fleet():
    head = HeadProcess.start(env=HEAD_ENV)
    fleet, driver = SimFleet(head, processes=2), SimDriver(head)
    try:
        await fleet.start()
        await fleet.add_nodes(NODES, {"CPU": CPUS}, follow_load=2)
        await driver.connect()
        yield fleet, driver
    finally:
        driver.close()
        await fleet.close()
        head.stop()


@pytest.mark.slow
async def test_actors_spread_evenly_and_are_replaced_after_a_tenth_of_the_nodes_die(fleet):
    """2,000 one-CPU actors on 200 nodes of 16 CPUs in two simulator processes: all hosted, 10
    per node give or take one, none over its CPUs; then 20 nodes die at once, a survivor's view
    shows them dead, and every actor they hosted is hosted again on a live node, still within
    the CPUs of each."""
    fleet, driver = fleet
    ids = await driver.create_actors(ACTORS, {"CPU": 1}, max_restarts=1)
    assert await fleet.wait_for(lambda: len(fleet.placements) == ACTORS, 60)
    spread = await fleet.spread()
    assert spread["over_resources"] == 0 and spread["lost_nodes"] == 0
    assert spread["max"] - spread["min"] <= 2, spread

    await asyncio.sleep(3 * HEARTBEAT_S)  # heartbeats report what each node hosts
    victims = fleet.node_ids[:NODES // 10]
    lost = [a for a in ids if fleet.placements[a] in set(victims)]
    assert len(lost) >= 150
    await fleet.kill(victims)
    assert await fleet.watch_dead(victims, 10) is not None
    assert await fleet.wait_for(lambda: all(fleet.alive[fleet.placements[a]] for a in lost), 30)
    spread = await fleet.spread()
    assert spread["total"] == ACTORS
    assert spread["over_resources"] == 0
    assert spread["max"] - spread["min"] <= 3, spread


async def test_only_members_that_follow_the_load_are_sent_it_and_all_are_sent_deaths():
    """Five simulated nodes, one asking for the load: after actors are hosted on the others,
    its view shows their free CPUs go down while a member that does not ask still shows them
    as they joined; a node's death then reaches both."""
    head = HeadProcess.start(env=HEAD_ENV)
    cluster, driver = SimCluster(head), SimDriver(head)
    try:
        follower, *others = await cluster.add_nodes(5, {"CPU": 4}, follow_load=1)
        await driver.connect()
        await driver.create_actors(8, {"CPU": 1})
        assert await cluster.wait_for(lambda: len(cluster.placements) == 8, 20)
        busy = [node for node in others if node.hosted]
        bystander = next(node for node in others if node not in busy) if len(busy) < 4 \
            else others[-1]

        def free_cpus(viewer, node):
            row = viewer.view.rows.get(node.node_id)
            return None if row is None else row[3].get("CPU")
        assert await cluster.wait_for(lambda: all(
            free_cpus(follower, node) == node.available["CPU"] for node in busy), 10)
        assert all(free_cpus(bystander, node) == 4 for node in busy if node is not bystander)

        victim = busy[0]
        victim.die()
        for viewer in (follower, bystander):
            assert await cluster.wait_for(
                lambda: viewer.view.rows.get(victim.node_id, [0] * 5)[4] is False, 10)
    finally:
        driver.close()
        cluster.close()
        head.stop()
