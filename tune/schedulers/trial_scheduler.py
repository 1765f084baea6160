"""TrialScheduler: the decisions taken on running trials, and FIFOScheduler, the default.

    controller --on_trial_add(trial)-------------> scheduler   (a new trial exists)
    controller --on_trial_result(trial, result)--> scheduler --> CONTINUE | PAUSE | STOP | Exploit
    controller --on_trial_complete / _error / _remove(trial)--> scheduler (it left)
    controller --choose_trial_to_run()-----------> scheduler --> a PENDING/PAUSED trial, or None

A scheduler decides and never does I/O nor changes a trial: the controller carries its
decisions out. `controller` is a read-only view; all a scheduler may use of it is
`controller.get_trials()` (every trial, in creation order), so a test drives a scheduler with a
tiny object and scripted results, and no trial ever runs.
"""

from __future__ import annotations

from typing import Any

from .._checks import MetricModeHolder, check_metric, check_mode, result_value, signed
from ..trial import Trial, TrialStatus


class TrialScheduler(MetricModeHolder):
    """Base class of trial schedulers (Ray Tune's hook names)."""

    CONTINUE = "CONTINUE"
    PAUSE = "PAUSE"
    STOP = "STOP"
    NOOP = "NOOP"

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Take the experiment's metric/mode. False (and nothing changed) when this scheduler was
        built with a different one: the controller reports the conflict."""
        owner = type(self).__name__
        check_metric(metric, owner)
        check_mode(mode, owner)
        if (self._metric and metric and metric != self._metric) or \
                (self._mode and mode and mode != self._mode):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def on_trial_add(self, controller: Any, trial: Trial) -> None:
        pass

    def on_trial_error(self, controller: Any, trial: Trial) -> None:
        pass

    def on_trial_result(self, controller: Any, trial: Trial, result: dict) -> Any:
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, controller: Any, trial: Trial, result: dict) -> None:
        pass

    def on_trial_remove(self, controller: Any, trial: Trial) -> None:
        pass

    def choose_trial_to_run(self, controller: Any) -> Trial | None:
        """The first PENDING trial in creation order, else the first PAUSED one."""
        trials = controller.get_trials()
        for wanted in (TrialStatus.PENDING, TrialStatus.PAUSED):
            for trial in trials:
                if trial.status == wanted:
                    return trial
        return None

    def trials_to_stop(self, controller: Any) -> list[Trial]:
        """Trials besides the reporting one that this scheduler has decided to stop (HyperBand's
        paused losers), handed over once. A controller may stop them at once; one that never
        asks gets them back from choose_trial_to_run and a STOP at their next result."""
        return []

    def debug_string(self) -> str:
        return f"Using {type(self).__name__}"

    def get_state(self) -> dict:
        return {"metric": self._metric, "mode": self._mode}

    def set_state(self, state: dict) -> None:
        self._metric = state["metric"]
        self._mode = state["mode"]

    # Helpers for subclasses ------------------------------------------------------------------

    def _score(self, result: dict, trial: Any = None) -> float:
        """The result's metric turned so that larger is better; a clear error if it is missing."""
        return signed(result_value(result, self._metric, type(self).__name__, trial),
                      self._mode)

    def _time(self, result: dict, time_attr: str, trial: Any = None) -> float:
        return result_value(result, time_attr, type(self).__name__, trial)


class FIFOScheduler(TrialScheduler):
    """Runs trials in the order they were added and lets each run to its end."""


def trial_by_id(controller: Any, trial_id: str) -> Trial | None:
    """The controller's trial with this id (schedulers keep ids in their state, not trials)."""
    for trial in controller.get_trials():
        if trial.trial_id == trial_id:
            return trial
    return None
