"""ASHA: asynchronous successive halving (Li et al. 2018, arXiv:1810.05934).

A bracket has rungs at grace_period * rf**k (k = 0, 1, ...) below max_t. When a trial's
time_attr first reaches a rung, its score is compared with the scores recorded there by the
trials that came before it: below the (1 - 1/rf) quantile of them it is stopped, otherwise it
goes on; its score is then recorded at that rung. No trial ever waits for another (hence
"asynchronous"): the first trials at a rung always pass, and the cut tightens as the rung fills.
With brackets > 1, trial i goes to bracket s with probability proportional to e**(rungs of s),
bracket s starting its rungs at grace_period * rf**s.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from .._checks import require_metric_mode
from ..trial import Trial
from .trial_scheduler import FIFOScheduler, TrialScheduler


class _Bracket:
    """The rungs of one bracket: milestone -> {trial_id: score recorded there}."""

    def __init__(self, min_t: float, max_t: float, reduction_factor: float, s: int):
        self.rf = reduction_factor
        count = int(math.log(max_t / min_t) / math.log(reduction_factor) + 1e-9) + 1 - s
        # Highest milestone first: a trial is judged at the highest rung it has reached.
        self.rungs: list[tuple[float, dict]] = [
            (min_t * reduction_factor ** (k + s), {}) for k in reversed(range(max(count, 0)))]

    def cutoff(self, recorded: dict) -> float | None:
        """The (1 - 1/rf) quantile of the recorded scores (NaNs left out), interpolated
        linearly as numpy's percentile does; plain Python: this runs on every rung result."""
        values = sorted(v for v in recorded.values() if v == v)
        if not values:
            return None
        position = (len(values) - 1) * (1 - 1 / self.rf)
        below = int(position)
        above = min(below + 1, len(values) - 1)
        return values[below] + (values[above] - values[below]) * (position - below)

    def on_result(self, trial_id: str, time: float, score: float) -> str:
        for milestone, recorded in self.rungs:
            if time < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            recorded[trial_id] = score
            if cutoff is not None and score < cutoff:
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    def describe(self) -> str:
        return ", ".join(f"{m:g}: {len(r)}" for m, r in self.rungs)


class AsyncHyperBandScheduler(FIFOScheduler):
    """ASHA: stop a trial at a rung when it is in the bottom 1 - 1/reduction_factor of the
    trials recorded there before it; stop every trial at max_t (stop_last_trials)."""

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: float = 100, grace_period: float = 1,
                 reduction_factor: float = 4, brackets: int = 1, stop_last_trials: bool = True):
        super().__init__(metric, mode)
        if not max_t > 0:
            raise ValueError(f"ASHAScheduler: max_t must be > 0, got {max_t!r}")
        if not 0 < grace_period <= max_t:
            raise ValueError(f"ASHAScheduler: grace_period must be in (0, max_t], "
                             f"got {grace_period!r}")
        if not reduction_factor > 1:
            raise ValueError(f"ASHAScheduler: reduction_factor must be > 1, "
                             f"got {reduction_factor!r}")
        if not isinstance(brackets, int) or brackets < 1:
            raise ValueError(f"ASHAScheduler: brackets must be an int >= 1, got {brackets!r}")
        self._time_attr = time_attr
        self._max_t = max_t
        self._stop_last_trials = stop_last_trials
        self._brackets = [_Bracket(grace_period, max_t, reduction_factor, s)
                          for s in range(brackets)]
        self._bracket_of: dict[str, int] = {}
        self._num_stopped = 0

    def on_trial_add(self, controller: Any, trial: Trial) -> None:
        require_metric_mode(self._metric, self._mode, "ASHAScheduler")
        if len(self._brackets) == 1:
            self._bracket_of[trial.trial_id] = 0
            return
        sizes = np.array([len(b.rungs) for b in self._brackets], dtype=float)
        weights = np.exp(sizes - sizes.max())
        # Seeded by the trial id: the same trial always lands in the same bracket, so a
        # restored scheduler places new trials as one that never stopped.
        pick = random.Random(trial.trial_id).random() * weights.sum()
        bracket = int(np.searchsorted(np.cumsum(weights), pick, side="right"))
        self._bracket_of[trial.trial_id] = min(bracket, len(self._brackets) - 1)

    def on_trial_result(self, controller: Any, trial: Trial, result: dict) -> str:
        time = self._time(result, self._time_attr, trial)
        score = self._score(result, trial)
        if self._stop_last_trials and time >= self._max_t:
            action = TrialScheduler.STOP
        else:
            bracket = self._brackets[self._bracket_of.get(trial.trial_id, 0)]
            action = bracket.on_result(trial.trial_id, time, score)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, controller: Any, trial: Trial, result: dict) -> None:
        if result and self._metric in result and self._time_attr in result:
            bracket = self._brackets[self._bracket_of.get(trial.trial_id, 0)]
            bracket.on_result(trial.trial_id, result[self._time_attr], self._score(result))
        self._bracket_of.pop(trial.trial_id, None)

    def on_trial_remove(self, controller: Any, trial: Trial) -> None:
        self._bracket_of.pop(trial.trial_id, None)

    def rung_scores(self, bracket: int = 0) -> dict[float, dict[str, float]]:
        """milestone -> {trial_id: score (larger is better)} of a bracket, lowest rung first."""
        return {m: dict(r) for m, r in reversed(self._brackets[bracket].rungs)}

    def debug_string(self) -> str:
        rungs = " | ".join(f"bracket {i}: {b.describe()}" for i, b in enumerate(self._brackets))
        return f"Using AsyncHyperBand: num_stopped={self._num_stopped} ({rungs})"

    def get_state(self) -> dict:
        return {**super().get_state(), "bracket_of": dict(self._bracket_of),
                "rungs": [[(m, dict(r)) for m, r in b.rungs] for b in self._brackets],
                "num_stopped": self._num_stopped}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._bracket_of = dict(state["bracket_of"])
        for bracket, rungs in zip(self._brackets, state["rungs"]):
            bracket.rungs = [(m, dict(r)) for m, r in rungs]
        self._num_stopped = state["num_stopped"]


ASHAScheduler = AsyncHyperBandScheduler
