"""Checks of metric/mode and of reported results, shared by searchers and schedulers.

They run at the first point a mistake can be seen (construction, the first result), so a typo in
a metric name fails in the first second of an experiment rather than after an hour of trials.
"""

from __future__ import annotations

from typing import Any

MODES = ("min", "max")


def check_mode(mode: str | None, owner: str) -> str | None:
    """`mode` itself when it is None, "min" or "max"; a ValueError naming `owner` otherwise."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
    return mode


def check_metric(metric: Any, owner: str) -> str | None:
    if metric is not None and not isinstance(metric, str):
        raise TypeError(f"{owner}: metric must be a str (a key of the reported results), "
                        f"got {type(metric).__name__}")
    return metric


def require_metric_mode(metric: str | None, mode: str | None, owner: str) -> None:
    """A ValueError unless both are set: a decision needs to know what is better."""
    if metric is None or mode is None:
        raise ValueError(
            f"{owner} needs a metric and a mode: pass them to it, or set "
            f"TuneConfig(metric=..., mode=...) (metric={metric!r}, mode={mode!r})")


def result_value(result: dict, key: str, owner: str, trial: Any = None) -> Any:
    """result[key], or a ValueError that names the key, the trial and the keys it did report."""
    try:
        return result[key]
    except KeyError:
        who = f" from trial {trial}" if trial is not None else ""
        seen = ", ".join(sorted(map(str, result))) or "none"
        raise ValueError(
            f"{owner}: the result{who} has no {key!r}; its keys are: {seen}. Report "
            f"{key!r} from the trainable, or give the scheduler/searcher a metric it reports"
        ) from None


def signed(value: float, mode: str) -> float:
    """The value turned so that larger is better: -value in "min" mode."""
    return float(value) if mode == "max" else -float(value)


class MetricModeHolder:
    """The metric and mode a searcher or scheduler compares results by, checked when given."""

    def __init__(self, metric: str | None = None, mode: str | None = None):
        self._metric = check_metric(metric, type(self).__name__)
        self._mode = check_mode(mode, type(self).__name__)

    @property
    def metric(self) -> str | None:
        return self._metric

    @property
    def mode(self) -> str | None:
        return self._mode
