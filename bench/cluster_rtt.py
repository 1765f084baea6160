"""Why a task's round trip grows with the node count on one host: the design or CPU contention?

A driver on the head runs a no-op task and waits for it, one at a time (the median of
--tasks round trips), with the head alone and with 31 more nodes that are:

  simulated  SimNodes in this process (sim_cluster.py): the head and every view carry 32 rows,
             heartbeats arrive, views go out, but no other node's processes compete for the CPU;
  real       31 node daemons (each with its fork server and a worker), as `pyactor start` runs;

each with view deltas and with the whole view sent each beat (PYACTOR_VIEW_DELTAS=0, the head
before deltas). For the real clusters it also reports the CPU all node processes use while idle
(from /proc, a fraction of one core). If the simulated rows match the head alone and the real
ones do not, the growth is contention, not the design.

    python bench/cluster_rtt.py [--json] [--nodes 32] [--tasks 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time

import pyactor as pa
from pyactor._private.cluster import HEARTBEAT_S
from pyactor._private.sim_cluster import HeadProcess, SimCluster


@pa.remote
def noop() -> int:
    return 0


def round_trip_us(head: HeadProcess, tasks: int) -> float:
    pa.init(address=head.address, token=head.token.hex())
    try:
        for _ in range(tasks // 4):  # warm-up: lease, connections
            pa.get(noop.remote())
        timings = []
        for _ in range(tasks):
            start = time.perf_counter()
            pa.get(noop.remote())
            timings.append((time.perf_counter() - start) * 1e6)
        return statistics.median(timings)
    finally:
        pa.shutdown()


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes and all their descendants (workers, fork servers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, list(pids)
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


class SimulatedMembers:
    """SimNodes on an event loop in a thread of this process, heartbeating until closed."""

    def __init__(self, head: HeadProcess, count: int):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cluster = SimCluster(head)
        asyncio.run_coroutine_threadsafe(self.cluster.add_nodes(count, {"CPU": 1}),
                                         self.loop).result(60)

    def close(self) -> None:
        async def stop():
            self.cluster.close()
            await asyncio.sleep(0.1)  # the cancelled heartbeat task finishes
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def measure(kind: str, nodes: int, deltas: bool, tasks: int, window_s: float) -> dict:
    env = {"PYACTOR_VIEW_DELTAS": "1" if deltas else "0"}
    head = HeadProcess.start(num_cpus=1, env=env)
    members: list[HeadProcess] = []
    simulated = None
    try:
        if kind == "real":
            members = [HeadProcess.start(num_cpus=1, env=env, head=head)
                       for _ in range(nodes - 1)]
        elif kind == "simulated":
            simulated = SimulatedMembers(head, nodes - 1)
        time.sleep(4 * HEARTBEAT_S)  # joins settle
        pids = [head.proc.pid] + [m.proc.pid for m in members]
        cpu, start = tree_cpu_seconds(pids), time.monotonic()
        time.sleep(window_s)
        idle_cpu = (tree_cpu_seconds(pids) - cpu) / (time.monotonic() - start)
        rtt = round_trip_us(head, tasks)
        return {"cluster": kind, "nodes": nodes if kind != "alone" else 1,
                "view": "deltas" if deltas else "whole", "round_trip_us": round(rtt, 1),
                "idle_cpu_core_fraction": round(idle_cpu, 4)}
    finally:
        if simulated is not None:
            simulated.close()
        for member in members:
            member.stop()
        head.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--window", type=float, default=5.0, help="idle CPU window, s")
    args = parser.parse_args()
    runs = [("alone", True), ("simulated", True), ("simulated", False), ("real", True),
            ("real", False), ("alone", True)]  # alone twice: the load may drift
    rows = []
    for kind, deltas in runs:
        row = measure(kind, args.nodes, deltas, args.tasks, args.window)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print("(the machine is shared: round trips are medians, CPU is from /proc)")
        print(f"{'cluster':>10} {'nodes':>6} {'view':>7} {'round trip us':>14} "
              f"{'idle CPU (cores)':>17}")
        for row in rows:
            print(f"{row['cluster']:>10} {row['nodes']:>6} {row['view']:>7} "
                  f"{row['round_trip_us']:>14} {row['idle_cpu_core_fraction']:>17}")


if __name__ == "__main__":
    main()
