"""Benchmark of Tune's schedulers on a simulated, noisy learning-curve objective (no actors).

The objective: a model's quality q (0 at the start) grows each iteration by

    rate(batch) * exp(-(log10 lr - best_log_lr(q))**2 / (2 * 0.5**2)) * (ceiling(batch) - q)

where the best learning rate falls as the model improves (best_log_lr = -1.5 - 2 q: 0.03 at the
start, about 3e-4 near the end), so curves cross: a large lr leads early and falls behind later,
and a small batch learns fastest but levels off lowest.
A trial reports q + N(0, 0.02) noise each iteration; the config's worth is its noise-free q.
Trials are stepped in-process by a small driver with the controller's semantics (8 slots,
choose_trial_to_run, CONTINUE / PAUSE / STOP / Exploit, stop at max_t); every figure is the
median over SEEDS experiments, but the time per result (the minimum).

    asha_chosen_value     ASHA (64 trials, max_t=100): the noise-free worth of the config with
                          the best last report; baseline: the best of the 64 sampled configs
                          (ASHA's defaults: grace_period 1, reduction_factor 4)
    asha_iterations       iterations ASHA ran; baseline: all 64 trials run to max_t (FIFO)
    asha_grace10_*        the same two with grace_period=10 (first rung after 10 iterations)
    asha_us_per_result    time in ASHA's on_trial_result per result (the scheduler's share of
                          a trial report), the least disturbed of the runs; baseline: FIFO's
    pbt_vs_random_value   PBT (16 trials x 100 iterations, lr and batch_size mutated every 5
                          iterations): the true quality of its best
                          trial; baseline: random search's best of the same 16 configs x 100
                          iterations (the same budget)
    pbt_wins_of_seeds     in how many of the experiments PBT's best beat random search's

    python bench/tune_sched_bench.py            # a table
    python bench/tune_sched_bench.py --json     # one JSON object a line: name, value, unit,
                                                # baseline, ratio
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np

from pyactor.tune.schedulers import (ASHAScheduler, Exploit, FIFOScheduler,
                                     PopulationBasedTraining, TrialScheduler)
from pyactor.tune.search import BasicVariantGenerator, choice, loguniform
from pyactor.tune.trial import Trial, TrialStatus

SEEDS = range(11)
MAX_T = 100
SLOTS = 8
SPACE = {"lr": loguniform(1e-5, 1.0), "batch_size": choice([16, 64, 256])}
CEILING = {16: 0.9, 64: 0.95, 256: 1.0}
RATE = {16: 0.07, 64: 0.06, 256: 0.05}
NOISE_SD = 0.02


def improve(quality: float, config: dict) -> float:
    best_log_lr = -1.5 - 2.0 * quality
    fit = math.exp(-((math.log10(config["lr"]) - best_log_lr) ** 2) / (2 * 0.5 ** 2))
    batch_size = config["batch_size"]
    return quality + RATE[batch_size] * fit * (CEILING[batch_size] - quality)


def worth(config: dict) -> float:
    """The noise-free quality of a fixed config after MAX_T iterations."""
    quality = 0.0
    for _ in range(MAX_T):
        quality = improve(quality, config)
    return quality


class Simulation:
    """The controller's loop over in-process trials: what a scheduler sees from real ones."""

    def __init__(self, scheduler: TrialScheduler, configs: list[dict], seed: int):
        self.scheduler = scheduler
        self.noise = np.random.default_rng(seed)
        self.trials = [Trial(f"t{i:03d}", config) for i, config in enumerate(configs)]
        self.quality = {t.trial_id: 0.0 for t in self.trials}
        self.iterations = 0
        self.decision_s = 0.0        # time spent in on_trial_result
        for trial in self.trials:
            scheduler.on_trial_add(self, trial)

    def get_trials(self) -> list[Trial]:
        return list(self.trials)

    def run(self) -> "Simulation":
        while True:
            running = [t for t in self.trials if t.status == TrialStatus.RUNNING]
            while len(running) < SLOTS:
                trial = self.scheduler.choose_trial_to_run(self)
                if trial is None:
                    break
                trial.status = TrialStatus.RUNNING
                running.append(trial)
            if not running:
                return self
            for trial in running:
                self._step(trial)

    def _step(self, trial: Trial) -> None:
        tid = trial.trial_id
        self.quality[tid] = improve(self.quality[tid], trial.config)
        self.iterations += 1
        iteration = trial.last_result.get("training_iteration", 0) + 1
        result = {"training_iteration": iteration,
                  "score": self.quality[tid] + self.noise.normal(0, NOISE_SD)}
        trial.last_result = result
        trial.checkpoint = self.quality[tid]          # a checkpoint: the model's state
        start = time.perf_counter()
        decision = self.scheduler.on_trial_result(self, trial, result)
        self.decision_s += time.perf_counter() - start
        if isinstance(decision, Exploit):
            self.quality[tid] = decision.source.checkpoint
            trial.config = decision.config
        elif decision == TrialScheduler.PAUSE:
            trial.status = TrialStatus.PAUSED
        if decision == TrialScheduler.STOP or iteration >= MAX_T:
            trial.status = TrialStatus.TERMINATED
            self.scheduler.on_trial_complete(self, trial, result)

    def best_trial(self) -> Trial:
        """The trial with the best last report (Ray's get_best_result, scope "last")."""
        return max(self.trials, key=lambda t: t.last_result.get("score", -math.inf))


