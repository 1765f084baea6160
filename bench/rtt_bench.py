"""Task and actor round trips against a bare uvloop TCP round trip, measured in the same run.

The target (issue 12): `pa.get(f.remote())` and `pa.get(actor.f.remote())` within 2x of the
round trip of a small message between two uvloop processes on loopback. The three are measured
in turns, for several rounds, so all see the same machine:

    bare      this process (uvloop client) --64 bytes--> echo server process (uvloop, a plain
              asyncio.Protocol, no framing, no auth) --same bytes--> back
    bare unix the same over a Unix socket: what pyactor's calls to workers on this host travel
              on (transport.py, "Same host, no TCP"); shown so the runtime's own share of a
              round trip can be read against the transport it uses, not only against TCP
    task      pa.get(noop.remote())            driver -> leased worker -> driver
    actor     pa.get(actor.noop.remote())      driver -> actor process -> driver

Besides wall time (which a shared machine inflates), each row prints what carries over to a
quiet machine: the CPU seconds per round trip of every process involved (this process, all
threads, and the pyactor processes under it: node and workers; for the bare row, the client
and the echo server), and how often the driver's IO thread was switched in per call (its
context switches from /proc: 0 means the call never woke it).

    python bench/rtt_bench.py [--rounds 7] [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import time

import uvloop

import pyactor as pa

MESSAGE = b"x" * 64
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- the bare baseline
UNIX_NAME = f"\0pyactor-rtt-bench-{os.getpid()}"


def _echo_server(port_pipe) -> None:
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        unix_server = await loop.create_unix_server(Echo, port_pipe.recv())
        port_pipe.send(server.sockets[0].getsockname()[1])
        await loop.run_in_executor(None, port_pipe.recv)  # until the parent says stop
        server.close()
        unix_server.close()
    try:
        uvloop.run(serve())
    except EOFError:
        pass


def bare_round_trips_us(port: int | None, calls: int) -> list[float]:
    """Round trips of MESSAGE to the echo server, each timed (us), on a fresh uvloop client;
    port None: over its Unix socket."""
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        state = {"waiter": None, "got": 0}

        class Client(asyncio.Protocol):
            def data_received(self, data):
                state["got"] += len(data)
                if state["got"] >= len(MESSAGE):
                    state["got"] = 0
                    state["waiter"].set_result(None)

        if port is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(UNIX_NAME)  # (uvloop takes an abstract name only as a socket)
            transport, _ = await loop.create_unix_connection(Client, sock=sock)
        else:
            transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                                                          1)
        timings = []
        for index in range(calls + calls // 10):  # the first tenth warms up
            state["waiter"] = loop.create_future()
            started = time.perf_counter_ns()
            transport.write(MESSAGE)
            await state["waiter"]
            if index >= calls // 10:
                timings.append((time.perf_counter_ns() - started) / 1000)
        transport.close()
        return timings
    return uvloop.run(main())


# ---------------------------------------------------------------------------- pyactor rows
@pa.remote
def noop():
    return None


@pa.remote
class Target:
    def noop(self):
        return None


def timed_calls_us(call, calls: int) -> list[float]:
    for _ in range(calls // 10):
        call()
    timings = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        call()
        timings.append((clock() - started) / 1000)
    return timings


# ---------------------------------------------------------------------------- CPU accounting
def _cpu_s_of(pid: int) -> float:
    """utime + stime of a process, all its threads (seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _thread_switches(tid: int) -> int:
    """Context switches (voluntary + involuntary) of one thread of this process."""
    total = 0
    try:
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


class Meter:
    """CPU seconds of this process and of `others` (pids), and the IO thread's switches,
    between start() and stop()."""

    def __init__(self, others: list[int], io_tid: int | None):
        self.others, self.io_tid = others, io_tid

    def start(self) -> None:
        self._own = time.process_time()
        self._theirs = sum(map(_cpu_s_of, self.others))
        self._switches = _thread_switches(self.io_tid) if self.io_tid else 0

    def stop(self) -> tuple[float, float, int]:
        own = time.process_time() - self._own
        theirs = sum(map(_cpu_s_of, self.others)) - self._theirs
        switches = (_thread_switches(self.io_tid) - self._switches) if self.io_tid else 0
        return own, theirs, switches


# ---------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="round trips per row per round")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args(argv)

    parent_end, child_end = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=_echo_server,
                                                          args=(child_end,), daemon=True)
    server.start()
    parent_end.send(UNIX_NAME)
    port = parent_end.recv()

    pa.init(num_cpus=2)
    from pyactor._private.api import runtime_for_call
    io_tid = runtime_for_call()._thread.native_id
    target = Target.remote()
    pa.get([noop.remote() for _ in range(100)] + [target.noop.remote() for _ in range(100)])
    pyactor_pids = _descendants(os.getpid())
    pyactor_pids.remove(server.pid) if server.pid in pyactor_pids else None

    def calls(call):
        return lambda: timed_calls_us(call, args.calls)

    def task():
        return pa.get(noop.remote())

    def actor_call():
        return pa.get(target.noop.remote())
    rows = {
        "bare_uvloop_tcp_round_trip": (lambda: bare_round_trips_us(port, args.calls),
                                       [server.pid], None),
        "bare_uvloop_unix_round_trip": (lambda: bare_round_trips_us(None, args.calls),
                                        [server.pid], None),
        "task_round_trip": (calls(task), pyactor_pids, io_tid),
        "actor_round_trip": (calls(actor_call), pyactor_pids, io_tid),
    }
    results: dict[str, dict[str, list]] = {
        name: {"median_us": [], "mean_us": [], "own_cpu_us": [], "others_cpu_us": [],
               "io_switches": []} for name in rows}
    names = list(rows)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            body, others, tid = rows[name]
            meter = Meter(others, tid)
            meter.start()
            timings = body()
            own, theirs, switches = meter.stop()
            record = results[name]
            record["median_us"].append(statistics.median(timings))
            record["mean_us"].append(statistics.fmean(timings))
            record["own_cpu_us"].append(own / len(timings) * 1e6)
            record["others_cpu_us"].append(theirs / len(timings) * 1e6)
            record["io_switches"].append(switches / len(timings))
    pa.kill(target)
    pa.shutdown()
    parent_end.send("stop")
    server.join(timeout=10)
    if server.is_alive():
        server.kill()

    base = results["bare_uvloop_tcp_round_trip"]
    base_median = statistics.median(base["median_us"])
    base_mean = statistics.median(base["mean_us"])
    unix_median = statistics.median(results["bare_uvloop_unix_round_trip"]["median_us"])
    out = []
    for name, record in results.items():
        median = statistics.median(record["median_us"])
        mean = statistics.median(record["mean_us"])
        out.append({
            "name": name, "median_us": median, "mean_us": mean,
            "ratio_median": median / base_median, "ratio_mean": mean / base_mean,
            "ratio_per_round": [m / b for m, b in zip(record["median_us"], base["median_us"])],
            "ratio_median_vs_unix": median / unix_median,
            "own_cpu_us_per_call": statistics.median(record["own_cpu_us"]),
            "others_cpu_us_per_call": statistics.median(record["others_cpu_us"]),
            "io_thread_switches_per_call": statistics.median(record["io_switches"]),
            "rounds": args.rounds, "calls": args.calls, "load_average": os.getloadavg()[0]})
    if args.json:
        for row in out:
            print(json.dumps(row))
        return 0
    print(f"load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds x {args.calls} calls; "
          f"baseline: the bare uvloop TCP round trip of the same round (x unix: against the "
          f"bare Unix-socket one)")
    print(f"{'row':<28} {'median us':>10} {'mean us':>9} {'x bare':>7} {'x bare':>7} "
          f"{'x unix':>7} {'cpu us/call':>12} {'io wakes':>9}")
    print(f"{'':<28} {'':>10} {'':>9} {'median':>7} {'mean':>7} {'median':>7} "
          f"{'here+others':>12} {'per call':>9}")
    for row in out:
        cpu = f"{row['own_cpu_us_per_call']:.0f}+{row['others_cpu_us_per_call']:.0f}"
        print(f"{row['name']:<28} {row['median_us']:>10.1f} {row['mean_us']:>9.1f} "
              f"{row['ratio_median']:>7.2f} {row['ratio_mean']:>7.2f} "
              f"{row['ratio_median_vs_unix']:>7.2f} {cpu:>12} "
              f"{row['io_thread_switches_per_call']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
