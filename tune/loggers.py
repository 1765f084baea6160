"""What each trial leaves in its folder, written by the controller as results arrive:

    params.json (params.pkl)   the trial's config (written when it starts; the pickle only when
                               the config holds values JSON cannot write)
    result.json                one JSON line per result
    progress.csv               one row per result (the columns of the first result, flattened)
    events.out.tfevents.*      TensorBoard scalars, and the HParams session written at start

Files stay open while the trial runs; a writer thread flushes them whenever it has caught up
with the results, so a person (or `pyactor tune plot`) reads them live, a burst of results
costing one flush rather than one per result.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import threading

from pyactor.tune.tensorboard_writer import EventFileWriter

_SKIP_SCALARS = {"training_iteration", "timestamp", "pid", "trial_id"}


def flatten(result: dict, prefix: str = "") -> dict:
    """Nested dicts become "outer/inner" keys (as Tune's CSV and TensorBoard loggers do)."""
    flat = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _json_default(value):
    try:
        return value.item()      # numpy scalars
    except AttributeError:
        return repr(value)


def _hparam(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class TrialLogger:
    """The files of one trial (reopened in append mode when the trial restarts)."""

    def __init__(self, trial_dir: str, trial_id: str, config: dict, tensorboard: bool = True):
        os.makedirs(trial_dir, exist_ok=True)
        self.trial_dir = trial_dir
        try:
            text = json.dumps(config, indent=2, sort_keys=True)
        except (TypeError, ValueError):
            # Not plain JSON: keep the exact values in params.pkl too (creating a file costs
            # milliseconds on a busy disk, so only when it carries something).
            text = json.dumps(config, indent=2, sort_keys=True, default=_json_default)
            try:
                with open(os.path.join(trial_dir, "params.pkl"), "wb") as file:
                    pickle.dump(config, file)
            except Exception:
                pass
        with open(os.path.join(trial_dir, "params.json"), "w") as file:
            file.write(text)
        self._json = open(os.path.join(trial_dir, "result.json"), "a")
        csv_path = os.path.join(trial_dir, "progress.csv")
        self._csv_existing_header = _read_header(csv_path)
        self._csv_file = open(csv_path, "a", newline="")
        self._csv: csv.DictWriter | None = None
        self._tensorboard = None
        self.closed = False
        if tensorboard:
            self._tensorboard = EventFileWriter(trial_dir)
            hparams = {key: _hparam(value) for key, value in flatten(config).items()}
            self._tensorboard.hparams_session_start(hparams, group_name=trial_id)
            self._tensorboard.flush()

    def on_result(self, result: dict) -> None:
        flat = flatten(result)
        self._json.write(json.dumps(result, default=_json_default) + "\n")
        if self._csv is None:
            fields = self._csv_existing_header or list(flat)
            self._csv = csv.DictWriter(self._csv_file, fields, extrasaction="ignore")
            if not self._csv_existing_header:
                self._csv.writeheader()
        self._csv.writerow(flat)
        if self._tensorboard is not None:
            scalars = {key: float(value) for key, value in flat.items()
                       if key not in _SKIP_SCALARS and isinstance(value, (int, float))
                       and not isinstance(value, bool) and math.isfinite(value)}
            self._tensorboard.scalars(scalars, step=result.get("training_iteration", 0),
                                      wall_time=result.get("timestamp"))

    def flush(self) -> None:
        self._json.flush()
        self._csv_file.flush()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self, failed: bool = False) -> None:
        self.closed = True
        if self._tensorboard is not None:
            self._tensorboard.hparams_session_end(2 if failed else 1)
            self._tensorboard.close()
        self._json.close()
        self._csv_file.close()


def _read_header(path: str) -> list | None:
    try:
        with open(path, newline="") as file:
            return next(csv.reader(file), None)
    except FileNotFoundError:
        return None


class TrialLogs:
    """Every running trial's TrialLogger, by trial id; used only on the writer threads (each
    trial always on the same one)."""

    def __init__(self):
        self._open: dict[str, TrialLogger] = {}
        self._unflushed: dict[int, set] = {}      # writer thread -> its loggers to flush
        self._lock = threading.Lock()

    def start(self, trial_id: str, trial_dir: str, config: dict) -> None:
        self.close(trial_id)
        trial_logger = TrialLogger(trial_dir, trial_id, config)
        with self._lock:
            self._open[trial_id] = trial_logger

    def result(self, trial_id: str, result: dict) -> None:
        trial_logger = self._open[trial_id]
        trial_logger.on_result(result)
        self._unflushed.setdefault(threading.get_ident(), set()).add(trial_logger)

    def flush(self) -> None:
        """Called by a writer thread when its queue is empty: what it wrote becomes visible
        (one flush per burst of results, not one per result). Each thread flushes only its
        own trials' files, so a flush never meets another thread's close."""
        loggers = self._unflushed.pop(threading.get_ident(), ())
        for trial_logger in loggers:
            if not trial_logger.closed:
                trial_logger.flush()

    def close(self, trial_id: str, failed: bool = False) -> None:
        with self._lock:
            trial_logger = self._open.pop(trial_id, None)
        if trial_logger is not None:
            trial_logger.close(failed=failed)

    def close_all(self, shard: int, shard_of=None) -> None:
        """Close the trials of one writer shard (called on that shard's thread)."""
        with self._lock:
            mine = [t for t in self._open if shard_of is None or shard_of(t) == shard]
        for trial_id in mine:
            self.close(trial_id)
