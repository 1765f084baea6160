"""The head at scale: a real head process and up to thousands of simulated nodes in a few others.

The simulated nodes (pyactor/_private/sim_cluster.py, spread over --procs processes by
sim_fleet.py) speak the real protocol to the real head: join, heartbeat, take view deltas, host
actors without starting processes, die. Measured here, CPU from /proc of each process:

  idle      the head's CPU (a fraction of one core, /proc/<head>/stat) and bytes out per second
            (/proc/<head>/io wchar) at 100 / 500 / 1,000 / 2,000 idle nodes; the simulator's
            own CPU beside it; and, as the baseline in the same run (smaller sizes), the head
            sending the whole view to every member each beat (PYACTOR_VIEW_DELTAS=0, the head
            before deltas);
  placement 10,000 actors of 1 CPU created through the head on 64 and on 1,000 nodes, all at
            once: placements per second of wall time (first create sent to last actor hosted),
            placements per second of the head's CPU, the head's, the simulator's and the
            driver's (this process) CPU per second of wall, and actors per node (max/min/stddev, nodes over their CPUs, offers
            a node had no room for and sent back). --load-followers nodes (10 by default) ask for
            the other nodes' load, as nodes that spill work do; the rest are sent membership
            changes only (cluster.py);
  failure   then 10% of the 1,000 nodes die at once (connections closed, as when processes are
            killed; `silent`: heartbeats stop, connections stay open): seconds until a
            survivor's view says they are dead, and from then until every actor they hosted
            (max_restarts=1) is hosted again on a live node.
            The silent case is detected after the head's node timeout (--node-timeout, 10 s
            here: a few simulator processes on a loaded host can miss 3 s of heartbeats).

    python bench/cluster_sim.py [--json] [--sizes 100,500,1000,2000] [--window 5] [--procs 3]
                                [--actors 10000] [--big 1000] [--only idle,placement,silent]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time

import uvloop

from pyactor._private.cluster import HEARTBEAT_S
from pyactor._private.sim_cluster import HeadProcess, SimDriver
from pyactor._private.sim_fleet import SimFleet


class Bench:
    def __init__(self, args):
        self.args = args

    def head_env(self, deltas: bool = True) -> dict:
        return {"PYACTOR_VIEW_DELTAS": "1" if deltas else "0",
                "PYACTOR_NODE_TIMEOUT_S": self.args.node_timeout}

    async def idle_rows(self, sizes: list[int], deltas: bool, emit) -> list[dict]:
        head = HeadProcess.start(env=self.head_env(deltas))
        fleet = SimFleet(head, self.args.procs)
        rows = []
        try:
            await fleet.start()
            for size in sizes:
                await fleet.add_nodes(size - len(fleet.node_ids), {"CPU": 4})
                await asyncio.sleep(4 * HEARTBEAT_S)  # joins settle, every node acknowledged
                cpu, sim_cpu = head.cpu_seconds(), await fleet.cpu_seconds()
                written, start = head.bytes_written(), time.monotonic()
                await asyncio.sleep(self.args.window)
                elapsed = time.monotonic() - start
                head_fraction = (head.cpu_seconds() - cpu) / elapsed
                sim_fraction = (await fleet.cpu_seconds() - sim_cpu) / elapsed
                spread = await fleet.spread()
                rows.append({"scenario": "idle", "view": "deltas" if deltas else "whole",
                             "nodes": size, "head_cpu_core_fraction": round(head_fraction, 4),
                             "head_cpu_ms_per_beat": round(head_fraction * HEARTBEAT_S * 1e3, 3),
                             "head_bytes_out_per_s": round(
                                 (head.bytes_written() - written) / elapsed),
                             "sim_cpu_core_fraction": round(sim_fraction, 3),
                             "load_avg_1m": os.getloadavg()[0],
                             "pulls": spread["pulls"], "lost_nodes": spread["lost_nodes"]})
                emit(rows[-1])
        finally:
            await fleet.close()
            head.stop()
        return rows

    async def placement_and_failure(self, nodes: int, fail_fraction: float | None,
                                    silent: bool = False) -> list[dict]:
        """Place the actors on `nodes`; then, if asked, kill a fraction of the nodes and time
        the restarts."""
        actors = self.args.actors
        cpus = max(4, math.ceil(actors / nodes * 1.6))  # room for all, and for the restarts
        head = HeadProcess.start(env=self.head_env())
        fleet = SimFleet(head, self.args.procs)
        driver = SimDriver(head)
        rows = []
        try:
            await fleet.start()
            await fleet.add_nodes(nodes, {"CPU": cpus}, follow_load=self.args.load_followers)
            await driver.connect()
            await asyncio.sleep(4 * HEARTBEAT_S)
            cpu, sim_cpu = head.cpu_seconds(), await fleet.cpu_seconds()
            written, driver_cpu = head.bytes_written(), time.process_time()
            start = time.monotonic()
            ids = await driver.create_actors(actors, {"CPU": 1}, max_restarts=1)
            placed = await fleet.wait_for(lambda: len(fleet.placements) >= actors, 120)
            elapsed = max(fleet.hosted_at.values()) - start
            head_cpu = head.cpu_seconds() - cpu
            driver_cpu = time.process_time() - driver_cpu
            sim_cpu = await fleet.cpu_seconds() - sim_cpu
            rows.append({"scenario": "placement", "nodes": nodes, "cpus_per_node": cpus,
                         "actors": actors, "all_placed": placed,
                         "placements_per_s": round(len(fleet.placements) / elapsed),
                         "seconds": round(elapsed, 3),
                         "head_cpu_s": round(head_cpu, 3),
                         "head_cpu_core_fraction": round(head_cpu / elapsed, 3),
                         # what the head could place on one core of its own (the host is shared)
                         "placements_per_head_cpu_s": round(len(fleet.placements) /
                                                            max(head_cpu, 0.01)),
                         "sim_cpu_core_fraction": round(sim_cpu / elapsed, 3),
                         # this process: the driver's creations and the fleet's reports
                         "driver_cpu_core_fraction": round(driver_cpu / elapsed, 3),
                         "head_bytes_out": head.bytes_written() - written,
                         "load_avg_1m": os.getloadavg()[0],
                         **await fleet.spread()})
            if fail_fraction is not None and placed:
                rows.append(await self.fail(fleet, head, ids, nodes, fail_fraction, silent))
        finally:
            driver.close()
            await fleet.close()
            head.stop()
        return rows

    async def fail(self, fleet: SimFleet, head: HeadProcess, ids: list[bytes], nodes: int,
                   fraction: float, silent: bool) -> dict:
        await asyncio.sleep(4 * HEARTBEAT_S)  # heartbeats settle what was granted
        victims = fleet.node_ids[:int(nodes * fraction)]
        dead = set(victims)
        lost = [actor_id for actor_id in ids if fleet.placements[actor_id] in dead]
        cpu = head.cpu_seconds()
        killed_at = time.monotonic()
        await fleet.kill(victims, silent=silent)
        detected_at = await fleet.watch_dead(victims, 60)
        replaced = await fleet.wait_for(lambda: all(
            fleet.alive[fleet.placements[a]] for a in lost), 60)
        replaced_at = max(fleet.hosted_at[a] for a in lost)
        return {"scenario": "failure", "how": "silent" if silent else "killed", "nodes": nodes,
                "dead_nodes": len(victims), "actors_lost": len(lost),
                "all_detected": detected_at is not None, "all_replaced": replaced,
                "detect_s": round(detected_at - killed_at, 3) if detected_at else None,
                "replace_after_detect_s": round(replaced_at - detected_at, 3)
                if detected_at else None,
                "replace_after_kill_s": round(replaced_at - killed_at, 3),
                "head_cpu_s": round(head.cpu_seconds() - cpu, 3),
                "load_avg_1m": os.getloadavg()[0],
                **await fleet.spread()}


def print_table(rows: list[dict]) -> None:
    for scenario in ("idle", "placement", "failure"):
        chosen = [row for row in rows if row["scenario"] == scenario]
        if not chosen:
            continue
        keys = [k for k in chosen[0] if k != "scenario"]
        print(f"\n{scenario}")
        for row in chosen:
            print("  " + "  ".join(f"{k}={row[k]}" for k in keys))


async def main(args) -> None:
    bench = Bench(args)
    emit = (lambda row: print(json.dumps(row), flush=True)) if args.json else (lambda row: None)
    only = set(args.only.split(","))
    rows = []

    def keep(new_rows):
        for row in new_rows:
            emit(row)
            rows.append(row)
    if "idle" in only:
        rows += await bench.idle_rows([int(s) for s in args.sizes.split(",")], True, emit)
        if args.baseline_sizes:
            rows += await bench.idle_rows([int(n) for n in args.baseline_sizes.split(",")],
                                          False, emit)
    if "placement" in only:
        keep(await bench.placement_and_failure(64, None))
        keep(await bench.placement_and_failure(args.big, 0.1))
    if "silent" in only:
        keep((await bench.placement_and_failure(args.big, 0.1, silent=True))[1:])
    if not args.json:
        print(f"(CPU from /proc of the head process, and of the {args.procs} simulator "
              f"processes apart; load average when each row was taken)")
        print_table(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--sizes", default="100,500,1000,2000", help="idle cluster sizes")
    parser.add_argument("--baseline-sizes", default="100,250",
                        help="sizes for the whole-view baseline ('' for none; beyond a few "
                             "hundred nodes the simulator cannot decode N views of N rows a beat)")
    parser.add_argument("--window", type=float, default=5.0, help="idle measuring window, s")
    parser.add_argument("--procs", type=int, default=3, help="simulator processes")
    parser.add_argument("--actors", type=int, default=10000)
    parser.add_argument("--load-followers", type=int, default=10,
                        help="simulated nodes that ask for the other nodes' load")
    parser.add_argument("--node-timeout", default="10",
                        help="the head's PYACTOR_NODE_TIMEOUT_S (3 s by default in pyactor; "
                             "longer here so that a starved simulator keeps its nodes)")
    parser.add_argument("--big", type=int, default=1000, help="nodes of the big cluster")
    parser.add_argument("--only", default="idle,placement,silent",
                        help="scenarios: idle, placement (with the kill), silent")
    uvloop.run(main(parser.parse_args()))
