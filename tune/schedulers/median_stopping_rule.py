"""MedianStoppingRule (Golovin et al. 2017, Google Vizier): stop a trial whose best score so far
is worse than the median of the other trials' running averages at the same point in time.

Each result is kept per trial (as prefix sums, so a running mean costs a bisection). Past the grace period, a trial reporting at time t is compared
with the other trials that have reached t (running or finished): the running average of each of
their scores up to t, then the median of those. With fewer than min_samples_required such trials
it goes on (or, with min_time_slice, yields its slot to a waiting trial every min_time_slice).
"""

from __future__ import annotations

import bisect
import copy
import statistics
from typing import Any

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
        # trial_id -> {"times": [...], "sums": [prefix sums of the scores], "best": score}
        self._history: dict[str, dict] = {}
        self._stopped: set[str] = set()
        self._last_pause: dict[str, float] = {}

    def on_trial_add(self, controller: Any, trial: Trial) -> None:
        require_metric_mode(self._metric, self._mode, "MedianStoppingRule")

    def on_trial_result(self, controller: Any, trial: Trial, result: dict) -> str:
        if trial.trial_id in self._stopped:
            return TrialScheduler.STOP if self._hard_stop else TrialScheduler.PAUSE
        time = self._time(result, self._time_attr, trial)
        self._record(trial.trial_id, time, self._score(result, trial))
        if time < self._grace_period:
            return TrialScheduler.CONTINUE
        others = [tid for tid, h in self._history.items()
                  if tid != trial.trial_id and h["times"][0] <= time <= h["times"][-1]]
        if len(others) < self._min_samples_required:
            return self._on_insufficient_samples(controller, trial, time)
        median = statistics.median([self._running_mean(tid, time) for tid in others])
        if self._history[trial.trial_id]["best"] < median:
            self._stopped.add(trial.trial_id)
            return TrialScheduler.STOP if self._hard_stop else TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, controller: Any, trial: Trial, result: dict) -> None:
        if result and self._metric in result and self._time_attr in result:
            history = self._history.get(trial.trial_id)
            time = result[self._time_attr]
            if history is None or history["times"][-1] != time:
                self._record(trial.trial_id, time, self._score(result))

    def _record(self, trial_id: str, time: float, score: float) -> None:
        """Append to the trial's times and prefix sums of scores (a running mean at any time
        is then a bisection, not a pass over the history: this runs on every result)."""
        history = self._history.setdefault(trial_id, {"times": [], "sums": [], "best": score})
        times, sums = history["times"], history["sums"]
        if times and time <= times[-1]:     # restored from an earlier checkpoint: this result
            keep = bisect.bisect_left(times, time)      # replaces those from `time` on
            del times[keep:], sums[keep:]
            history["best"] = max([b - a for a, b in zip([0.0] + sums, sums)], default=score)
        times.append(time)
        sums.append((sums[-1] if sums else 0.0) + score)
        history["best"] = max(history["best"], score)

    def _running_mean(self, trial_id: str, time: float) -> float:
        history = self._history[trial_id]
        count = bisect.bisect_right(history["times"], time)
        return history["sums"][count - 1] / count

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
                "history": copy.deepcopy(self._history),
                "stopped": sorted(self._stopped), "last_pause": dict(self._last_pause)}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._history = copy.deepcopy(state["history"])
        self._stopped = set(state["stopped"])
        self._last_pause = dict(state["last_pause"])
