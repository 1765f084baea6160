"""The run directory: what one training run leaves behind for people and plots.

    <root>/<algo>_<env>_<YYYY-mm-dd_HH-MM-SS>/
        params.json      the config
        result.json      one JSON object per iteration (every result key)
        progress.csv     the same as a table (the columns of the first result)
        events.out.tfevents.*   TensorBoard scalars, when the `tensorboard` package is installed
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Any

from pyactor._private import run_registry

DEFAULT_ROOT = "~/pyactor_results"


def make_run_dir(root: str | None, algo: str, env: str) -> str:
    root = os.path.expanduser(root or DEFAULT_ROOT)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    safe_env = "".join(c if c.isalnum() or c in "-_." else "_" for c in env)
    base = os.path.join(root, f"{algo}_{safe_env}_{stamp}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}_{n}"
    os.makedirs(path)
    run_registry.register_run("rl", path)  # the dashboard lists the session's runs
    return path


def jsonable(value: Any) -> Any:
    """JSON without NaN (null instead) and with reprs for what JSON cannot hold (classes)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return repr(value)


class RunLogger:
    def __init__(self, run_dir: str, params: dict, tensorboard: bool = True):
        self.run_dir = run_dir
        with open(os.path.join(run_dir, "params.json"), "w") as f:
            json.dump(jsonable(params), f, indent=2, sort_keys=True)
        self._json = open(os.path.join(run_dir, "result.json"), "a")
        self._csv_file = open(os.path.join(run_dir, "progress.csv"), "a", newline="")
        self._csv: csv.DictWriter | None = None
        self._tb = _tensorboard_writer(run_dir) if tensorboard else None

    def log(self, result: dict) -> None:
        clean = jsonable(result)
        self._json.write(json.dumps(clean) + "\n")
        self._json.flush()
        scalars = {k: v for k, v in clean.items() if isinstance(v, (int, float)) or v is None}
        if self._csv is None:
            self._csv = csv.DictWriter(self._csv_file, fieldnames=list(scalars),
                                       extrasaction="ignore")
            if self._csv_file.tell() == 0:
                self._csv.writeheader()
        self._csv.writerow(scalars)
        self._csv_file.flush()
        if self._tb is not None:
            step = int(result.get("env_steps_total", result.get("training_iteration", 0)))
            for key, value in scalars.items():
                if value is not None and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        self._json.close()
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(run_dir: str):
    """tensorboard's own writer (no TensorFlow needed), or None when it is not installed."""
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=run_dir)


def read_results(run_dir: str) -> list[dict]:
    """The results a run directory holds, in order (for plots and tests)."""
    with open(os.path.join(run_dir, "result.json")) as f:
        return [json.loads(line) for line in f if line.strip()]
