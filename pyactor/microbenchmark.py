"""`pyactor microbenchmark`: the hot paths, timed, with the rows of `ray microbenchmark`.

Each row runs its body several times and reports the median rate. Rows with a natural baseline
(memory bandwidth for puts) print it and the ratio, measured in the same run. `--json` prints one
JSON object a line: {"name", "value", "unit", "baseline", "ratio"}.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import pyactor as pa


# Every row this benchmark prints, and what it times. The README's table names its rows by these
# names, so a figure there can be found here (tests/test_cli.py checks both).
ROWS = {
    "startup_init_task_shutdown": "start-up: fresh process, init + one task + shutdown",
    "single_client_get_calls": "get of a small value",
    "single_client_put_calls": "put of a small value",
    "single_client_put_100MB": "put of 100 MB, vs a two-thread numpy.copyto",
    "single_client_get_100MB": "get of 100 MB (zero-copy)",
    "single_client_put_1GB": "put of 1 GB, vs a two-thread numpy.copyto",
    "single_client_get_1GB": "get of 1 GB (zero-copy)",
    "single_client_tasks_sync": "tasks one at a time (submit, then get)",
    "single_client_task_roundtrip": "task round trip, one at a time",
    "single_client_tasks_and_get_batch": "no-op tasks submitted, then gathered",
    "single_client_tasks_async": "tasks awaited with asyncio.gather",
    "single_client_task_chain_1000": "chain of 1,000 dependent tasks",
    "1_1_actor_calls_sync": "actor calls one at a time",
    "1_1_actor_call_roundtrip": "actor call round trip",
    "1_1_actor_calls_async": "calls to one actor, submitted then gathered",
    "1_1_actor_calls_concurrent": "calls to one threaded actor (max_concurrency=16)",
    "1_1_async_actor_calls_sync": "async actor calls one at a time",
    "1_1_async_actor_calls_async": "async actor calls, submitted then gathered",
    "1_1_async_actor_calls_with_args_async": "async actor calls with a 64-byte argument",
    "1_n_actor_calls_async": "one driver calling 4 actors",
    "1_n_async_actor_calls_async": "one driver calling 4 async actors",
    "n_n_actor_calls_async": "2 actors each calling its own actor",
    "n_n_actor_calls_with_arg_async": "2 actors each calling its own actor, with an argument",
    "n_n_async_actor_calls_async": "2 actors each calling its own async actor",
    "client_wait_1k_refs": "wait on 1,000 refs",
    "client_wait_1k_ready_refs": "wait on 1,000 refs already ready, vs a Python loop that "
                                 "looks each up",
    "spill_to_disk": "spill of a 256 MB object to disk, vs numpy.save of the array",
    "restore_from_disk": "restore of a spilled 256 MB object, vs numpy.load of the array",
    "generator_items": "items of one generator task, vs the same items from separate tasks",
    "actor_pool_map": "ActorPool.map over 2 actors, vs Pool(2).map of the same function",
    "placement_group_create_ready_remove": "placement group create + ready + remove, vs a task "
                                           "on a new lease",
}


@dataclass(frozen=True)
class Row:
    name: str  # one of ROWS
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    note: str = ""

    def __post_init__(self):
        if self.name not in ROWS:
            raise ValueError(f"benchmark row {self.name!r} is not in ROWS")


def median_rate(body: Callable[[], int], repeats: int) -> float:
    """Median over `repeats` runs of (operations done by body) / seconds."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = body()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def median_seconds(body: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        body()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pa.remote
def noop(*_args):
    return None


@pa.remote
def increment(x):
    return x + 1


@pa.remote
def stream_items(n):
    for i in range(n):
        yield i


def double(x):
    return 2 * x


@pa.remote
class Actor:
    def small(self, *_args):
        return b"ok"

    def double(self, x):
        return 2 * x


@pa.remote
class AsyncActor:
    async def small(self, *_args):
        return b"ok"


@pa.remote
class Client:
    """Calls other actors, for the 1:n and n:n rows."""

    def call_many(self, targets, calls_each: int, with_arg: bool) -> int:
        payload = b"x" * 64
        refs = []
        for _ in range(calls_each):
            for target in targets:
                refs.append(target.small.remote(payload) if with_arg else target.small.remote())
        pa.get(refs)
        return len(refs)


