"""A real head with 200 simulated nodes (pyactor/_private/sim_cluster.py, the pieces of
bench/cluster_sim.py): 2,000 actors created at once spread evenly with no node over its CPUs,
and when a tenth of the nodes die at once every actor they hosted is hosted again elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from pyactor._private.cluster import HEARTBEAT_S
from pyactor._private.sim_cluster import HeadProcess, SimCluster, SimDriver

NODES, ACTORS, CPUS = 200, 2000, 16


@pytest.fixture
async def sim():
    # A starved simulator (200 nodes in one process on a loaded host) must not lose nodes to
    # the heartbeat timeout; the deaths tested close their connections, detected at once.
    head = HeadProcess.start(env={"PYACTOR_NODE_TIMEOUT_S": "20"})
    cluster, driver = SimCluster(head), SimDriver(head)
    try:
        await cluster.add_nodes(NODES, {"CPU": CPUS})
        await driver.connect()
        yield cluster, driver
    finally:
        driver.close()
        cluster.close()
        head.stop()


@pytest.mark.slow
async def test_actors_spread_evenly_and_are_replaced_after_a_tenth_of_the_nodes_die(sim):
    """2,000 one-CPU actors on 200 nodes of 16 CPUs: all hosted, 10 per node give or take one,
    none over its CPUs; then 20 nodes die at once and every actor they hosted is hosted again
    on a live node, still within the CPUs of each."""
    cluster, driver = sim
    ids = await driver.create_actors(ACTORS, {"CPU": 1}, max_restarts=1)
    assert await cluster.wait_for(lambda: len(cluster.placements) == ACTORS, 60)
    spread = cluster.spread()
    assert spread["over_resources"] == 0
    assert spread["max"] - spread["min"] <= 2, spread

    await asyncio.sleep(3 * HEARTBEAT_S)  # heartbeats report what each node hosts
    victims = cluster.nodes[:NODES // 10]
    lost = [a for a in ids if cluster.placements[a] in victims]
    assert len(lost) >= 150
    for node in victims:
        node.die()
    assert await cluster.wait_for(lambda: all(cluster.placements[a].alive for a in lost), 30)
    survivors = cluster.alive_nodes()
    assert sum(len(node.hosted) for node in survivors) == ACTORS
    spread = cluster.spread(survivors)
    assert spread["over_resources"] == 0
    assert spread["max"] - spread["min"] <= 3, spread
    watcher = survivors[0]  # its view, from deltas, shows the dead as dead
    assert await cluster.wait_for(lambda: all(
        watcher.view.rows.get(node.node_id, [0] * 5)[4] is False for node in victims), 10)
