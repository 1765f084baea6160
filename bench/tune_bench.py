"""pyactor.tune benchmarks: a table (or --json, one object per line).

1. trivial: 200 function trials x 10 reports, 2 at a time (1-CPU trials on 2 CPUs): the time of
   Tuner.fit(); baselines measured in the same run: the same 2,000 reports as plain function
   calls in-process, and the files Tune writes (4 per trial) created alone on the same disk;
   Ray Tune 2.60's figures from issue 11 (264 s default, 10.4 s with reuse_actors=True); the
   same experiment with its folder on tmpfs shows the cost without the disk.
2. asha: 64 trials of a synthetic noisy learning curve (max_t 100, 1 ms of work per step)
   through real trial actors: the chosen config's noise-free value vs the best sampled one, and
   the wall time, against running every trial to max_t (FIFO) on the same 64 configs.
3. pbt: PopulationBasedTraining vs random search at equal budget (8 trials x 40 steps) on an
   objective whose best learning rate falls as training progresses; best final scores (the
   objective has no noise).
4. overhead: 8 concurrent 0.25-CPU trials each reporting 400 trivial results: wall time per
   result and the driver's CPU time per result; baseline: an in-process report call.

    python bench/tune_bench.py [--json] [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time

import pyactor as pa
from pyactor import tune

RAY_DEFAULT_S = 264.0
RAY_REUSE_S = 10.4


# ----------------------------------------------------------------------------- trainables
def trivial(config):
    for step in range(10):
        tune.report({"score": config["x"] * step})


def true_value(config) -> float:
    """The noise-free final value of a config of the learning-curve objective (in (0, 1])."""
    return math.exp(-((math.log10(config["lr"]) + 2.5) ** 2) / 2) * (0.6 + 0.4 * config["width"])


def learning_curve(config):
    """value(t) rises to true_value with a config-dependent speed, plus noise (sd 0.03);
    1 ms of busy work per step stands in for training."""
    rng = random.Random(config["noise_seed"])
    final = true_value(config)
    speed = 5 + 40 * (1 - config["width"])        # wide models learn slower but end higher
    for t in range(1, 101):
        deadline = time.perf_counter() + 0.001
        while time.perf_counter() < deadline:
            pass
        tune.report({"value": final * (1 - math.exp(-t / speed)) + rng.gauss(0, 0.03)})


def pbt_objective(config):
    """Progress s grows by 0.05 * closeness(lr, lr_best(s)) per step, where the best learning
    rate falls as training progresses, lr_best(s) = 0.1 * 10**-s, and closeness is a Gaussian
    in log10(lr) (width 0.5 decades). No fixed lr stays best: a schedule does."""
    s, step = 0.0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            s, step = json.load(open(os.path.join(path, "state.json")))
    while step < 40:
        step += 1
        distance = math.log10(config["lr"]) - (-1 - s)
        s += 0.05 * math.exp(-distance ** 2 / (2 * 0.5 ** 2))
        if step % 2 == 0:
            with tempfile.TemporaryDirectory() as directory:
                json.dump([s, step], open(os.path.join(directory, "state.json"), "w"))
                tune.report({"score": s}, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report({"score": s})


def many_reports(config):
    for step in range(400):
        tune.report({"step": step})


# ----------------------------------------------------------------------------- measurements
def fit(storage: str, name: str, trainable, space: dict, **tune_kwargs):
    tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(**tune_kwargs),
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))
    start = time.perf_counter()
    cpu_start = time.process_time()
    grid = tuner.fit()
    return grid, time.perf_counter() - start, time.process_time() - cpu_start


def in_process_reports(trials: int, reports: int) -> float:
    """The baseline loop: the same reports as plain calls that record each result."""
    sink = []
    start = time.perf_counter()
    for trial in range(trials):
        for step in range(reports):
            sink.append({"score": trial * step, "training_iteration": step + 1})
    return time.perf_counter() - start


def file_creation(storage: str, trials: int, files: int = 4) -> float:
    """Create the files Tune writes per trial (params.json, result.json, progress.csv, the
    event file), in one folder per trial, with nothing else going on."""
    root = os.path.join(storage, "files_alone")
    start = time.perf_counter()
    for trial in range(trials):
        folder = os.path.join(root, f"trial_{trial}")
        os.makedirs(folder)
        for index in range(files):
            with open(os.path.join(folder, f"f{index}"), "w") as file:
                file.write("x" * 200)
    elapsed = time.perf_counter() - start
    shutil.rmtree(root)
    return elapsed


def bench_trivial(storage: str, repeat: int) -> dict:
    """Alternates the two storage places in each repetition so both see the same machine."""
    times, tmpfs_times, files, inproc = [], [], [], []
    tmpfs = tempfile.mkdtemp(prefix="tune_bench_", dir="/dev/shm") \
        if os.path.isdir("/dev/shm") else None
    space = {"x": tune.grid_search(list(range(200)))}
    for index in range(repeat):
        grid, elapsed, _ = fit(storage, f"trivial_{index}", trivial, space,
                               metric="score", mode="max")
        assert len(grid) == 200 and grid.num_errors == 0
        times.append(elapsed)
        shutil.rmtree(os.path.join(storage, f"trivial_{index}"))
        if tmpfs is not None:
            _, elapsed, _ = fit(tmpfs, f"trivial_{index}", trivial, space, metric="score",
                                mode="max")
            tmpfs_times.append(elapsed)
            shutil.rmtree(os.path.join(tmpfs, f"trivial_{index}"))
        files.append(file_creation(storage, 200))
        inproc.append(in_process_reports(200, 10))
    if tmpfs is not None:
        shutil.rmtree(tmpfs, ignore_errors=True)
    median = statistics.median(times)
    return {"bench": "trivial_200x10", "fit_s": round(median, 3),
            "fit_s_runs": [round(t, 3) for t in times],
            "fit_tmpfs_s": round(statistics.median(tmpfs_times), 3) if tmpfs_times else None,
            "fit_tmpfs_s_runs": [round(t, 3) for t in tmpfs_times],
            "in_process_s": round(statistics.median(inproc), 5),
            "file_creation_alone_s": round(statistics.median(files), 3),
            "ray_default_s": RAY_DEFAULT_S, "ray_reuse_actors_s": RAY_REUSE_S,
            "vs_ray_default": round(RAY_DEFAULT_S / median, 1),
            "vs_ray_reuse": round(RAY_REUSE_S / median, 1), "target_s": 2.0}


def bench_asha(storage: str, samples: int) -> dict:
    space = {"lr": tune.loguniform(1e-4, 1e-1), "width": tune.uniform(0, 1),
             "noise_seed": tune.randint(0, 1 << 30)}
    rows = {}
    for label, scheduler in (("asha", tune.ASHAScheduler(max_t=100, grace_period=1,
                                                         reduction_factor=4)),
                             ("fifo", None)):
        grid, elapsed, _ = fit(storage, f"asha_{label}", learning_curve, space,
                               metric="value", mode="max", num_samples=samples,
                               scheduler=scheduler,
                               search_alg=tune.BasicVariantGenerator(random_state=3))
        best = grid.get_best_result()
        rows[label] = {"wall_s": round(elapsed, 2),
                       "chosen_true": round(true_value(best.config), 4),
                       "best_sampled_true": round(max(true_value(r.config) for r in grid), 4),
                       "steps": sum(r.metrics["training_iteration"] for r in grid)}
    return {"bench": "asha_64", **{f"{k}_{m}": v for k, row in rows.items()
                                   for m, v in row.items()}}


def bench_pbt(storage: str, seeds: int) -> dict:
    pbt_scores, random_scores = [], []
    for seed in range(seeds):
        space = {"lr": tune.loguniform(1e-4, 0.3)}
        scheduler = tune.PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=2,
            hyperparam_mutations={"lr": tune.loguniform(1e-4, 0.3)}, seed=seed)
        grid, _, _ = fit(storage, f"pbt_{seed}", pbt_objective, space, metric="score",
                         mode="max", num_samples=8, scheduler=scheduler,
                         search_alg=tune.BasicVariantGenerator(random_state=seed))
        pbt_scores.append(max(r.metrics["score"] for r in grid))
        grid, _, _ = fit(storage, f"random_{seed}", pbt_objective, space, metric="score",
                         mode="max", num_samples=8,
                         search_alg=tune.BasicVariantGenerator(random_state=seed))
        random_scores.append(max(r.metrics["score"] for r in grid))
    return {"bench": "pbt_vs_random", "seeds": seeds,
            "pbt_best_median": round(statistics.median(pbt_scores), 4),
            "random_best_median": round(statistics.median(random_scores), 4),
            "pbt_wins": sum(p > r for p, r in zip(pbt_scores, random_scores)),
            "pbt_scores": [round(s, 4) for s in pbt_scores],
            "random_scores": [round(s, 4) for s in random_scores]}


def bench_overhead(storage: str) -> dict:
    trainable = tune.with_resources(many_reports, {"cpu": 0.25})
    fit(storage, "overhead_warmup", trainable, {})   # imports and actor starts out of the way
    grid, elapsed, cpu = fit(storage, "overhead", trainable,
                             {"x": tune.grid_search(list(range(8)))})
    results = sum(r.metrics["training_iteration"] for r in grid)
    assert results == 8 * 400
    pids = len({r.metrics["pid"] for r in grid})
    baseline = in_process_reports(8, 400) / results
    return {"bench": "overhead_8x0.25cpu", "results": results, "concurrent_actors": pids,
            "wall_us_per_result": round(elapsed / results * 1e6, 1),
            "driver_cpu_us_per_result": round(cpu / results * 1e6, 1),
            "in_process_us_per_result": round(baseline * 1e6, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and seeds")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--storage", default=None,
                        help="experiment folder root (default: a temporary folder in ~)")
    args = parser.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="tune_bench_",
                                               dir=os.path.expanduser("~"))
    pa.init(num_cpus=2)
    try:
        rows = [bench_trivial(storage, args.repeat or (1 if args.quick else 3)),
                bench_overhead(storage),
                bench_asha(storage, 64),
                bench_pbt(storage, 1 if args.quick else 3)]
    finally:
        pa.shutdown()
        if args.storage is None:
            shutil.rmtree(storage, ignore_errors=True)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    trivial_row, overhead, asha, pbt = rows
    print(f"\n200 trivial trials x 10 reports, 2 at a time: Tuner.fit() {trivial_row['fit_s']} s "
          f"(runs {trivial_row['fit_s_runs']}); target <= 2 s")
    if trivial_row["fit_tmpfs_s"] is not None:
        print(f"  with storage_path on tmpfs (/dev/shm): {trivial_row['fit_tmpfs_s']} s "
              f"(runs {trivial_row['fit_tmpfs_s_runs']})")
    print(f"  baselines, same run: the 2,000 reports in-process {trivial_row['in_process_s']} s; "
          f"creating the 800 files alone {trivial_row['file_creation_alone_s']} s")
    print(f"  Ray Tune 2.60 (issue 11): {RAY_DEFAULT_S} s default "
          f"({trivial_row['vs_ray_default']}x), {RAY_REUSE_S} s reuse_actors "
          f"({trivial_row['vs_ray_reuse']}x)")
    print(f"\n8 concurrent 0.25-CPU trials x 400 results ({overhead['concurrent_actors']} actors): "
          f"{overhead['wall_us_per_result']} us wall / result, "
          f"{overhead['driver_cpu_us_per_result']} us driver CPU / result "
          f"(in-process call: {overhead['in_process_us_per_result']} us)")
    print("\nASHA vs FIFO, 64 trials of a noisy learning curve (max_t 100):")
    print("| scheduler | wall s | steps run | chosen (noise-free) | best sampled |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label in ("asha", "fifo"):
        print(f"| {label} | {asha[label + '_wall_s']} | {asha[label + '_steps']} | "
              f"{asha[label + '_chosen_true']} | {asha[label + '_best_sampled_true']} |")
    print(f"\nPBT vs random search, 8 trials x 40 steps, {pbt['seeds']} seeds: best score "
          f"median {pbt['pbt_best_median']} vs {pbt['random_best_median']} "
          f"(PBT better in {pbt['pbt_wins']}/{pbt['seeds']}; {pbt['pbt_scores']} vs "
          f"{pbt['random_scores']})")


if __name__ == "__main__":
    main()