def put_and_copyto_gbps(size_bytes: int, repeats: int) -> tuple[float, float]:
    """GB/s of pa.put of an array and of numpy.copyto of it into an existing array by two
    threads (each half), measured in turns so that both see the same machine."""
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    half = len(src) // 2

    def copyto_two_threads():
        helper = threading.Thread(target=np.copyto, args=(dst[:half], src[:half]))
        helper.start()
        np.copyto(dst[half:], src[half:])
        helper.join()
    copyto_two_threads()  # fault the pages in
    pa.get(pa.put(src))  # warm: the store's pages are faulted in once, as in a running app
    puts, copies = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ref = pa.put(src)
        puts.append(time.perf_counter() - start)
        del ref
        copies.append(median_seconds(copyto_two_threads, 1))
    return size_bytes / statistics.median(puts) / 1e9, \
        size_bytes / statistics.median(copies) / 1e9


def wait_ready_us(repeats: int) -> tuple[float, float]:
    """Microseconds of pa.wait on 1,000 ready refs, and of the least a Python loop does to
    answer the same question (look each ref up, check its state), in turns."""
    from pyactor._private.api import runtime_for_call
    refs = [noop.remote() for _ in range(1000)]
    pa.get(refs)
    entries = runtime_for_call().refs.entries
    waits, loops = [], []
    for _ in range(max(repeats, 3) * 40):
        start = time.perf_counter()
        pa.wait(refs, num_returns=len(refs))
        middle = time.perf_counter()
        [ref for ref in refs if entries[ref.id].state != 0]
        loops.append(time.perf_counter() - middle)
        waits.append(middle - start)
    return statistics.median(waits) * 1e6, statistics.median(loops) * 1e6


