"""Where should values stop travelling inline and go through the shared-memory store?

For each size, a task receives a numpy array of that size as its argument, once with every value
forced inline (serialized into the PushTask message) and once with every value forced into the
store (put once, passed by location, read zero-copy). The crossover is the smallest size at which
the store path is faster; serialization.INLINE_THRESHOLD_BYTES should sit near it.

    python bench/serialization_bench.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import pyactor as pa
from pyactor._private import serialization

SIZES = [1 << 10, 8 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20, 4 << 20]


@pa.remote
def size_of(array):
    return array.nbytes


def per_call_us(array: np.ndarray, calls: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pa.get([size_of.remote(array) for _ in range(calls)])
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pa.init(num_cpus=2)
    default = serialization.INLINE_THRESHOLD_BYTES
    rows = []
    try:
        pa.get([size_of.remote(np.zeros(1)) for _ in range(100)])
        for size in SIZES:
            array = np.ones(size // 8)
            calls = max(20, min(2000, (64 << 20) // size))
            serialization.INLINE_THRESHOLD_BYTES = 1 << 40  # everything inline
            inline_us = per_call_us(array, calls, 5)
            serialization.INLINE_THRESHOLD_BYTES = 0  # everything through the store
            store_us = per_call_us(array, calls, 5)
            rows.append((size, inline_us, store_us))
    finally:
        serialization.INLINE_THRESHOLD_BYTES = default
        pa.shutdown()
    crossover = next((size for size, inline, store in rows if store < inline), None)
    if args.json:
        for size, inline_us, store_us in rows:
            print(json.dumps({"name": f"arg_{size // 1024}KB_store_vs_inline", "value": store_us,
                              "unit": "us", "baseline": inline_us,
                              "ratio": store_us / inline_us}))
        print(json.dumps({"name": "crossover_bytes", "value": crossover, "unit": "bytes",
                          "baseline": default, "ratio": None}))
        return
    print(f"{'size':>10}  {'inline us/task':>15}  {'store us/task':>14}  store/inline")
    for size, inline_us, store_us in rows:
        print(f"{size // 1024:>8}KB  {inline_us:15.1f}  {store_us:14.1f}  {store_us / inline_us:.2f}")
    print(f"crossover: {crossover} bytes (threshold in use: {default} bytes)")


if __name__ == "__main__":
    main()
