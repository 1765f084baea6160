"""tune-search's schedulers and searchers driven by the real controller and trial actors: ASHA
stops trials early, PBT exploits through checkpoints, HyperBand pauses and resumes, TPE and
ConcurrencyLimiter get their results."""

import json
import os
import tempfile
import time

import pytest

from pyactor import tune
from pyactor.tune.trial import TrialStatus


@pytest.fixture(scope="module", autouse=True)
def _pa(pa_module):
    yield pa_module


def _fit(tmp_path, trainable, space, **tune_kwargs):
    return tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(**tune_kwargs),
                      run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path),
                                                verbose=0)).fit()


def curve(config):
    """A learning curve whose level is set by config["q"]."""
    for step in range(1, 17):
        tune.report({"acc": config["q"] * (1 - 1 / (step + 1))})


def test_asha_stops_poor_trials_early(tmp_path):
    """With ASHA (max_t 16, reduction 2) poor trials stop early; the best runs to max_t."""
    grid = _fit(tmp_path, curve, {"q": tune.grid_search([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                          0.8])},
                metric="acc", mode="max",
                scheduler=tune.ASHAScheduler(max_t=16, grace_period=2, reduction_factor=2))
    iterations = {r.config["q"]: r.metrics["training_iteration"] for r in grid}
    assert iterations[0.8] == 16
    assert min(iterations.values()) < 16
    assert grid.get_best_result().config["q"] == 0.8
    assert all(r.status == TrialStatus.TERMINATED for r in grid)


def pbt_trainable(config):
    """Score grows by lr each step, 12 steps; the state (step, score) is in each checkpoint."""
    step, score = 0, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            step, score = json.load(open(os.path.join(path, "s.json")))
    if step == 0 and "barrier" in config:
        _meet(config["barrier"], config["trials"])
    while step < 12:
        step += 1
        score += config["lr"]
        time.sleep(config.get("step_s", 0.01))  # real work: over 5 ms, so trials run in lockstep
        # In the trial's folder: a trial whose actor ends mid-step leaves it there, not in /tmp.
        with tempfile.TemporaryDirectory(dir=tune.get_trial_dir()) as directory:
            json.dump([step, score], open(os.path.join(directory, "s.json"), "w"))
            tune.report({"score": score}, checkpoint=tune.Checkpoint.from_directory(directory))


def _meet(folder, count, timeout_s=60.0):
    """Wait until `count` trials have arrived (one file each), so their steps overlap however
    far apart their actors started; after the timeout go on (the test then says why)."""
    os.makedirs(folder, exist_ok=True)
    tempfile.mkstemp(dir=folder)
    deadline = time.monotonic() + timeout_s
    while len(os.listdir(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_pbt_exploits_the_best_trials_checkpoint(tmp_path):
    """PBT copies a top trial's checkpoint and config into a bottom trial: the poor lr trials
    end with a score they could not reach alone."""
    scheduler = tune.PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=3,
        hyperparam_mutations={"lr": [0.01, 0.1, 1.0]}, seed=0)
    # All four at once (0.5 CPU each), starting together at a barrier, so every trial passes
    # every perturbation point while the others run.
    grid = _fit(tmp_path, tune.with_resources(pbt_trainable, {"cpu": 0.5}),
                {"lr": tune.grid_search([0.01, 0.01, 0.01, 1.0]), "step_s": 0.05,
                 "barrier": str(tmp_path / "barrier"), "trials": 4},
                metric="score", mode="max", scheduler=scheduler)
    assert scheduler.decisions, "PBT took no decision"
    alone = 12 * 0.01
    scores = sorted(r.metrics["score"] for r in grid)
    assert scores[-2] > alone + 1e-9  # besides the lr=1.0 trial, a poor one gained by exploiting
    copied = [d for r in grid for d in os.listdir(r.path) if "_from_" in d]
    assert copied, "no checkpoint was copied between trials"


def test_hyperband_pauses_and_resumes_trials(tmp_path):
    """HyperBand's brackets pause trials at rungs and continue the chosen ones."""
    grid = _fit(tmp_path, pbt_trainable, {"lr": tune.grid_search([0.1, 0.2, 0.3, 0.4, 0.5])},
                metric="score", mode="max",
                scheduler=tune.HyperBandScheduler(max_t=9, reduction_factor=3))
    assert all(r.status == TrialStatus.TERMINATED for r in grid)
    assert grid.get_best_result().config["lr"] == 0.5


def test_tpe_searcher_with_concurrency_limiter(tmp_path):
    """A model-based searcher behind a ConcurrencyLimiter runs num_samples trials."""
    searcher = tune.ConcurrencyLimiter(tune.TPESearch(random_state=0), max_concurrent=2)
    grid = _fit(tmp_path, curve, {"q": tune.uniform(0, 1)}, metric="acc", mode="max",
                search_alg=searcher, num_samples=6)
    assert len(grid) == 6 and grid.num_errors == 0