def sample_configs(count: int, seed: int) -> list[dict]:
    generator = BasicVariantGenerator(random_state=seed)
    generator.set_search_properties("score", "max", SPACE, num_samples=count)
    return [generator.suggest(str(i)) for i in range(count)]


def asha_run(seed: int, scheduler: TrialScheduler) -> tuple[float, float, int, float]:
    """(chosen config's worth, best sampled worth, iterations, seconds in on_trial_result)."""
    configs = sample_configs(64, seed)
    simulation = Simulation(scheduler, configs, seed).run()
    return (worth(simulation.best_trial().config), max(worth(c) for c in configs),
            simulation.iterations, simulation.decision_s)


def pbt_vs_random(seed: int) -> tuple[float, float]:
    """(PBT's best trial's true quality, random search's) at 16 trials x MAX_T iterations."""
    configs = sample_configs(16, seed)
    pbt = PopulationBasedTraining(time_attr="training_iteration", metric="score", mode="max",
                                  perturbation_interval=5,
                                  hyperparam_mutations={"lr": SPACE["lr"],
                                                        "batch_size": [16, 64, 256]},
                                  seed=seed)
    population = Simulation(pbt, configs, seed).run()
    fifo = FIFOScheduler("score", "max")
    random_search = Simulation(fifo, configs, seed).run()
    return (population.quality[population.best_trial().trial_id],
            random_search.quality[random_search.best_trial().trial_id])


def measure() -> list[tuple[str, float, str, float]]:
    asha = [asha_run(seed, ASHAScheduler(metric="score", mode="max", max_t=MAX_T))
            for seed in SEEDS]
    patient = [asha_run(seed, ASHAScheduler(metric="score", mode="max", max_t=MAX_T,
                                            grace_period=10)) for seed in SEEDS]
    fifo = [asha_run(seed, FIFOScheduler("score", "max")) for seed in SEEDS]
    pbt = [pbt_vs_random(seed) for seed in SEEDS]
    median = statistics.median
    return [
        ("asha_chosen_value", median(r[0] for r in asha), "worth", median(r[1] for r in asha)),
        ("asha_iterations", median(r[2] for r in asha), "iterations", median(r[2] for r in fifo)),
        ("asha_grace10_value", median(r[0] for r in patient), "worth",
         median(r[1] for r in patient)),
        ("asha_grace10_iterations", median(r[2] for r in patient), "iterations",
         median(r[2] for r in fifo)),
        # The least disturbed run: on a shared machine a median of microseconds is mostly
        # other processes' time slices.
        ("asha_us_per_result", min(1e6 * r[3] / r[2] for r in asha), "us",
         min(1e6 * r[3] / r[2] for r in fifo)),
        ("pbt_vs_random_value", median(r[0] for r in pbt), "worth", median(r[1] for r in pbt)),
        ("pbt_wins_of_seeds", sum(p > r for p, r in pbt), "runs", len(pbt)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure()
    if args.json:
        for name, value, unit, base in rows:
            print(json.dumps({"name": name, "value": round(value, 6), "unit": unit,
                              "baseline": round(base, 6), "ratio": round(value / base, 3)}))
        return
    print(f"{'measure':<24}{'value':>12}{'baseline':>12}{'ratio':>8}  unit")
    for name, value, unit, base in rows:
        print(f"{name:<24}{value:>12.4f}{base:>12.4f}{value / base:>8.3f}  {unit}")


if __name__ == "__main__":
    main()
