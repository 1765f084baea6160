"""`pyactor rl train|evaluate|plot` end to end on a tiny budget, and its errors."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import run_python
from pyactor.rl import cli as rl_cli

TINY = json.dumps({"num_env_runners": 1, "num_envs_per_runner": 2, "rollout_fragment_length": 8,
                   "num_epochs": 1, "minibatch_size": 16})


def test_pyactor_cli_imports_rl_only_for_the_rl_command():
    """Importing pyactor.cli (every other command) loads neither pyactor.rl nor torch."""
    out = run_python("import sys, pyactor.cli\n"
                     "print([m for m in ('pyactor.rl', 'torch', 'gymnasium') if m in sys.modules])")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_train_evaluate_plot_end_to_end(tmp_path, pa_module, capsys):
    """train prints a progress line per iteration, the run directory and final checkpoint;
    evaluate prints the mean return; plot writes a PNG of several runs."""
    env = {**os.environ}
    env.pop("PYACTOR_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "pyactor.cli", "rl", "train", "--algo", "PPO",
                          "--env", "CartPole-v1", "--stop", '{"training_iteration": 3}',
                          "--config", TINY, "--seed", "1", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("iter ")]
    assert len(lines) == 3
    assert re.match(r"iter +3  env steps +48  steps/s +[\d,]+  return +\S+  time +[\d.]+ s",
                    lines[-1])
    run_dir = re.search(r"run directory: (\S+)", out.stdout).group(1)
    checkpoint = re.search(r"final checkpoint: (\S+)", out.stdout).group(1)
    assert run_dir.startswith(str(tmp_path)) and checkpoint.startswith(run_dir)
    assert glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))  # TensorBoard scalars

    assert rl_cli.main(["evaluate", checkpoint, "--episodes", "3"]) == 0
    assert re.search(r"PPO CartPole-v1: mean return over 3 episodes: [\d.]+",
                     capsys.readouterr().out)

    monkey_display = os.environ.pop("DISPLAY", None), os.environ.pop("WAYLAND_DISPLAY", None)
    try:
        assert rl_cli.main(["evaluate", checkpoint, "--episodes", "1", "--render"]) == 0
        assert "no display found" in capsys.readouterr().out
    finally:
        for name, value in zip(("DISPLAY", "WAYLAND_DISPLAY"), monkey_display):
            if value is not None:
                os.environ[name] = value

    png = tmp_path / "curve.png"
    assert rl_cli.main(["plot", run_dir, run_dir, "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_name_the_problem(capsys, tmp_path):
    """Unknown config keys, algorithms and bad JSON are reported by name with exit status 2."""
    assert rl_cli.main(["train", "--algo", "PPO", "--env", "CartPole-v1",
                        "--config", '{"learning_rate": 1}']) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err
    assert rl_cli.main(["train", "--algo", "XYZ", "--env", "CartPole-v1"]) == 2
    assert "unknown algorithm 'XYZ'" in capsys.readouterr().err
    assert rl_cli.main(["train", "--algo", "PPO", "--env", "CartPole-v1", "--stop", "[1"]) == 2
    assert "--stop is not valid JSON" in capsys.readouterr().err
    assert rl_cli.main(["evaluate", str(tmp_path)]) == 2
    assert "not a pyactor.rl checkpoint" in capsys.readouterr().err
    assert rl_cli.main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert "not a run directory" in capsys.readouterr().err
