"""When to stop a trial (or everything) besides the scheduler: RunConfig(stop=...) takes a dict
of thresholds, a function (trial_id, result) -> bool, or a Stopper."""

from __future__ import annotations

import time


class Stopper:
    """Subclass and define __call__(trial_id, result) -> bool (stop that trial) and optionally
    stop_all() -> bool (stop the experiment)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        raise NotImplementedError

    def stop_all(self) -> bool:
        return False


class _DictStopper(Stopper):
    """{"training_iteration": 10, "mean_accuracy": 0.98}: stop when any value reaches its bound."""

    def __init__(self, thresholds: dict):
        self._thresholds = dict(thresholds)
        self._checked = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        if not self._checked:
            missing = [key for key in self._thresholds if key not in result]
            if missing:
                raise ValueError(f"stop={self._thresholds!r} names {missing} but the trial's "
                                 f"result has only {sorted(result)}")
            self._checked = True
        return any(result[key] >= bound for key, bound in self._thresholds.items())


class _FunctionStopper(Stopper):
    def __init__(self, function):
        self._function = function

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(self._function(trial_id, result))


class MaximumIterationStopper(Stopper):
    def __init__(self, max_iter: int):
        self._max_iter = max_iter

    def __call__(self, trial_id: str, result: dict) -> bool:
        return result["training_iteration"] >= self._max_iter


class TimeoutStopper(Stopper):
    """Stop everything after timeout_s seconds (as TuneConfig(time_budget_s=...))."""

    def __init__(self, timeout_s: float):
        self._deadline = time.monotonic() + timeout_s

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return time.monotonic() >= self._deadline


def make_stopper(stop) -> Stopper | None:
    if stop is None:
        return None
    if isinstance(stop, Stopper):
        return stop
    if isinstance(stop, dict):
        return _DictStopper(stop)
    if callable(stop):
        return _FunctionStopper(stop)
    raise TypeError(f"stop must be a dict, a callable or a tune.Stopper, "
                    f"got {type(stop).__name__}")
