"""`pyactor tune plot EXP_DIR`: a PNG of an experiment, read from its folder.

Left: every trial's metric against training_iteration; a trial that stopped before the longest
one (an early stop by the scheduler, a stopper or an error) ends in a marker where it stopped.
Right, when the search space has a grid over exactly one parameter: the sensitivity plot: each
trial's final metric against that parameter, with the mean over the samples at each value.
Needs matplotlib (pip install pyactor[tune]); runs without a display.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from pyactor.tune import experiment_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyactor tune plot",
                                     description="plot every trial's metric curve (PNG)")
    parser.add_argument("experiment_dir")
    parser.add_argument("--metric", default=None, help="default: the experiment's metric")
    parser.add_argument("--output", "-o", default=None,
                        help="PNG path (default: EXPERIMENT_DIR/tune_plot.png)")
    args = parser.parse_args(argv)
    path = plot_experiment(args.experiment_dir, metric=args.metric, output=args.output)
    print(path)
    return 0


def load_curves(experiment_dir: str, metric: str | None = None):
    """(metric, grid parameter path or None, [(trial record, [(iteration, value)])])."""
    state = experiment_state.load(experiment_dir)
    metric = metric or state["metric"]
    trials = state["trials"]
    if metric is None:
        raise ValueError("the experiment has no metric (TuneConfig(metric=...)): pass --metric")
    curves = []
    seen_keys: set = set()
    for record in trials:
        points = []
        try:
            with open(os.path.join(record["local_path"], "result.json")) as file:
                for line in file:
                    result = json.loads(line)
                    seen_keys.update(result)
                    value = result.get(metric)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        points.append((result["training_iteration"], value))
        except FileNotFoundError:
            pass
        curves.append((record, points))
    if seen_keys and metric not in seen_keys:
        raise ValueError(f"no trial reported {metric!r}; the results have {sorted(seen_keys)}")
    space = experiment_state.load_setup(experiment_dir)["param_space"]
    return metric, _single_grid_parameter(space), curves


def _single_grid_parameter(space: dict, prefix: tuple = ()) -> tuple | None:
    grids = []

    def walk(node, path):
        if isinstance(node, dict) and "grid_search" in node and len(node) == 1:
            grids.append(path)
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + (key,))
    walk(space, prefix)
    return grids[0] if len(grids) == 1 else None


def _lookup(config: dict, path: tuple):
    for key in path:
        config = config[key]
    return config


def plot_experiment(experiment_dir: str, metric: str | None = None,
                    output: str | None = None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, grid_path, curves = load_curves(experiment_dir, metric)
    longest = max((points[-1][0] for _, points in curves if points), default=0)
    columns = 2 if grid_path else 1
    figure, axes = plt.subplots(1, columns, figsize=(6.5 * columns, 4.5), squeeze=False)
    ax = axes[0][0]
    stopped = False
    for record, points in curves:
        if not points:
            continue
        xs, ys = zip(*points)
        line, = ax.plot(xs, ys, linewidth=1, alpha=0.8)
        if xs[-1] < longest or record["status"] == "ERROR":
            marker = "x" if record["status"] != "ERROR" else "s"
            ax.plot([xs[-1]], [ys[-1]], marker, color=line.get_color(), markersize=7)
            stopped = True
    ax.set_xlabel("training_iteration")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of {len(curves)} trials")
    if stopped:
        ax.plot([], [], "x", color="black", label="stopped early (x), errored (square)")
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    if grid_path:
        _sensitivity(axes[0][1], metric, grid_path, curves)
    figure.tight_layout()
    output = output or os.path.join(experiment_dir, "tune_plot.png")
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def _sensitivity(ax, metric: str, grid_path: tuple, curves) -> None:
    by_value: dict = {}
    for record, points in curves:
        if points:
            value = _lookup(record["config"], grid_path)
            by_value.setdefault(value, []).append(points[-1][1])
    name = "/".join(map(str, grid_path))
    values = sorted(by_value, key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, (int, float)) for v in values)
    xs = values if numeric else list(range(len(values)))
    for x, value in zip(xs, values):
        ax.scatter([x] * len(by_value[value]), by_value[value], alpha=0.5, color="tab:blue")
    means = [sum(by_value[v]) / len(by_value[v]) for v in values]
    ax.plot(xs, means, "-o", color="tab:red", label="mean over samples")
    if numeric and values and min(values) > 0 and max(values) / min(values) >= 100:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in values])
    ax.set_xlabel(name)
    ax.set_ylabel(f"final {metric}")
    ax.set_title(f"sensitivity of {metric} to {name}")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
