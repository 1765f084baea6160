"""Where the CPU of an actor batch goes: N calls to one actor submitted, then gathered (the
microbenchmark's 1_1_actor_calls_async), with the CPU each party spends per call. On a shared
machine the rate moves with the neighbours' load, while CPU per call moves much less: compare
builds with these rows (bench/alternate_builds.py --script bench/actor_batch_cpu.py --rows ...).

    driver's user thread   .remote() of each call, then get          main_cpu_us
    driver's IO thread     send each call, resolve each answer       io_cpu_us
    the actor's process    run each call, answer it                  actor_process_cpu_us
    the driver's GC        collections the batch set off (any thread) gc_cpu_us, gc_per_1k_calls

Prints one {"name", "value", "unit"} object a line (medians of REPEATS batches; what
alternate_builds reads), or with --table a table. Thread CPU is exact (clock_gettime); a process's is in clock ticks (10 ms), so batches are
large enough for ticks to matter little.

Instruction and cache-miss counts do not move with the load at all; for the driver, per call:

    valgrind --tool=cachegrind --cache-sim=yes --LL=1048576,16,64 --D1=32768,8,64 \
        python bench/actor_batch_cpu.py --calls 2500 --repeats 4

minus the same with --repeats 0 (start-up and shutdown), divided by 10,000.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import threading
import time

import pyactor as pa


@pa.remote
class Target:
    def noop(self):
        return None

    def pid(self):
        return os.getpid()


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GcMeter:
    """CPU spent in collections, whichever thread of this process ran them."""

    def __init__(self):
        self.cpu_s = 0.0
        self.collections = 0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.cpu_s += time.thread_time() - self._started
            self.collections += 1

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)


def measure(calls: int, repeats: int) -> list[tuple[str, float, str]]:
    from pyactor._private import api
    runtime = api._runtime
    target = Target.remote()
    actor_pid = pa.get(target.pid.remote())
    pa.get([target.noop.remote() for _ in range(2000)])  # warm, and fill the task history

    def io_thread_cpu_s() -> float:
        box, done = [], threading.Event()
        runtime.run_in_loop(lambda: (box.append(time.thread_time()), done.set()))
        done.wait()
        return box[0]
    meter = GcMeter()
    samples: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            gc_cpu, collections = meter.cpu_s, meter.collections
            actor0, io0, main0 = process_cpu_s(actor_pid), io_thread_cpu_s(), time.thread_time()
            start = time.perf_counter()
            pa.get([target.noop.remote() for _ in range(calls)])
            elapsed = time.perf_counter() - start
            main1, io1, actor1 = time.thread_time(), io_thread_cpu_s(), process_cpu_s(actor_pid)
            for name, value in (
                    ("1_1_actor_calls_async", calls / elapsed),
                    ("main_cpu_us", (main1 - main0) / calls * 1e6),
                    ("io_cpu_us", (io1 - io0) / calls * 1e6),
                    ("actor_process_cpu_us", (actor1 - actor0) / calls * 1e6),
                    ("gc_cpu_us", (meter.cpu_s - gc_cpu) / calls * 1e6),
                    ("gc_per_1k_calls", (meter.collections - collections) / calls * 1e3)):
                samples.setdefault(name, []).append(value)
    finally:
        meter.close()
    units = {"1_1_actor_calls_async": "calls/s", "gc_per_1k_calls": "collections"}
    return [(name, statistics.median(values), units.get(name, "us/call"))
            for name, values in samples.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table", action="store_true", help="a table, not JSON lines")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 0:
        parser.error("--calls must be at least 1 and --repeats at least 0")
    pa.init(num_cpus=2)
    try:
        rows = measure(args.calls, args.repeats)
    finally:
        pa.shutdown()
    for name, value, unit in rows:
        if args.table:
            print(f"{name:<24} {value:12,.2f} {unit}")
        else:
            print(json.dumps({"name": name, "value": value, "unit": unit}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
