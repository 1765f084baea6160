"""The whole loop with real trial actors: function and class trainables, reuse, resources,
stopping, results and the files each trial leaves."""

import json
import os

import pytest

from pyactor import tune
from pyactor.tune.trial import TrialStatus


@pytest.fixture(scope="module", autouse=True)
def _pa(pa_module):
    yield pa_module


def _run(tmp_path, trainable, space, **tune_kwargs):
    run_kwargs = tune_kwargs.pop("run", {})
    tuner = tune.Tuner(trainable, param_space=space,
                       tune_config=tune.TuneConfig(**tune_kwargs),
                       run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path),
                                                 verbose=0, **run_kwargs))
    return tuner.fit()


def quadratic(config):
    for step in range(3):
        tune.report({"loss": (config["x"] - 2) ** 2 + 1.0 / (step + 1), "pid": os.getpid()})


def test_function_trials_report_and_best_result(tmp_path):
    """Each grid point runs as a trial; results carry the filled-in fields; the best is x=2."""
    grid = _run(tmp_path, quadratic, {"x": tune.grid_search([0, 1, 2, 3])},
                metric="loss", mode="min")
    assert len(grid) == 4 and grid.num_errors == 0
    for result in grid:
        assert result.metrics["training_iteration"] == 3
        for key in ("time_total_s", "time_this_iter_s", "trial_id", "timestamp"):
            assert key in result.metrics
        assert result.status == TrialStatus.TERMINATED
    best = grid.get_best_result()
    assert best.config == {"x": 2}
    assert best.metrics["loss"] == pytest.approx(1 / 3)
    assert grid.get_best_result("loss", "max").config == {"x": 0}


def test_trial_files_are_written(tmp_path):
    """params.json, result.json (one line per report), progress.csv and an event file."""
    grid = _run(tmp_path, quadratic, {"x": tune.grid_search([1])}, metric="loss", mode="min")
    path = grid[0].path
    assert json.load(open(os.path.join(path, "params.json"))) == {"x": 1}
    lines = open(os.path.join(path, "result.json")).read().splitlines()
    assert [json.loads(line)["training_iteration"] for line in lines] == [1, 2, 3]
    csv_rows = open(os.path.join(path, "progress.csv")).read().splitlines()
    assert csv_rows[0].split(",")[0] == "loss" and len(csv_rows) == 4
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(path))


def test_actors_are_reused_across_trials(tmp_path):
    """Eight 1-CPU trials on 2 CPUs run in two processes; reuse_actors=False starts eight."""
    space = {"x": tune.grid_search(list(range(8)))}
    reused = _run(tmp_path / "a", quadratic, space, metric="loss", mode="min")
    assert len({r.metrics["pid"] for r in reused}) == 2
    fresh = _run(tmp_path / "b", quadratic, space, metric="loss", mode="min",
                 reuse_actors=False)
    assert len({r.metrics["pid"] for r in fresh}) == 8


def test_fractional_cpus_run_four_at_once(tmp_path):
    """0.5-CPU trials fill 2 CPUs with four actors at once."""
    trainable = tune.with_resources(quadratic, {"cpu": 0.5})
    grid = _run(tmp_path, trainable, {"x": tune.grid_search(list(range(8)))},
                metric="loss", mode="min")
    assert len({r.metrics["pid"] for r in grid}) == 4


def test_max_concurrent_trials_limits_actors(tmp_path):
    """max_concurrent_trials=1 runs every trial in one process, one after the other."""
    grid = _run(tmp_path, quadratic, {"x": tune.grid_search(list(range(4)))},
                metric="loss", mode="min", max_concurrent_trials=1)
    assert len({r.metrics["pid"] for r in grid}) == 1


class Counter(tune.Trainable):
    def setup(self, config):
        self.total = 0
        self.setups = getattr(self, "setups", 0) + 1

    def step(self):
        self.total += self.config["step"]
        return {"total": self.total, "done": self.iteration >= 3, "pid": os.getpid()}

    def save_checkpoint(self, checkpoint_dir):
        return {"total": self.total}

    def load_checkpoint(self, checkpoint):
        self.total = checkpoint["total"]

    def reset_config(self, new_config):
        self.config = new_config
        self.total = 0
        return True


def test_class_trainable_runs_until_done_and_checkpoints(tmp_path):
    """A Trainable's step() results until done=True; checkpoint_frequency saves every 2."""
    grid = _run(tmp_path, Counter, {"step": tune.grid_search([1, 10])},
                metric="total", mode="max",
                run={"checkpoint_config": tune.CheckpointConfig(checkpoint_frequency=2,
                                                                checkpoint_at_end=True)})
    totals = sorted(r.metrics["total"] for r in grid)
    assert totals == [4, 40]
    best = grid.get_best_result()
    assert best.checkpoint is not None
    assert sorted(d for d in os.listdir(best.path) if d.startswith("checkpoint_")) == \
        ["checkpoint_000002", "checkpoint_000004"]


