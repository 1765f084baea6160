"""The microbenchmark's task and actor rows, alone and short (about 10 s): for timing two builds
in alternation many times (bench/alternate_builds.py --script), where the full microbenchmark
would take minutes per run. Prints one JSON object a line: {"name", "value", "unit"}, medians
of REPEATS repetitions; the names are the microbenchmark's rows."""

from __future__ import annotations

import json
import statistics
import time

import pyactor as pa

REPEATS = 5
ONE_AT_A_TIME = 300
BATCH = 3000


@pa.remote
def noop():
    return None


@pa.remote
class Target:
    def noop(self):
        return None


def median_of(measure) -> float:
    return statistics.median(measure() for _ in range(REPEATS))


def per_call_us(call) -> float:
    start = time.perf_counter()
    for _ in range(ONE_AT_A_TIME):
        call()
    return (time.perf_counter() - start) / ONE_AT_A_TIME * 1e6


def per_second(submit) -> float:
    start = time.perf_counter()
    pa.get([submit() for _ in range(BATCH)])
    return BATCH / (time.perf_counter() - start)


def main() -> None:
    pa.init(num_cpus=2)
    target = Target.remote()
    pa.get([noop.remote() for _ in range(200)] + [target.noop.remote() for _ in range(200)])
    rows = [
        ("single_client_task_roundtrip", median_of(lambda: per_call_us(
            lambda: pa.get(noop.remote()))), "us"),
        ("single_client_tasks_and_get_batch", median_of(lambda: per_second(noop.remote)),
         "tasks/s"),
        ("1_1_actor_call_roundtrip", median_of(lambda: per_call_us(
            lambda: pa.get(target.noop.remote()))), "us"),
        ("1_1_actor_calls_async", median_of(lambda: per_second(target.noop.remote)),
         "calls/s"),
    ]
    pa.shutdown()
    for name, value, unit in rows:
        print(json.dumps({"name": name, "value": value, "unit": unit}))


if __name__ == "__main__":
    main()
