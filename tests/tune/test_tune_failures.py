"""Trial failures (raise, process death) and retries from the last checkpoint; fail_fast and
its resume; bad input caught at the line that made the mistake."""

import json
import os
import tempfile
import threading

import pytest

from pyactor import tune
from pyactor.tune.trial import TrialStatus


@pytest.fixture(scope="module", autouse=True)
def _pa(pa_module):
    yield pa_module


def _tuner(tmp_path, trainable, space, failure=None, **tune_kwargs):
    return tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(**tune_kwargs),
                      run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path),
                                                verbose=0, failure_config=failure))


def _steps_with_checkpoint(config, fail_at):
    """Four steps, each checkpointed; fails once at step `fail_at` (a marker in the trial
    folder says it already failed) in the way config["how"] names."""
    checkpoint = tune.get_checkpoint()
    start = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            start = json.load(open(os.path.join(path, "state.json")))["step"]
    marker = os.path.join(tune.get_trial_dir(), "failed_once")
    for step in range(start, 4):
        if step == fail_at and not os.path.exists(marker) and config.get("fail", True):
            open(marker, "w").close()
            if config["how"] == "exit":
                os._exit(3)
            raise ValueError(f"boom at step {step}")
        with tempfile.TemporaryDirectory() as directory:
            json.dump({"step": step + 1}, open(os.path.join(directory, "state.json"), "w"))
            tune.report({"step": step + 1}, checkpoint=tune.Checkpoint.from_directory(directory))


def flaky(config):
    _steps_with_checkpoint(config, fail_at=2)


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_failed_trial_retries_from_last_checkpoint(tmp_path, how):
    """A trial that raises (or whose process exits) resumes from its checkpoint at step 2."""
    grid = _tuner(tmp_path, flaky, {"how": how}, tune.FailureConfig(max_failures=1)).fit()
    result = grid[0]
    assert result.status == TrialStatus.TERMINATED and result.error is None
    iterations = [json.loads(line)["training_iteration"]
                  for line in open(os.path.join(result.path, "result.json"))]
    assert iterations == [1, 2, 3, 4]          # steps 0-1, then 2-3 after the restore
    assert result.metrics["step"] == 4


def test_error_without_retries_is_recorded_and_others_go_on(tmp_path):
    """max_failures=0: the trial is ERROR with its traceback; the other trial finishes."""
    grid = _tuner(tmp_path, flaky, {"how": "raise", "fail": tune.grid_search([True, False])},
                  ).fit()
    by_fail = {r.config["fail"]: r for r in grid}
    assert by_fail[True].status == TrialStatus.ERROR
    assert "ValueError: boom at step 2" in by_fail[True].error
    assert by_fail[False].status == TrialStatus.TERMINATED
    assert grid.num_errors == 1


def fails_first(config):
    if config["x"] == 0:
        raise RuntimeError("trial zero always fails")
    for step in range(3):
        tune.report({"score": config["x"] + step})


def test_fail_fast_stops_and_restore_finishes_the_rest(tmp_path):
    """fail_fast stops the experiment at the first error; Tuner.restore runs the remaining
    trials, keeps the errored one as it was, and re-runs nothing that finished."""
    space = {"x": tune.grid_search([0, 1, 2, 3, 4, 5])}
    first = _tuner(tmp_path, fails_first, space, tune.FailureConfig(fail_fast=True),
                   max_concurrent_trials=1).fit()
    assert first.num_errors == 1
    assert first.num_terminated < 6
    restored = tune.Tuner.restore(str(tmp_path / "exp"), fails_first).fit()
    assert len(restored) == 6
    statuses = sorted(r.status.value for r in restored)
    assert statuses == ["ERROR"] + ["TERMINATED"] * 5
    for result in restored:
        if result.status == TrialStatus.TERMINATED:
            lines = open(os.path.join(result.path, "result.json")).read().splitlines()
            assert len(lines) == 3       # never run twice


def test_restore_errored_trials_on_request(tmp_path):
    """restart_errored=True runs an errored trial again from the start."""
    _tuner(tmp_path, flaky, {"how": "raise"}).fit()
    grid = tune.Tuner.restore(str(tmp_path / "exp"), flaky, restart_errored=True).fit()
    assert grid[0].status == TrialStatus.TERMINATED


# ------------------------------------------------------------------------- bad input
def test_space_must_be_a_dict():
    with pytest.raises(TypeError, match="param_space must be a dict"):
        tune.Tuner(flaky, param_space=[1, 2])


def test_mode_must_be_min_or_max():
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        tune.TuneConfig(metric="loss", mode="best")


def test_unpicklable_trainable_fails_at_the_tuner_line():
    lock = threading.Lock()

    def holds_a_lock(config):
        with lock:
            tune.report({"x": 1})

    with pytest.raises(TypeError, match="holds_a_lock.*cannot be pickled"):
        tune.Tuner(holds_a_lock)


def test_trainable_that_never_reports_errors_clearly(tmp_path):
    def silent(config):
        return None

    grid = _tuner(tmp_path, silent, {}).fit()
    assert "returned without calling tune.report" in grid[0].error


def test_metric_never_reported_stops_at_the_first_result(tmp_path):
    def reports_loss(config):
        tune.report({"loss": 1.0})

    with pytest.raises(ValueError, match="no metric 'accuracy'.*'loss'"):
        _tuner(tmp_path, reports_loss, {}, metric="accuracy", mode="max").fit()


def test_unknown_metric_in_get_best_result(tmp_path):
    def reports_loss(config):
        tune.report({"loss": 1.0})

    grid = _tuner(tmp_path, reports_loss, {}).fit()
    with pytest.raises(ValueError, match="no trial reported a metric named 'accuracy'"):
        grid.get_best_result("accuracy", "max")
    with pytest.raises(ValueError, match="mode must be"):
        grid.get_best_result("loss", "lowest")


def test_report_outside_a_trial():
    with pytest.raises(RuntimeError, match="outside a Tune trial"):
        tune.report({"x": 1})


class NeverChooses:
    """A broken scheduler: it never lets a trial start."""

    def set_search_properties(self, metric, mode, **spec): return True
    def on_trial_add(self, controller, trial): pass
    def on_trial_result(self, controller, trial, result): return "CONTINUE"
    def on_trial_complete(self, controller, trial, result): pass
    def on_trial_error(self, controller, trial): pass
    def on_trial_remove(self, controller, trial): pass
    def choose_trial_to_run(self, controller): return None
    def get_state(self): return {}
    def set_state(self, state): pass


def test_scheduler_that_never_chooses_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(tune.TuneError, match="NeverChooses.choose_trial_to_run"):
        _tuner(tmp_path, flaky, {"how": "raise"}, scheduler=NeverChooses()).fit()