def test_stop_conditions(tmp_path):
    """stop as a dict, a callable and a Stopper each end trials at the named point."""
    def endless(config):
        step = 0
        while True:
            step += 1
            tune.report({"score": step * config["k"]})

    space = {"k": tune.grid_search([1, 2])}
    by_dict = _run(tmp_path / "d", endless, space, run={"stop": {"training_iteration": 5}})
    assert [r.metrics["training_iteration"] for r in by_dict] == [5, 5]
    by_call = _run(tmp_path / "c", endless, space,
                   run={"stop": lambda trial_id, result: result["score"] >= 6})
    assert sorted(r.metrics["score"] for r in by_call) == [6, 6]
    by_stopper = _run(tmp_path / "s", endless, space,
                      run={"stop": tune.MaximumIterationStopper(2)})
    assert [r.metrics["training_iteration"] for r in by_stopper] == [2, 2]


def test_time_budget_ends_endless_trials(tmp_path):
    """time_budget_s stops trials that would run forever and starts no new ones."""
    def endless(config):
        while True:
            tune.report({"x": 1})

    grid = _run(tmp_path, endless, {}, num_samples=5, time_budget_s=0.5)
    started = [r for r in grid if r.metrics]
    assert started and all(r.status == TrialStatus.TERMINATED for r in started)
    assert all(r.status == TrialStatus.PENDING for r in grid if not r.metrics)
    assert started[0].metrics["training_iteration"] > 1


class PauseOnce:
    """A scheduler in a page: pauses every trial at iteration 2, resumes paused trials first."""

    def __init__(self):
        self.paused = set()

    def set_search_properties(self, metric, mode, **spec):
        return True

    def on_trial_add(self, controller, trial): pass
    def on_trial_error(self, controller, trial): pass
    def on_trial_complete(self, controller, trial, result): pass
    def on_trial_remove(self, controller, trial): pass

    def on_trial_result(self, controller, trial, result):
        if result["training_iteration"] == 2 and trial.trial_id not in self.paused:
            self.paused.add(trial.trial_id)
            return "PAUSE"
        return "CONTINUE"

    def choose_trial_to_run(self, controller):
        trials = controller.get_trials()
        for status in ("PAUSED", "PENDING"):
            for trial in trials:
                if trial.status.value == status:
                    return trial
        return None

    def get_state(self): return {"paused": sorted(self.paused)}
    def set_state(self, state): self.paused = set(state["paused"])


def test_paused_trials_resume_from_their_checkpoint(tmp_path):
    """A PAUSE saves the class trainable; the trial later continues from that state."""
    grid = _run(tmp_path, Counter, {"step": tune.grid_search([1, 10, 100])},
                metric="total", mode="max", scheduler=PauseOnce())
    assert sorted(r.metrics["total"] for r in grid) == [4, 40, 400]
    assert all(r.metrics["training_iteration"] == 4 for r in grid)


def test_tune_run_returns_best_config(tmp_path):
    """The older tune.run(...) form: best_config, best_result and results by trial."""
    analysis = tune.run(quadratic, config={"x": tune.grid_search([1, 2, 5])}, metric="loss",
                        mode="min", storage_path=str(tmp_path), name="run", verbose=0)
    assert analysis.best_config == {"x": 2}
    assert analysis.best_result["loss"] == pytest.approx(1 / 3)
    assert len(analysis.results) == 3


async def test_fit_async_inside_an_event_loop(tmp_path):
    """await tuner.fit_async() works in asyncio code; fit() there says to use it."""
    tuner = tune.Tuner(quadratic, param_space={"x": tune.grid_search([2, 3])},
                       tune_config=tune.TuneConfig(metric="loss", mode="min"),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    with pytest.raises(RuntimeError, match="fit_async"):
        tuner.fit()
    grid = await tuner.fit_async()
    assert grid.get_best_result().config == {"x": 2}


class StopAfterTrials(tune.Stopper):
    """Stops the experiment once results from `count` different trials arrived."""

    def __init__(self, count):
        self.count, self.seen = count, set()

    def __call__(self, trial_id, result):
        self.seen.add(trial_id)
        return False

    def stop_all(self):
        return len(self.seen) >= self.count


def test_num_samples_minus_one_runs_until_stopped(tmp_path):
    """num_samples=-1 keeps drawing configs until a Stopper's stop_all ends the experiment."""
    grid = _run(tmp_path, quadratic, {"x": tune.uniform(0, 4)}, num_samples=-1,
                metric="loss", mode="min", run={"stop": StopAfterTrials(6)})
    assert len([r for r in grid if r.metrics]) >= 6