def spill_restore_gbps(size_bytes: int, repeats: int) -> dict[str, float]:
    """GB/s of a node's spill of one object (pin, write the file, free it) and of its restore
    (allocate, read the file, seal), against numpy.save and numpy.load of the same array into
    the same folder (the default spill directory's disk)."""
    import os
    import shutil
    import tempfile
    from pyactor._private.spilling import Spiller, default_spill_root
    from pyactor._private.store import ObjectStore, new_segment_name
    folder = tempfile.mkdtemp(prefix="bench-spill-", dir=os.path.dirname(default_spill_root()))
    array = np.ones(size_bytes // 8, dtype=np.float64)
    object_id = b"spill-benchmark-obj!"
    store = ObjectStore.create(new_segment_name("bench"), size_bytes + (1 << 20))
    spiller = Spiller(store, folder)
    times: dict[str, list] = {"spill": [], "restore": [], "save": [], "load": []}

    async def rounds():
        for _ in range(repeats + 1):  # the first faults the store's pages in
            store.put_bytes(object_id, array, evictable=False)  # a primary copy, as a put's
            start = time.perf_counter()
            freed, why = await spiller.make_room(store.capacity_bytes)
            middle = time.perf_counter()
            assert freed and spiller.is_spilled(object_id), why
            await spiller.restore(object_id)
            times["spill"].append(middle - start)
            times["restore"].append(time.perf_counter() - middle)
            store.delete(object_id)
            path = os.path.join(folder, "array.npy")
            start = time.perf_counter()
            np.save(path, array)
            middle = time.perf_counter()
            loaded = np.load(path)
            times["save"].append(middle - start)
            times["load"].append(time.perf_counter() - middle)
            del loaded
            os.unlink(path)
    try:
        asyncio.run(rounds())
    finally:
        spiller.close()
        store.destroy()
        shutil.rmtree(folder, ignore_errors=True)
    return {name: size_bytes / statistics.median(values[1:]) / 1e9
            for name, values in times.items()}


def get_large_us(size_bytes: int, repeats: int) -> float:
    ref = pa.put(np.ones(size_bytes // 8, dtype=np.float64))
    pa.get(ref)

    def once():
        value = pa.get(ref)
        del value
    return median_seconds(once, max(repeats, 20)) * 1e6


def startup_seconds(repeats: int) -> float:
    code = ("import time; t=time.perf_counter(); import pyactor as pa; pa.init(); "
            "f=pa.remote(lambda: 1); pa.get(f.remote()); pa.shutdown(); "
            "print(time.perf_counter()-t)")
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def run(quick: bool) -> list[Row]:
    repeats = 3 if quick else 5
    n = 2_000 if quick else 10_000
    rows: list[Row] = []

    rows.append(Row("startup_init_task_shutdown", startup_seconds(3 if quick else 5), "s",
                    note="fresh process: import, init, one task, shutdown"))

    pa.init(ignore_reinit_error=True)
    pa.get([noop.remote() for _ in range(200)])  # warm the workers

    # --- objects
    small = pa.put(0)
    rows.append(Row("single_client_get_calls", median_rate(
        lambda: [pa.get(small) for _ in range(n)] and n, repeats), "ops/s"))
    rows.append(Row("single_client_put_calls", median_rate(
        lambda: [pa.put(0) for _ in range(n)] and n, repeats), "ops/s"))
    for label, size in (("100MB", 100 << 20), ("1GB", 1 << 30)):
        if quick and label == "1GB":
            continue
        value, baseline = put_and_copyto_gbps(size, repeats)
        rows.append(Row(f"single_client_put_{label}", value, "GB/s", baseline, value / baseline,
                        note="baseline: numpy.copyto by two threads"))
        rows.append(Row(f"single_client_get_{label}", get_large_us(size, repeats), "us",
                        note="zero-copy: constant time"))
    disk = spill_restore_gbps((64 if quick else 256) << 20, repeats)
    rows.append(Row("spill_to_disk", disk["spill"], "GB/s", disk["save"],
                    disk["spill"] / disk["save"], note="baseline: numpy.save"))
    rows.append(Row("restore_from_disk", disk["restore"], "GB/s", disk["load"],
                    disk["restore"] / disk["load"], note="baseline: numpy.load"))

    # --- tasks
    rows.append(Row("single_client_tasks_sync", median_rate(
        lambda: [pa.get(noop.remote()) for _ in range(n // 4)] and n // 4, repeats), "tasks/s"))
    rows.append(Row("single_client_task_roundtrip", 1e6 / median_rate(
        lambda: [pa.get(noop.remote()) for _ in range(n // 4)] and n // 4, repeats), "us"))
    rows.append(Row("single_client_tasks_and_get_batch", median_rate(
        lambda: len(pa.get([noop.remote() for _ in range(n)])), repeats), "tasks/s"))

    async def async_tasks():
        await asyncio.gather(*[noop.remote() for _ in range(n)])
        return n
    rows.append(Row("single_client_tasks_async", median_rate(
        lambda: asyncio.run(async_tasks()), repeats), "tasks/s"))

    def chain():
        ref = increment.remote(0)
        for _ in range(999):
            ref = increment.remote(ref)
        assert pa.get(ref) == 1000
        return 1000
    rows.append(Row("single_client_task_chain_1000", median_rate(chain, repeats), "tasks/s"))

    # --- actors
    actor = Actor.remote()
    pa.get(actor.small.remote())
    rows.append(Row("1_1_actor_calls_sync", median_rate(
        lambda: [pa.get(actor.small.remote()) for _ in range(n // 4)] and n // 4, repeats),
        "calls/s"))
    rows.append(Row("1_1_actor_call_roundtrip", 1e6 / median_rate(
        lambda: [pa.get(actor.small.remote()) for _ in range(n // 4)] and n // 4, repeats),
        "us"))
    rows.append(Row("1_1_actor_calls_async", median_rate(
        lambda: len(pa.get([actor.small.remote() for _ in range(n)])), repeats), "calls/s"))

    threaded = Actor.options(max_concurrency=16).remote()
    pa.get(threaded.small.remote())
    rows.append(Row("1_1_actor_calls_concurrent", median_rate(
        lambda: len(pa.get([threaded.small.remote() for _ in range(n)])), repeats), "calls/s"))

    async_actor = AsyncActor.remote()
    pa.get(async_actor.small.remote())
    rows.append(Row("1_1_async_actor_calls_sync", median_rate(
        lambda: [pa.get(async_actor.small.remote()) for _ in range(n // 4)] and n // 4,
        repeats), "calls/s"))
    rows.append(Row("1_1_async_actor_calls_async", median_rate(
        lambda: len(pa.get([async_actor.small.remote() for _ in range(n)])), repeats),
        "calls/s"))
    rows.append(Row("1_1_async_actor_calls_with_args_async", median_rate(
        lambda: len(pa.get([async_actor.small.remote(b"x" * 64) for _ in range(n)])),
        repeats), "calls/s"))

    targets = [Actor.remote() for _ in range(4)]
    async_targets = [AsyncActor.remote() for _ in range(4)]
    pa.get([t.small.remote() for t in targets + async_targets])
    rows.append(Row("1_n_actor_calls_async", median_rate(
        lambda: len(pa.get([t.small.remote() for _ in range(n // 4) for t in targets])),
        repeats), "calls/s"))
    rows.append(Row("1_n_async_actor_calls_async", median_rate(
        lambda: len(pa.get([t.small.remote() for _ in range(n // 4) for t in async_targets])),
        repeats), "calls/s"))

    clients = [Client.remote() for _ in range(2)]
    pairs = list(zip(clients, targets[:2]))
    rows.append(Row("n_n_actor_calls_async", median_rate(
        lambda: sum(pa.get([c.call_many.remote([t], n // 2, False) for c, t in pairs])),
        repeats), "calls/s"))
    rows.append(Row("n_n_actor_calls_with_arg_async", median_rate(
        lambda: sum(pa.get([c.call_many.remote([t], n // 2, True) for c, t in pairs])),
        repeats), "calls/s"))
    async_pairs = list(zip(clients, async_targets[:2]))
    rows.append(Row("n_n_async_actor_calls_async", median_rate(
        lambda: sum(pa.get([c.call_many.remote([t], n // 2, False) for c, t in async_pairs])),
        repeats), "calls/s"))

    # --- streaming generators: n items yielded by one task vs the same n items returned by
    # n separate tasks (submitted together, then gathered)
    baseline = median_rate(lambda: len(pa.get([increment.remote(i) for i in range(n)])),
                           repeats)
    value = median_rate(lambda: len(pa.get(list(stream_items.remote(n)))), repeats)
    rows.append(Row("generator_items", value, "items/s", baseline, value / baseline,
                    note="baseline: the same items returned by separate tasks"))

    # --- ActorPool.map over two actors vs the drop-in Pool.map (2 processes) of one function
    from pyactor.multiprocessing import Pool
    from pyactor.util import ActorPool
    with Pool(2) as mp_pool:
        baseline = median_rate(lambda: len(mp_pool.map(double, range(n // 4))), repeats)
    pool_actors = [Actor.remote() for _ in range(2)]
    actor_pool = ActorPool(pool_actors)
    value = median_rate(lambda: len(list(actor_pool.map(
        lambda a, v: a.double.remote(v), range(n // 4)))), repeats)
    rows.append(Row("actor_pool_map", value, "items/s", baseline, value / baseline,
                    note="baseline: pyactor.multiprocessing Pool(2).map"))

    # --- placement groups: create + ready + remove, one after another, vs the path ready()
    # takes without a group (a zero-CPU task of a shape never seen, so it needs a new lease)
    from pyactor.util import placement_group, remove_placement_group
    groups = 20 if quick else 100

    def pg_cycles() -> int:
        for _ in range(groups):
            pg = placement_group([{"CPU": 0.01}])
            pa.get(pg.ready())
            remove_placement_group(pg)
        return groups
    shapes = itertools.count(1)

    def new_lease_tasks() -> int:
        for _ in range(groups):  # each CPU amount is a shape of its own: a new lease each
            pa.get(noop.options(num_cpus=next(shapes) / 10_000).remote())
        return groups
    baseline = median_rate(new_lease_tasks, repeats)
    value = median_rate(pg_cycles, repeats)
    rows.append(Row("placement_group_create_ready_remove", value, "groups/s", baseline,
                    value / baseline, note="baseline: one task on a new lease"))

    # --- wait
    def wait_1k():
        refs = [noop.remote() for _ in range(1000)]
        ready, _ = pa.wait(refs, num_returns=1000)
        assert len(ready) == 1000
        return 1000
    rows.append(Row("client_wait_1k_refs", median_rate(wait_1k, repeats), "refs/s"))
    value, baseline = wait_ready_us(repeats)
    rows.append(Row("client_wait_1k_ready_refs", value, "us", baseline, value / baseline,
                    note="baseline: a Python loop looking each ref up"))

    for handle in [actor, threaded, async_actor] + targets + async_targets + clients + \
            pool_actors:
        pa.kill(handle)
    pa.shutdown()
    return rows


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    print(f"{'benchmark':<{width}}  {'median':>12}  {'unit':<8} {'baseline':>10}  ratio")
    for r in rows:
        baseline = f"{r.baseline:10.2f}" if r.baseline is not None else " " * 10
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        print(f"{r.name:<{width}}  {r.value:12,.1f}  {r.unit:<8} {baseline}  {ratio}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyactor microbenchmark",
                                     description="Time pyactor's hot paths (medians).")
    parser.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    if args.json:
        for r in rows:
            print(json.dumps({"name": r.name, "value": r.value, "unit": r.unit,
                              "baseline": r.baseline, "ratio": r.ratio}))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
