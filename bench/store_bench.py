"""Benchmark of the shared-memory object store: put/get throughput, round trips, fragmentation.

Baselines, measured in the same run: a put of N bytes is compared with a single-threaded
`numpy.copyto` of the same array into an existing (already faulted) array; a get is pin + unpin and
should not depend on the size. Every figure is a median over repetitions. A warm-up put faults the
store's pages first (tmpfs pages are allocated on first touch; a store in use reuses faulted space).

    python bench/store_bench.py            # a table
    python bench/store_bench.py --json     # one JSON object a line: name, value, unit, baseline, ratio
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time

import numpy as np

from pyactor._private.store import ObjectStore, new_segment_name
from pyactor.exceptions import ObjectStoreFullError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SIZES = [("1KB", KiB, 2000), ("1MB", MiB, 200), ("100MB", 100 * MiB, 7), ("1GB", GiB, 5)]


def oid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def median_seconds(fn, repetitions: int, batch: int = 1) -> float:
    """Median time of one call of fn, timing `batch` calls at a time."""
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def bench_put(store: ObjectStore, size: int, repetitions: int) -> tuple[float, float]:
    """(put GB/s, numpy.copyto GB/s) for an array of `size` bytes."""
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    batch = max(1, min(200, (8 * MiB) // size))
    copyto_s = median_seconds(lambda: np.copyto(dst, src), repetitions, batch)
    del dst
    ids = iter(range(1, 1 << 62))
    put_times = []
    for rep in range(repetitions + 1):  # the first round is the warm-up (faults the pages)
        batch_ids = [oid(next(ids)) for _ in range(batch)]
        start = time.perf_counter()
        for object_id in batch_ids:
            view = store.create_object(object_id, size)
            store.copy_into(view, src)
            store.seal(object_id)
        elapsed = (time.perf_counter() - start) / batch
        del view
        for object_id in batch_ids:
            store.delete(object_id)
        if rep:
            put_times.append(elapsed)
    return size / statistics.median(put_times) / 1e9, size / copyto_s / 1e9


def bench_get(store: ObjectStore, size: int) -> float:
    """Microseconds for get + np.frombuffer + drop (pin and unpin) of a `size`-byte object."""
    object_id = oid(1 << 40)
    view = store.create_object(object_id, size)
    view[:64] = b"\1" * 64
    store.seal(object_id)
    del view

    def get_and_drop():
        array = np.frombuffer(store.get(object_id), dtype=np.uint8)
        del array

    seconds = median_seconds(get_and_drop, 21, 500)
    store.delete(object_id)
    return seconds * 1e6


def bench_roundtrip(store: ObjectStore, count: int = 20_000) -> float:
    """1 KB put (create + copy + seal) + get + release, per second, in one process."""
    data = b"x" * KiB
    rates = []
    for rep in range(5):
        ids = [oid((2 << 40) + rep * count + i) for i in range(count)]
        start = time.perf_counter()
        for object_id in ids:
            store.put_bytes(object_id, data)
            view = store.get(object_id)
            del view
        rates.append(count / (time.perf_counter() - start))
        for object_id in ids:
            store.delete(object_id)
    return statistics.median(rates)


def bench_fragmentation(operations: int = 20_000, capacity: int = 256 * MiB) -> dict:
    """Random creates/deletes of 1 KB..1 MB (log-uniform) objects held near 80% fill."""
    rng = random.Random(42)
    with ObjectStore.create(new_segment_name("bench-frag"), capacity) as store:
        live: list[bytes] = []
        samples = []
        for step in range(operations):
            over = store.stats().used_bytes > 0.8 * capacity
            if live and (over or rng.random() < 0.45):
                store.delete(live.pop(rng.randrange(len(live))))
            else:
                size = int(2 ** rng.uniform(10, 20))
                object_id = oid(step + 1)
                try:
                    store.create_object(object_id, size, evictable=False)
                except ObjectStoreFullError:
                    continue
                store.seal(object_id)
                live.append(object_id)
            if step >= operations // 2 and step % 500 == 0:
                samples.append(store.stats().fragmentation)
        stats = store.stats()
        store.debug_check()
        return {"fragmentation": stats.fragmentation, "mean_fragmentation": statistics.mean(samples),
                "fill": stats.used_bytes / stats.capacity_bytes, "objects": stats.object_count}


def bench_copy_threads(sizes_mb=(4, 16, 32, 64, 128)) -> list[tuple[int, float, float, float]]:
    """(MB, memcpy GB/s, 1-thread streaming GB/s, 2-thread GB/s): where parallel copies pay."""
    from pyactor._store_cffi import ffi, lib
    rows = []
    for mb in sizes_mb:
        src = np.ones(mb * MiB, dtype=np.uint8)
        dst = np.ones_like(src)
        s, d = ffi.from_buffer(src), ffi.from_buffer(dst)
        reps = 11
        memcpy_s = median_seconds(lambda: np.copyto(dst, src), reps)
        one_s = median_seconds(lambda: lib.pa_memcpy_parallel(d, s, src.nbytes, 1), reps)
        two_s = median_seconds(lambda: lib.pa_memcpy_parallel(d, s, src.nbytes, 2), reps)
        rows.append((mb, src.nbytes / memcpy_s / 1e9, src.nbytes / one_s / 1e9, src.nbytes / two_s / 1e9))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--threads-sweep", action="store_true", help="also print the copy sweep")
    args = parser.parse_args(argv)
    results = []

    def record(name, value, unit, baseline=None):
        ratio = value / baseline if baseline else None
        results.append({"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio})

    started = time.perf_counter()
    with ObjectStore.create(new_segment_name("bench"), 3 * GiB) as store:
        for label, size, repetitions in SIZES:
            put_gbs, copyto_gbs = bench_put(store, size, repetitions)
            record(f"put_{label}", put_gbs, "GB/s", copyto_gbs)
            gc.collect()
        for label, size in (("100MB", 100 * MiB), ("1GB", GiB)):
            record(f"get_{label}", bench_get(store, size), "us")
        record("roundtrip_1KB", bench_roundtrip(store), "ops/s")
    frag = bench_fragmentation()
    record("fragmentation", frag["fragmentation"], "ratio")

    if args.json:
        for row in results:
            print(json.dumps(row))
    else:
        print(f"{'name':<16}{'value':>14} {'unit':<6}{'baseline':>12}{'ratio':>8}")
        for row in results:
            baseline = f"{row['baseline']:.2f}" if row["baseline"] else ""
            ratio = f"{row['ratio']:.2f}x" if row["ratio"] else ""
            print(f"{row['name']:<16}{row['value']:>14.2f} {row['unit']:<6}{baseline:>12}{ratio:>8}")
        print("baseline of put_*: single-threaded numpy.copyto into an existing array (GB/s)")
        print(f"fragmentation (1 - largest_free/free) after 20000 random ops near 80% fill: "
              f"{frag['fragmentation']:.3f} (mean over the second half {frag['mean_fragmentation']:.3f},"
              f" fill {frag['fill']:.2f}, {frag['objects']} objects)")
        if args.threads_sweep:
            print(f"\n{'MB':>6}{'copyto':>10}{'1 thread':>10}{'2 threads':>11}  (GB/s)")
            for mb, memcpy_gbs, one, two in bench_copy_threads():
                print(f"{mb:>6}{memcpy_gbs:>10.2f}{one:>10.2f}{two:>11.2f}")
        print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
