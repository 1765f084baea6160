"""Exact resume: a driver SIGKILLed mid-experiment and run again (RunConfig(resume="auto"))
finishes the same experiment: the same number of samples, the searcher's draws kept, and no
trial that had finished run again."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pyactor.tune import experiment_state
from conftest import wait_until

DRIVER = textwrap.dedent('''
    import json, os, sys, tempfile, time
    from pyactor import tune

    LOG_DIR = sys.argv[2]

    def trainable(config):
        checkpoint = tune.get_checkpoint()
        start = 0
        if checkpoint is not None:
            with checkpoint.as_directory() as path:
                start = json.load(open(os.path.join(path, "state.json")))["step"]
        for step in range(start, 4):
            # Each step that runs leaves a line: a re-run step would show up twice.
            with open(os.path.join(LOG_DIR, tune.get_trial_id() + ".log"), "a") as log:
                log.write(f"{step}\\n")
            time.sleep(0.05)   # the work of a step (gives the kill a mid-experiment moment)
            with tempfile.TemporaryDirectory() as directory:
                json.dump({"step": step + 1}, open(os.path.join(directory, "state.json"), "w"))
                tune.report({"score": config["x"] * (step + 1)},
                            checkpoint=tune.Checkpoint.from_directory(directory))

    tuner = tune.Tuner(
        trainable, param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=10,
                                    search_alg=tune.BasicVariantGenerator(random_state=7)),
        run_config=tune.RunConfig(name="exp", storage_path=sys.argv[1], resume="auto",
                                  verbose=0))
    grid = tuner.fit()
    print(json.dumps(sorted((r.trial_id, r.config["x"], r.status.value) for r in grid)))
''')


def _terminated(experiment_dir):
    try:
        state = experiment_state.load(experiment_dir)
    except (FileNotFoundError, EOFError, ValueError):
        return set()
    return {t["trial_id"] for t in state["trials"] if t["status"] == "TERMINATED"}


@pytest.mark.slow
def test_sigkilled_driver_resumes_exactly(tmp_path):
    """Kill the driver after 3 trials finished; the re-run completes 10 trials in total with
    the first run's configs, and each step of a finished trial ran exactly once."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    logs = tmp_path / "logs"
    logs.mkdir()
    storage = tmp_path / "results"
    experiment_dir = str(storage / "exp")
    command = [sys.executable, str(script), str(storage), str(logs)]
    # The driver's processes are SIGKILLed mid-step, leaving the step's TemporaryDirectory: keep
    # those under tmp_path.
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TMPDIR": str(tmp_path / "tmp")}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             start_new_session=True)
    try:
        assert wait_until(lambda: len(_terminated(experiment_dir)) >= 3, timeout_s=120)
    finally:
        os.killpg(first.pid, signal.SIGKILL)   # the driver and everything it started
        first.wait()
    before = experiment_state.load(experiment_dir)
    finished_before = {t["trial_id"] for t in before["trials"] if t["status"] == "TERMINATED"}
    configs_before = {t["trial_id"]: t["config"]["x"] for t in before["trials"]}
    assert 3 <= len(finished_before) < 10

    second = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = json.loads(second.stdout.strip().splitlines()[-1])
    assert len(trials) == 10
    assert all(status == "TERMINATED" for _, _, status in trials), (trials, second.stderr[-3000:])
    for trial_id, x, _ in trials:
        if trial_id in configs_before:
            assert configs_before[trial_id] == x       # the draws of the first run are kept
    assert len({x for _, x, _ in trials}) == 10        # and no sample was drawn twice
    for trial_id in finished_before:
        steps = (logs / f"{trial_id}.log").read_text().split()
        assert steps == ["0", "1", "2", "3"]           # not one step re-ran
    for trial_id, _, _ in trials:
        steps = [int(step) for step in (logs / f"{trial_id}.log").read_text().split()]
        # A trial cut short resumes from the last checkpoint the killed driver had recorded
        # (state is written by a writer thread, so that can lag a step or two behind the
        # trial): at most one restart, each run contiguous, and the work ends at step 3.
        restarts = [i for i in range(1, len(steps)) if steps[i] != steps[i - 1] + 1]
        assert len(restarts) <= 1 and steps[-1] == 3, steps
        if restarts:
            assert steps[0] == 0 and steps[restarts[0]] <= steps[restarts[0] - 1] + 1, steps
