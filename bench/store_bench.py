"""Benchmark of the shared-memory object store: put/get throughput, round trips, fragmentation,
spilling to disk and reading back.

Baselines, measured in the same run: a put of N bytes is compared with a single-threaded
`numpy.copyto` of the same array into an existing (already faulted) array, and the 1 GB put also
with a two-thread `numpy.copyto` (each thread half, as the issue's target states it), timed in
turns; a get is pin + unpin and should not depend on the size. A spill (the node's Spiller: pin,
write the file, free) and a restore (allocate, read the file, seal) of a 256 MB object are
compared with `numpy.save` and `numpy.load` of the same array in the same folder, in turns; the
rows also give CPU seconds per GB of this process (every thread, user + system), which carries
over from a loaded machine better than the wall figures do. `numpy.load` reads the file
`numpy.save` just wrote, from the page cache; the restore reads from the disk (direct I/O
bypasses the cache), so `load_cold` (the same file after fsync and POSIX_FADV_DONTNEED) is given
as a second baseline. Every figure is a median over repetitions. A warm-up put faults the store's
pages first (tmpfs pages are allocated on first touch; a store in use reuses faulted space).

    python bench/store_bench.py            # a table
    python bench/store_bench.py --json     # one JSON object a line: name, value, unit, baseline, ratio
    python bench/store_bench.py --only put_1GB,spill   # some rows only
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
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


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_put_two_threads(store: ObjectStore, size: int, repetitions: int) -> dict:
    """Put (create + copy + seal + delete) of `size` bytes and a two-thread numpy.copyto of the
    same array into an existing array, in turns: GB/s (medians) and CPU s per GB of each. A
    third contender splits the difference: the store's own copy (pa_memcpy_parallel, 2 threads)
    into numpy's destination array, so put / copy_into_numpy is the cost of the destination
    (the segment's pages against numpy's, which are transparent huge pages where the kernel
    allows them for private memory) and copy_into_numpy / copyto2 that of the copy routine."""
    from pyactor._store_cffi import ffi, lib
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    half = size // 2

    def copyto_two_threads():
        helper = threading.Thread(target=np.copyto, args=(dst[:half], src[:half]))
        helper.start()
        np.copyto(dst[half:], src[half:])
        helper.join()

    def put(object_id):
        view = store.create_object(object_id, size)
        store.copy_into(view, src)
        store.seal(object_id)
        del view
        store.delete(object_id)

    def copy_into_numpy():
        lib.pa_memcpy_parallel(ffi.from_buffer(dst), ffi.from_buffer(src), size, 2)

    copyto_two_threads()
    put(oid(1 << 50))  # faults the store's pages in
    times = {"put": [], "copyto2": [], "copy_into_numpy": []}
    cpu = {name: 0.0 for name in times}
    for rep in range(repetitions):
        for name, run in (("put", lambda: put(oid((1 << 50) + 1 + rep))),
                          ("copyto2", copyto_two_threads), ("copy_into_numpy", copy_into_numpy)):
            cpu_start, start = cpu_seconds(), time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name] += cpu_seconds() - cpu_start
    gb = size / 1e9
    return {"put": gb / statistics.median(times["put"]),
            "copyto2": gb / statistics.median(times["copyto2"]),
            "copy_into_numpy": gb / statistics.median(times["copy_into_numpy"]),
            "paired": statistics.median(c / p for p, c in zip(times["put"], times["copyto2"])),
            **{f"{name}_cpu_per_gb": cpu[name] / (gb * repetitions) for name in cpu}}


def bench_spill(size: int, repetitions: int) -> dict:
    """The node's spill and restore of one `size`-byte object against numpy.save / numpy.load
    of the same array into the same folder (the default spill directory's disk), in turns."""
    from pyactor._private.spilling import Spiller, _write_file, default_spill_root
    from pyactor._store_cffi import lib
    MODES = {"hybrid": lib.PA_SPILL_HYBRID, "direct": lib.PA_SPILL_DIRECT_ONLY,
             "buffered": lib.PA_SPILL_BUFFERED}
    folder = tempfile.mkdtemp(prefix="bench-spill-", dir=os.path.dirname(default_spill_root()))
    array = np.ones(size // 8, dtype=np.float64)
    object_id = oid(3 << 40)
    store = ObjectStore.create(new_segment_name("bench-spill"), size + (1 << 20))
    spiller = Spiller(store, folder)
    names = ("spill", "restore", "save", "load", "load_cold", "write_hybrid", "write_direct",
             "write_buffered")
    times = {name: [] for name in names}
    cpu = {name: 0.0 for name in names}

    def timed(name, run):
        cpu_start, start = cpu_seconds(), time.perf_counter()
        result = run()
        times[name].append(time.perf_counter() - start)
        cpu[name] += cpu_seconds() - cpu_start
        return result

    def load_cold(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return timed("load_cold", lambda: np.load(path))

    async def rounds():
        store.put_bytes(object_id, array, evictable=False)  # faults the store's pages in
        freed, why = await spiller.make_room(store.capacity_bytes)
        assert freed and spiller.is_spilled(object_id), why
        await spiller.restore(object_id)
        store.delete(object_id)
        for _ in range(repetitions):
            store.put_bytes(object_id, array, evictable=False)  # a primary copy, as a put's
            cpu_start, start = cpu_seconds(), time.perf_counter()
            freed, why = await spiller.make_room(store.capacity_bytes)
            times["spill"].append(time.perf_counter() - start)
            assert freed and spiller.is_spilled(object_id), why
            cpu["spill"] += cpu_seconds() - cpu_start
            cpu_start, start = cpu_seconds(), time.perf_counter()
            await spiller.restore(object_id)
            times["restore"].append(time.perf_counter() - start)
            cpu["restore"] += cpu_seconds() - cpu_start
            store.delete(object_id)
            path = os.path.join(folder, "array.npy")
            timed("save", lambda: np.save(path, array))
            timed("load", lambda: np.load(path))
            load_cold(path)
            os.unlink(path)
            # the file I/O alone, by each kind of spill_io.c (the previous build wrote buffered)
            store.put_bytes(object_id, array, evictable=False)
            view = store.get(object_id)
            for name, mode in MODES.items():
                timed(f"write_{name}", lambda: _write_file(path, view, mode))
                os.unlink(path)
            del view
            store.delete(object_id)

    try:
        asyncio.run(rounds())
    finally:
        spiller.close()
        store.destroy()
        shutil.rmtree(folder, ignore_errors=True)
    gb = size / 1e9
    out = {name: gb / statistics.median(values) for name, values in times.items()}
    out.update({f"{name}_cpu_per_gb": cpu[name] / (gb * repetitions) for name in names})
    return out


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
    parser.add_argument("--only", default="", help="comma-separated groups: put, put_1GB, get, "
                        "roundtrip, fragmentation, spill (default: all)")
    parser.add_argument("--repetitions", type=int, default=7,
                        help="rounds of the put_1GB and spill rows")
    args = parser.parse_args(argv)
    only = {name for name in args.only.split(",") if name}
    wanted = (lambda group: not only or group in only)
    results = []

    def record(name, value, unit, baseline=None, **extra):
        ratio = value / baseline if baseline else None
        results.append({"name": name, "value": value, "unit": unit, "baseline": baseline,
                        "ratio": ratio, **extra})

    started = time.perf_counter()
    frag = None
    with ObjectStore.create(new_segment_name("bench"), 3 * GiB) as store:
        if wanted("put"):
            for label, size, repetitions in SIZES:
                put_gbs, copyto_gbs = bench_put(store, size, repetitions)
                record(f"put_{label}", put_gbs, "GB/s", copyto_gbs)
                gc.collect()
        if wanted("put_1GB"):
            two = bench_put_two_threads(store, GiB, args.repetitions)
            record("put_1GB_vs_2threads", two["put"], "GB/s", two["copyto2"],
                   paired_ratio=two["paired"], cpu_s_per_gb=two["put_cpu_per_gb"],
                   baseline_cpu_s_per_gb=two["copyto2_cpu_per_gb"])
            record("store_copy_into_numpy_1GB", two["copy_into_numpy"], "GB/s", two["copyto2"],
                   cpu_s_per_gb=two["copy_into_numpy_cpu_per_gb"],
                   baseline_cpu_s_per_gb=two["copyto2_cpu_per_gb"])
            gc.collect()
        if wanted("get"):
            for label, size in (("100MB", 100 * MiB), ("1GB", GiB)):
                record(f"get_{label}", bench_get(store, size), "us")
        if wanted("roundtrip"):
            record("roundtrip_1KB", bench_roundtrip(store), "ops/s")
    if wanted("spill"):
        disk = bench_spill(256 * MiB, args.repetitions)
        record("spill_256MB", disk["spill"], "GB/s", disk["save"],
               cpu_s_per_gb=disk["spill_cpu_per_gb"], baseline_cpu_s_per_gb=disk["save_cpu_per_gb"])
        record("restore_256MB", disk["restore"], "GB/s", disk["load"],
               cpu_s_per_gb=disk["restore_cpu_per_gb"],
               baseline_cpu_s_per_gb=disk["load_cpu_per_gb"])
        record("restore_256MB_vs_cold_load", disk["restore"], "GB/s", disk["load_cold"],
               cpu_s_per_gb=disk["restore_cpu_per_gb"],
               baseline_cpu_s_per_gb=disk["load_cold_cpu_per_gb"])
        for kind in ("hybrid", "direct", "buffered"):
            record(f"spill_file_{kind}", disk[f"write_{kind}"], "GB/s", disk["save"],
                   cpu_s_per_gb=disk[f"write_{kind}_cpu_per_gb"],
                   baseline_cpu_s_per_gb=disk["save_cpu_per_gb"])
    if wanted("fragmentation"):
        frag = bench_fragmentation()
        record("fragmentation", frag["fragmentation"], "ratio")

    if args.json:
        for row in results:
            print(json.dumps(row))
    else:
        print(f"{'name':<28}{'value':>12} {'unit':<6}{'baseline':>10}{'ratio':>8}"
              f"{'CPU s/GB':>10}{'baseline':>10}")
        for row in results:
            baseline = f"{row['baseline']:.2f}" if row["baseline"] else ""
            ratio = f"{row['ratio']:.2f}x" if row["ratio"] else ""
            cpu = f"{row['cpu_s_per_gb']:.3f}" if "cpu_s_per_gb" in row else ""
            cpu_base = (f"{row['baseline_cpu_s_per_gb']:.3f}"
                        if "baseline_cpu_s_per_gb" in row else "")
            print(f"{row['name']:<28}{row['value']:>12.2f} {row['unit']:<6}{baseline:>10}{ratio:>8}"
                  f"{cpu:>10}{cpu_base:>10}")
        print("baseline of put_<size>: single-threaded numpy.copyto into an existing array (GB/s);"
              " of put_1GB_vs_2threads and store_copy_into_numpy_1GB (the put's copy routine, into"
              " numpy's array): numpy.copyto by two threads (paired median ratio of the put "
              + ", ".join(f"{row['paired_ratio']:.2f}x" for row in results if "paired_ratio" in row)
              + "); of spill / restore: numpy.save / numpy.load (from the page cache), and "
              "numpy.load after fsync + POSIX_FADV_DONTNEED (cold)")
        if frag:
            print(f"fragmentation (1 - largest_free/free) after 20000 random ops near 80% fill: "
                  f"{frag['fragmentation']:.3f} (mean over the second half "
                  f"{frag['mean_fragmentation']:.3f}, fill {frag['fill']:.2f}, "
                  f"{frag['objects']} objects)")
        if args.threads_sweep:
            print(f"\n{'MB':>6}{'copyto':>10}{'1 thread':>10}{'2 threads':>11}  (GB/s)")
            for mb, memcpy_gbs, one, two in bench_copy_threads():
                print(f"{mb:>6}{memcpy_gbs:>10.2f}{one:>10.2f}{two:>11.2f}")
        print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
