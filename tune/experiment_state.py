"""The experiment's state on disk, for exact resume: one file, replaced atomically.

The controller calls `save` whenever a trial is added, changes status or gets a checkpoint, and
at most once a second for results alone (a resumed trial restarts from its checkpoint and
reports again, so only the searcher's and scheduler's view of in-flight results can lag by that
second). Writing goes to a temporary file that is then renamed over the old one, so a driver
killed at any instant leaves either the previous state or the new one, never half a file.
"""

from __future__ import annotations

import os
import pickle

import cloudpickle

from pyactor.tune.checkpoint import Checkpoint
from pyactor.tune.trial import Trial, TrialStatus

STATE_FILE = "experiment_state.pkl"
SETUP_FILE = "tuner.pkl"          # what does not change: space, configs (written once)
VERSION = 1


def state_path(experiment_dir: str) -> str:
    return os.path.join(experiment_dir, STATE_FILE)


def exists(experiment_dir: str) -> bool:
    return os.path.isfile(state_path(experiment_dir))


def encode(state: dict) -> bytes:
    """Plain pickle is ~10x faster than cloudpickle; the latter only for what needs it (a
    sample_from lambda in a searcher's state, a stopper defined in __main__)."""
    state = {"version": VERSION, **state}
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(state)


def write(experiment_dir: str, data: bytes) -> None:
    path = state_path(experiment_dir)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def save(experiment_dir: str, state: dict) -> None:
    write(experiment_dir, encode(state))


def load(experiment_dir: str) -> dict:
    path = state_path(experiment_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no experiment to restore at {experiment_dir!r} "
                                f"({STATE_FILE} not found)")
    with open(path, "rb") as file:
        state = cloudpickle.loads(file.read())
    if state.get("version") != VERSION:
        raise ValueError(f"{path} was written by another version of pyactor.tune "
                         f"(state version {state.get('version')!r}, expected {VERSION})")
    return state


def save_setup(experiment_dir: str, setup: dict) -> None:
    os.makedirs(experiment_dir, exist_ok=True)
    write_path = os.path.join(experiment_dir, SETUP_FILE)
    try:
        data = cloudpickle.dumps(setup)
    except Exception as error:
        raise TypeError(f"the experiment's setup (param_space, TuneConfig, RunConfig) cannot be "
                        f"pickled for resume: {error}") from error
    with open(write_path + ".tmp", "wb") as file:
        file.write(data)
    os.replace(write_path + ".tmp", write_path)


def load_setup(experiment_dir: str) -> dict:
    with open(os.path.join(experiment_dir, SETUP_FILE), "rb") as file:
        return cloudpickle.loads(file.read())


def trial_to_record(trial: Trial) -> dict:
    return {"trial_id": trial.trial_id, "config": trial.config, "status": trial.status.value,
            "last_result": trial.last_result,
            "checkpoint": trial.checkpoint.path if trial.checkpoint else None,
            "resources": trial.resources, "experiment_tag": trial.experiment_tag,
            "local_path": trial.local_path, "num_failures": trial.num_failures,
            "error": trial.error}


def trial_from_record(record: dict) -> Trial:
    record = dict(record)
    record["status"] = TrialStatus(record["status"])
    record["checkpoint"] = Checkpoint(record["checkpoint"]) if record["checkpoint"] else None
    return Trial(**record)
