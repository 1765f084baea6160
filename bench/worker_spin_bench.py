"""What the worker's hot wait (worker_spin.py) does to a round trip: spinning off and on in turns,
in one process, on the same actor and the same task worker.

The worker's spinner is switched through a call to it before each block, so both settings see the
same processes, connections and machine; blocks of `--calls` round trips alternate between the
settings for `--blocks` rounds, and each row is the median of the blocks' medians, with its
quartiles (the spread a shared machine gives). The baseline is the row with spinning off.

    python bench/worker_spin_bench.py [--blocks 30] [--calls 200] [--bound-us 200] [--table]
                                      [--no-crowd-check]

Rows (one JSON object a line: {"name", "value", "q1", "q3", "unit"}):

    actor_round_trip_spin_off_us / _on_us   pa.get(actor.noop.remote()), median us
    task_round_trip_spin_off_us / _on_us    pa.get(noop.remote()), median us
    actor_spin_caught / _missed / _crowded  per spinning wait of the actor, what ended it
                                            (the next call came; the bound passed; another task
                                            waited for a CPU), as fractions of its waits

`--no-crowd-check` lets the spin hold its CPU even when others wait for one (to see what that
costs on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyactor as pa

SETTINGS = ("off", "on")


def set_spinner(bound_ns: int, crowd_check: bool) -> tuple:
    """In a worker: spin up to bound_ns after each answer (0: not at all); what its spinner
    counted so far (caught, missed, crowded)."""
    import os

    from pyactor._private import api
    spinner = api.runtime_for_call().executor.spinner
    spinner.spin_ns = bound_ns
    spinner.spinning, spinner.resting, spinner.misses = bound_ns > 0, False, 0
    spinner.max_runnable = (os.cpu_count() or 1) if crowd_check else 1 << 30
    return spinner.caught, spinner.missed, spinner.crowded


@pa.remote
class Target:
    def noop(self):
        return None

    def set_spinner(self, bound_ns: int, crowd_check: bool) -> tuple:
        return set_spinner(bound_ns, crowd_check)


@pa.remote
def noop():
    return None


@pa.remote
def set_task_spinner(bound_ns: int, crowd_check: bool) -> tuple:
    return set_spinner(bound_ns, crowd_check)


def block_median_us(call, calls: int) -> float:
    clock = time.perf_counter_ns
    for _ in range(20):  # the setting's first waits are not timed
        pa.get(call())
    times = []
    for _ in range(calls):
        started = clock()
        pa.get(call())
        times.append(clock() - started)
    return statistics.median(times) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200, help="round trips per block")
    parser.add_argument("--bound-us", type=float, default=200.0, help="the spin's bound")
    parser.add_argument("--no-crowd-check", action="store_true")
    parser.add_argument("--table", action="store_true", help="a table instead of JSON lines")
    args = parser.parse_args(argv)

    pa.init(num_cpus=1)  # one task worker: the same one serves every block
    target = Target.remote()
    pa.get([target.noop.remote() for _ in range(100)])
    bound_ns = int(args.bound_us * 1000)
    crowd_check = not args.no_crowd_check
    samples: dict[str, list[float]] = {}
    counts_on = [0, 0, 0]
    for _ in range(args.blocks):
        for setting in SETTINGS:
            bound = bound_ns if setting == "on" else 0
            before = pa.get(target.set_spinner.remote(bound, crowd_check))
            samples.setdefault(f"actor_round_trip_spin_{setting}_us", []).append(
                block_median_us(target.noop.remote, args.calls))
            after = pa.get(target.set_spinner.remote(bound, crowd_check))
            if setting == "on":
                counts_on = [total + b - a for total, a, b in zip(counts_on, before, after)]
            pa.get(set_task_spinner.remote(bound, crowd_check))
            samples.setdefault(f"task_round_trip_spin_{setting}_us", []).append(
                block_median_us(noop.remote, args.calls))
    pa.get(target.set_spinner.remote(bound_ns, True))
    pa.kill(target)
    pa.shutdown()

    rows = []
    for name, values in samples.items():
        quartiles = statistics.quantiles(values) if len(values) > 1 else [values[0]] * 3
        rows.append({"name": name, "value": statistics.median(values), "q1": quartiles[0],
                     "q3": quartiles[2], "unit": "us"})
    waits = sum(counts_on) or 1
    for label, count in zip(("caught", "missed", "crowded"), counts_on):
        rows.append({"name": f"actor_spin_{label}", "value": count / waits, "unit": "fraction"})
    if not args.table:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{args.blocks} blocks x {args.calls} round trips per setting, alternated; spin bound "
          f"{args.bound_us:g} us, crowd check {'on' if crowd_check else 'off'}")
    baselines = {kind: statistics.median(samples[f"{kind}_round_trip_spin_off_us"])
                 for kind in ("actor", "task")}
    for row in rows:
        if row["unit"] == "us":
            kind = row["name"].split("_")[0]
            print(f"{row['name']:<32} {row['value']:8.1f} us  (q1 {row['q1']:.1f}, q3 "
                  f"{row['q3']:.1f})  {row['value'] / baselines[kind]:5.2f}x spin off")
        else:
            print(f"{row['name']:<32} {row['value']:8.2f} of the actor's waits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
