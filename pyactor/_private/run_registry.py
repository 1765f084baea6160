"""Where this host's RL runs and Tune experiments write, so that the dashboard can list them.

    rl Algorithm (first result) --register_run("rl", run_dir)-----+
    tune controller (start)     --register_run("tune", exp_dir)---+--> <session dir>/runs/<id>.json
    dashboard /api/runs <-- registered_runs() ---------------------+

One small file per run, written once when the run starts: the cost is an open and a write per run,
never per result. The dashboard then reads the run's own progress.csv/result.json files. The
folder keeps the newest MAX_RUNS entries; `pyactor stop` empties it with the session.

A run registers only on a host where `pyactor start --head` recorded a cluster (its address file
is in the session folder): that is where a dashboard runs. A program on its own `pa.init()` node
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from pyactor._private import session

MAX_RUNS = 200
KINDS = ("rl", "tune")


def runs_dir() -> str:
    return os.path.join(session.session_dir(), "runs")


def register_run(kind: str, path: str, name: str | None = None) -> None:
    """Record a run directory; never raises (a run must not fail because of the dashboard)."""
    if kind not in KINDS:
        raise ValueError(f"run kind must be one of {KINDS}, got {kind!r}")
    if not session.cluster_recorded():
        return  # no cluster started on this host: no dashboard to list it
    path = os.path.abspath(path)
    entry = {"kind": kind, "path": path, "name": name or os.path.basename(path),
             "registered_at": time.time(), "pid": os.getpid()}
    try:
        folder = runs_dir()
        os.makedirs(folder, mode=0o700, exist_ok=True)
        run_id = hashlib.sha1(path.encode()).hexdigest()[:16]
        tmp = os.path.join(folder, f".{run_id}.tmp")
        with open(tmp, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, os.path.join(folder, f"{run_id}.json"))
        _prune(folder)
    except OSError:
        pass


def _prune(folder: str) -> None:
    names = [n for n in os.listdir(folder) if n.endswith(".json")]
    if len(names) <= MAX_RUNS:
        return
    names.sort(key=lambda n: os.path.getmtime(os.path.join(folder, n)))
    for name in names[:-MAX_RUNS]:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass


def registered_runs() -> list[dict]:
    """The runs registered on this host whose folder still exists, newest first, each with
    its `id` (the name of its file)."""
    folder = runs_dir()
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".json")]
    except OSError:
        return []
    runs = []
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and os.path.isdir(entry.get("path", "")):
            runs.append({**entry, "id": name[:-len(".json")]})
    runs.sort(key=lambda r: r.get("registered_at", 0), reverse=True)
    return runs


def forget_runs() -> None:
    folder = runs_dir()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass
