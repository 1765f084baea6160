"""MedianStoppingRule (Golovin et al. 2017, Google Vizier): stop a trial whose best score so far
is worse than the median of the other trials' running averages at the same point in time.

Each result is kept per trial. Past the grace period, a trial reporting at time t is compared
with the other trials that have reached t (running or finished): the running average of each of
their scores up to t, then the median of those. With fewer than min_samples_required such trials
it goes on (or, with min_time_slice, yields its slot to a waiting trial every min_time_slice).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import require_metric_mode
from ..trial import Trial, TrialStatus
from .trial_scheduler import FIFOScheduler, TrialScheduler


class MedianStoppingRule(FIFOScheduler):
    def __init__(self, time_attr: str = "time_total_s", metric: str | None = None,
                 mode: str | None = None, grace_period: float = 60.0,
                 min_samples_required: int = 3, min_time_slice: float = 0,
                 hard_stop: bool = True):
        super().__init__(metric, mode)
        if grace_period < 0 or min_time_slice < 0:
            raise ValueError("MedianStoppingRule: grace_period and min_time_slice must be >= 0")
        if not isinstance(min_samples_required, int) or min_samples_required < 1:
            raise ValueError("MedianStoppingRule: min_samples_required must be an int >= 1, "
                             f"got {min_samples_required!r}")
        self._time_attr = time_attr
        self._grace_period = grace_period
        self._min_samples_required = min_samples_required
        self._min_time_slice = min_time_slice
        self._hard_stop = hard_stop
        self._history: dict[str, list[tuple[float, float]]] = {}   # trial_id -> [(time, score)]
        self._stopped: set[str] = set()
        self._last_pause: dict[str, float] = {}

    def on_trial_add(self, controller: Any, trial: Trial) -> None:
        require_metric_mode(self._metric, self._mode, "MedianStoppingRule")

    def on_trial_result(self, controller: Any, trial: Trial, result: dict) -> str:
        if trial.trial_id in self._stopped:
            return TrialScheduler.STOP if self._hard_stop else TrialScheduler.PAUSE
        time = self._time(result, self._time_attr, trial)
        self._history.setdefault(trial.trial_id, []).append((time, self._score(result, trial)))
        if time < self._grace_period:
            return TrialScheduler.CONTINUE
        others = [tid for tid, history in self._history.items()
                  if tid != trial.trial_id and history[0][0] <= time <= history[-1][0]]
        if len(others) < self._min_samples_required:
            return self._on_insufficient_samples(controller, trial, time)
        median = float(np.median([self._running_mean(tid, time) for tid in others]))
        best = max(score for _, score in self._history[trial.trial_id])
        if best < median:
            self._stopped.add(trial.trial_id)
            return TrialScheduler.STOP if self._hard_stop else TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, controller: Any, trial: Trial, result: dict) -> None:
        if result and self._metric in result and self._time_attr in result:
            history = self._history.setdefault(trial.trial_id, [])
            entry = (result[self._time_attr], self._score(result))
            if not history or history[-1] != entry:
                history.append(entry)

    def _running_mean(self, trial_id: str, time: float) -> float:
        return float(np.mean([score for t, score in self._history[trial_id] if t <= time]))

    def _on_insufficient_samples(self, controller: Any, trial: Trial, time: float) -> str:
        if self._min_time_slice <= 0:
            return TrialScheduler.CONTINUE
        waiting = any(t.status in (TrialStatus.PENDING, TrialStatus.PAUSED)
                      for t in controller.get_trials() if t is not trial)
        if waiting and time - self._last_pause.get(trial.trial_id, 0.0) >= self._min_time_slice:
            self._last_pause[trial.trial_id] = time
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Using MedianStoppingRule: num_stopped={len(self._stopped)}."

    def get_state(self) -> dict:
        return {**super().get_state(),
                "history": {tid: list(h) for tid, h in self._history.items()},
                "stopped": sorted(self._stopped), "last_pause": dict(self._last_pause)}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._history = {tid: list(h) for tid, h in state["history"].items()}
        self._stopped = set(state["stopped"])
        self._last_pause = dict(state["last_pause"])
