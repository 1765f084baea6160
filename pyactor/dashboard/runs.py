"""The RL runs and Tune experiments of the session, read from their own folders.

    run_registry (one file per run) --> list_runs() --> /api/runs
    <rl run dir>/result.json              --> run_detail() --> curves
    <tune exp dir>/<trial>/result.json, params.json --> run_detail() --> trial table + curves

Files are read when asked (a page refresh), never followed: a run's writers (rl/logger.py,
tune/loggers.py) flush a line per result, so a half-written last line is skipped, not an error.
"""

from __future__ import annotations

import json
import math
import os

from pyactor._private import run_registry

MAX_POINTS = 400  # a curve is thinned to this many points
MAX_FILE_BYTES = 32 * 2**20
# Keys a curve is drawn for, when the results have them, in this order of preference.
CURVE_KEYS = ("episode_return_mean", "loss", "mean_loss", "accuracy", "score", "reward")
X_KEYS = ("training_iteration", "env_steps_total", "time_total_s")


def list_runs() -> list[dict]:
    runs = []
    for entry in run_registry.registered_runs():
        results = _results_path_count(entry)
        runs.append({"id": entry["id"], "kind": entry["kind"], "name": entry["name"],
                     "path": entry["path"], "registered_at": entry["registered_at"], **results})
    return runs


def run_detail(run_id: str) -> dict | None:
    entry = next((r for r in run_registry.registered_runs() if r["id"] == run_id), None)
    if entry is None:
        return None
    if entry["kind"] == "rl":
        results = read_results(os.path.join(entry["path"], "result.json"))
        return {"id": run_id, "kind": "rl", "name": entry["name"], "path": entry["path"],
                "curve": curve(results), "last": _scalars(results[-1]) if results else {}}
    trials = []
    for folder in _trial_folders(entry["path"]):
        results = read_results(os.path.join(folder, "result.json"))
        trials.append({"name": os.path.basename(folder), "config": _read_json(
            os.path.join(folder, "params.json")), "iterations": len(results),
            "last": _scalars(results[-1]) if results else {}, "curve": curve(results)})
    return {"id": run_id, "kind": "tune", "name": entry["name"], "path": entry["path"],
            "trials": trials}


def _results_path_count(entry: dict) -> dict:
    if entry["kind"] == "rl":
        return {"results": _count_lines(os.path.join(entry["path"], "result.json"))}
    folders = _trial_folders(entry["path"])
    return {"trials": len(folders),
            "results": sum(_count_lines(os.path.join(f, "result.json")) for f in folders)}


def _trial_folders(experiment_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(experiment_dir))
    except OSError:
        return []
    return [os.path.join(experiment_dir, n) for n in names
            if os.path.isfile(os.path.join(experiment_dir, n, "params.json"))
            or os.path.isfile(os.path.join(experiment_dir, n, "result.json"))]


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except OSError:
        return 0


def read_results(path: str) -> list[dict]:
    """Every complete JSON line of a result.json (the last MAX_FILE_BYTES of a huge one)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - MAX_FILE_BYTES))
            data = f.read()
    except OSError:
        return []
    results = []
    for line in data.split(b"\n"):
        try:
            value = json.loads(line)
        except ValueError:
            continue  # the line being written, or the cut first one of a huge file
        if isinstance(value, dict):
            results.append(value)
    return results


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _scalars(result: dict) -> dict:
    return {k: v for k, v in result.items() if _number(v) is not None}


def curve(results: list[dict]) -> dict:
    """{"x": key, "y": key, "points": [[x, y], ...]} for the first known metric the results
    have (else their first numeric key), thinned to MAX_POINTS."""
    if not results:
        return {"x": None, "y": None, "points": []}
    keys = [k for k in results[-1] if _number(results[-1][k]) is not None]
    x_key = next((k for k in X_KEYS if k in keys), None)
    y_key = next((k for k in CURVE_KEYS if k in keys), None) or next(
        (k for k in keys if k not in X_KEYS and k not in ("timestamp", "pid")), None)
    points = []
    for i, result in enumerate(results):
        x = _number(result.get(x_key)) if x_key else i + 1
        y = _number(result.get(y_key))
        if x is not None and y is not None:
            points.append([x, y])
    step = max(1, math.ceil(len(points) / MAX_POINTS))
    thinned = points[::step]
    if points and thinned[-1] is not points[-1]:
        thinned.append(points[-1])
    return {"x": x_key or "result", "y": y_key, "points": thinned}
