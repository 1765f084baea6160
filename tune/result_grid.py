"""What fit() returns: a ResultGrid of Result, one per trial; and tune.run's ExperimentAnalysis.

Built from the controller's trials (or from a finished experiment's folder). A Result's history
(`metrics_dataframe`, scopes other than "last" in get_best_result) is read from the trial's
result.json when asked for, so fit() itself never reads files back.
"""

from __future__ import annotations

import json
import math
import os

from pyactor.tune.checkpoint import Checkpoint
from pyactor.tune.config import check_mode
from pyactor.tune.trial import Trial, TrialStatus

_SCOPES = ("last", "avg", "last-5-avg", "last-10-avg", "all")


class Result:
    def __init__(self, trial: Trial):
        self.config = trial.config
        self.metrics = dict(trial.last_result)
        self.checkpoint: Checkpoint | None = trial.checkpoint
        self.error: str | None = trial.error
        self.path = trial.local_path
        self.trial_id = trial.trial_id
        self.status = trial.status

    def history(self) -> list[dict]:
        try:
            with open(os.path.join(self.path, "result.json")) as file:
                return [json.loads(line) for line in file if line.strip()]
        except FileNotFoundError:
            return [self.metrics] if self.metrics else []

    @property
    def metrics_dataframe(self):
        import pandas as pd      # an optional extra: pip install pyactor[tune]
        return pd.DataFrame(self.history())

    def _score(self, metric: str, mode: str, scope: str) -> float:
        if scope == "last":
            values = [self.metrics.get(metric)]
        else:
            values = [row.get(metric) for row in self.history()]
            values = {"avg": values, "all": values, "last-5-avg": values[-5:],
                      "last-10-avg": values[-10:]}[scope]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if not values:
            return float("nan")
        if scope == "all":
            return max(values) if mode == "max" else min(values)
        return sum(values) / len(values)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.metrics.items()
                 if k not in ("timestamp", "pid", "trial_id", "time_this_iter_s")}
        return (f"Result(trial_id={self.trial_id!r}, status={self.status.value}, "
                f"metrics={shown}, path={self.path!r}"
                + (", error=True" if self.error else "") + ")")


class ResultGrid:
    def __init__(self, trials: list[Trial], experiment_path: str, metric: str | None = None,
                 mode: str | None = None):
        self._results = [Result(trial) for trial in trials]
        self.experiment_path = experiment_path
        self._metric, self._mode = metric, mode

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, index: int) -> Result:
        return self._results[index]

    def __iter__(self):
        return iter(self._results)

    @property
    def errors(self) -> list[str]:
        return [result.error for result in self._results if result.error]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        return sum(r.status == TrialStatus.TERMINATED for r in self._results)

    def get_best_result(self, metric: str | None = None, mode: str | None = None,
                        scope: str = "last", filter_nan_and_inf: bool = True) -> Result:
        metric = metric or self._metric
        mode = mode or self._mode
        if metric is None or mode is None:
            raise ValueError("get_best_result() needs a metric and a mode: pass them, or set "
                             "TuneConfig(metric=..., mode=...)")
        check_mode(mode)
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
        reported = [r for r in self._results if r.metrics]
        if not reported:
            raise RuntimeError("no trial reported a result: there is no best one")
        seen = set().union(*(r.metrics for r in reported))
        if metric not in seen:
            raise ValueError(f"no trial reported a metric named {metric!r}; the results have "
                             f"{sorted(seen)}")
        scored = [(r._score(metric, mode, scope), r) for r in reported]
        finite = [(s, r) for s, r in scored if math.isfinite(s)]
        if filter_nan_and_inf:
            scored = finite
        if not scored:
            raise RuntimeError(f"every trial's {metric!r} is NaN or infinite")
        pick = max if mode == "max" else min
        return pick(scored, key=lambda item: item[0])[1]

    def get_dataframe(self, filter_metric: str | None = None, filter_mode: str | None = None):
        """One row per trial: its last result (or, with filter_metric/mode, its best one) and
        its config as config/... columns."""
        import pandas as pd
        from pyactor.tune.loggers import flatten
        rows = []
        for result in self._results:
            row = result.metrics
            if filter_metric is not None:
                check_mode(filter_mode)
                history = [h for h in result.history() if filter_metric in h]
                if history:
                    pick = max if filter_mode == "max" else min
                    row = pick(history, key=lambda h: h[filter_metric])
            rows.append({**flatten(row), **flatten(result.config, "config/"),
                         "logdir": result.path})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"ResultGrid<{len(self)} results, {self.num_errors} errors>"


class ExperimentAnalysis:
    """tune.run's return value (the older API): best_config, best_result, results..."""

    def __init__(self, grid: ResultGrid, metric: str | None, mode: str | None):
        self.result_grid = grid
        self.default_metric, self.default_mode = metric, mode
        self.trials = list(grid)
        self.experiment_path = grid.experiment_path

    def _best(self) -> Result:
        return self.result_grid.get_best_result(self.default_metric, self.default_mode)

    @property
    def best_result(self) -> dict:
        return self._best().metrics

    @property
    def best_config(self) -> dict:
        return self._best().config

    @property
    def best_checkpoint(self) -> Checkpoint | None:
        return self._best().checkpoint

    @property
    def best_logdir(self) -> str:
        return self._best().path

    @property
    def results(self) -> dict:
        return {result.trial_id: result.metrics for result in self.result_grid}

    @property
    def results_df(self):
        return self.result_grid.get_dataframe()

    def get_best_config(self, metric: str | None = None, mode: str | None = None) -> dict:
        return self.result_grid.get_best_result(metric or self.default_metric,
                                                mode or self.default_mode).config
