"""The head at scale: a real head process and up to thousands of simulated nodes in this one.

The simulated nodes (pyactor/_private/sim_cluster.py) speak the real protocol to the real head:
join, heartbeat, take view deltas, host actors without starting processes, die. Measured here:

  idle      the head's CPU (a fraction of one core, from /proc/<head>/stat) and bytes out per
            second (/proc/<head>/io wchar) at 100 / 500 / 1,000 / 2,000 idle nodes, with view
            deltas and, as the baseline in the same run (at the smaller sizes), with the whole
            view sent to every member each beat (PYACTOR_VIEW_DELTAS=0, the head before);
  placement 10,000 actors of 1 CPU created through the head on 64 and on 1,000 nodes: placements
            per second (first create to last actor hosted), placements per second of the
            head's CPU (what it does with a core of its own), and actors per node
            (max/min/stddev, nodes over their CPUs, offers a node had no room for);
  failure   10% of the 1,000 nodes die at once (connections closed, as when processes are
            killed; and silent, heartbeats stop): seconds until the head's view says they are
            dead, and from then until every actor they hosted (max_restarts=1) is hosted again.
            The silent case is detected after the head's node timeout, which this script sets
            to 10 s (--node-timeout): thousands of simulated nodes in one process on a loaded
            host can miss 3 s of heartbeats.

    python bench/cluster_sim.py [--json] [--sizes 100,250,500,1000,2000] [--window 5]
                                [--actors 10000] [--big 1000] [--only idle,placement,silent]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time

import uvloop

from pyactor._private.cluster import HEARTBEAT_S
from pyactor._private.sim_cluster import HeadProcess, SimCluster, SimDriver


NODE_TIMEOUT_S = "10"  # set by --node-timeout: a starved simulator must not lose its nodes


async def idle_rows(sizes: list[int], window_s: float, deltas: bool, emit) -> list[dict]:
    head = HeadProcess.start(env={"PYACTOR_VIEW_DELTAS": "1" if deltas else "0",
                                  "PYACTOR_NODE_TIMEOUT_S": NODE_TIMEOUT_S})
    cluster = SimCluster(head)
    rows = []
    try:
        for size in sizes:
            await cluster.add_nodes(size - len(cluster.nodes), {"CPU": 4})
            await asyncio.sleep(4 * HEARTBEAT_S)  # joins settle, every node acknowledged
            cpu, written, start = head.cpu_seconds(), head.bytes_written(), time.monotonic()
            await asyncio.sleep(window_s)
            elapsed = time.monotonic() - start
            cpu_fraction = (head.cpu_seconds() - cpu) / elapsed
            rows.append({"scenario": "idle", "view": "deltas" if deltas else "whole",
                         "nodes": size, "head_cpu_core_fraction": round(cpu_fraction, 4),
                         "head_cpu_ms_per_beat": round(cpu_fraction * HEARTBEAT_S * 1e3, 3),
                         "head_bytes_out_per_s": round((head.bytes_written() - written) / elapsed),
                         "pulls": sum(node.pulls for node in cluster.nodes),
                         "lost_nodes": len(cluster.nodes) - len(cluster.alive_nodes())})
            emit(rows[-1])
    finally:
        cluster.close()
        head.stop()
    return rows


async def placement_and_failure(nodes: int, actors: int, fail_fraction: float | None,
                                silent: bool = False) -> list[dict]:
    """Place `actors` on `nodes`; then, if asked, kill a fraction of the nodes and time the
    restarts."""
    cpus = max(4, math.ceil(actors / nodes * 1.6))  # room for all, and for the restarts
    head = HeadProcess.start(env={"PYACTOR_NODE_TIMEOUT_S": NODE_TIMEOUT_S})
    cluster = SimCluster(head)
    driver = SimDriver(head)
    rows = []
    try:
        await cluster.add_nodes(nodes, {"CPU": cpus})
        await driver.connect()
        await asyncio.sleep(4 * HEARTBEAT_S)
        cpu, start = head.cpu_seconds(), time.monotonic()
        ids = await driver.create_actors(actors, {"CPU": 1}, max_restarts=1)
        placed = await cluster.wait_for(lambda: len(cluster.placements) >= actors, 120)
        elapsed = max(cluster.hosted_at.values()) - start
        rows.append({"scenario": "placement", "nodes": nodes, "cpus_per_node": cpus,
                     "actors": actors, "all_placed": placed,
                     "placements_per_s": round(len(cluster.placements) / elapsed),
                     "seconds": round(elapsed, 3),
                     "head_cpu_core_fraction": round((head.cpu_seconds() - cpu) / elapsed, 3),
                     # what the head could place on one core of its own (the host is shared)
                     "placements_per_head_cpu_s": round(
                         len(cluster.placements) / max(head.cpu_seconds() - cpu, 0.01)),
                     "lost_nodes": len(cluster.nodes) - len(cluster.alive_nodes()),
                     **cluster.spread()})
        if fail_fraction is not None and placed:
            rows.append(await _fail(cluster, head, ids, nodes, fail_fraction, silent))
    finally:
        driver.close()
        cluster.close()
        head.stop()
    return rows


async def _fail(cluster: SimCluster, head: HeadProcess, ids: list[bytes], nodes: int,
                fraction: float, silent: bool) -> dict:
    await asyncio.sleep(4 * HEARTBEAT_S)  # heartbeats settle what was granted
    victims = cluster.nodes[:int(nodes * fraction)]
    watcher = cluster.nodes[-1]  # a survivor: what its view says
    lost = [actor_id for actor_id in ids if cluster.placements[actor_id] in victims]
    dead_ids = {node.node_id for node in victims}
    killed_at = time.monotonic()
    for node in victims:
        if silent:  # the process hangs: its heartbeats stop, its connection stays open
            node.alive = False
        else:
            node.die()
    detected = await cluster.wait_for(lambda: all(
        not watcher.view.rows.get(node_id, [0] * 5)[4] for node_id in dead_ids), 30)
    detected_at = time.monotonic()
    replaced = await cluster.wait_for(lambda: all(
        cluster.placements[a].alive for a in lost), 60)
    replaced_at = max(cluster.hosted_at[a] for a in lost)
    return {"scenario": "failure", "how": "silent" if silent else "killed", "nodes": nodes,
            "dead_nodes": len(victims), "actors_lost": len(lost),
            "all_detected": detected, "all_replaced": replaced,
            "detect_s": round(detected_at - killed_at, 3),
            "replace_after_detect_s": round(replaced_at - detected_at, 3),
            **cluster.spread()}


def print_table(rows: list[dict]) -> None:
    for scenario in ("idle", "placement", "failure"):
        chosen = [row for row in rows if row["scenario"] == scenario]
        if not chosen:
            continue
        keys = [k for k in chosen[0] if k != "scenario"]
        print(f"\n{scenario}")
        print("  ".join(f"{k:>14}" for k in keys))
        for row in chosen:
            print("  ".join(f"{str(row[k]):>14}" for k in keys))


async def main(args) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    emit = (lambda row: print(json.dumps(row), flush=True)) if args.json else (lambda row: None)
    only = set(args.only.split(","))
    rows = []

    def keep(new_rows):
        for row in new_rows:
            emit(row)
            rows.append(row)
    if "idle" in only:
        rows += await idle_rows(sizes, args.window, True, emit)
        rows += await idle_rows([int(n) for n in args.baseline_sizes.split(",")], args.window,
                                False, emit)
    if "placement" in only:
        keep(await placement_and_failure(64, args.actors, None))
        keep(await placement_and_failure(args.big, args.actors, 0.1))
    if "silent" in only:
        keep((await placement_and_failure(args.big, args.actors, 0.1, silent=True))[1:])
    if not args.json:
        print("(the machine is shared: CPU is from /proc of the head process alone)")
        print_table(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--sizes", default="100,250,500,1000,2000", help="idle cluster sizes")
    parser.add_argument("--baseline-sizes", default="100,250",
                        help="sizes for the whole-view baseline (beyond a few hundred nodes the "
                             "simulator cannot decode N views of N rows per beat)")
    parser.add_argument("--window", type=float, default=5.0, help="idle measuring window, s")
    parser.add_argument("--actors", type=int, default=10000)
    parser.add_argument("--node-timeout", default="10",
                        help="the head's PYACTOR_NODE_TIMEOUT_S (3 s by default in pyactor; "
                             "longer here so that a starved simulator keeps its nodes)")
    parser.add_argument("--big", type=int, default=1000, help="nodes of the big cluster")
    parser.add_argument("--only", default="idle,placement,silent",
                        help="scenarios: idle, placement (with the kill), silent")
    arguments = parser.parse_args()
    NODE_TIMEOUT_S = arguments.node_timeout
    sys.setrecursionlimit(10000)
    uvloop.run(main(arguments))
