"""HyperBand (Li et al. 2017, arXiv:1603.06560): synchronous successive halving in brackets.

    band 0: bracket s=0 (n0 trials, run to max_t) | s=1 | ... | s=s_max (most trials, shortest
            first milestone); trials fill the current bracket, then the next, then a new band.

In bracket s: up to n0(s) = ceil(s_max_1 / (s + 1) * eta**s) trials each run to the milestone
r0(s) = max_t * eta**-s and are PAUSED there. When every live trial of the bracket has reached
it, the best ceil(n / eta) go on to the next milestone (eta times further, at most max_t) and the
rest stop; after s halvings the last ones run to max_t and stop.

A scheduler never changes a trial, so the halving's verdicts on trials other than the one
reporting are carried out by the controller: a paused winner is offered by choose_trial_to_run
to be resumed; a paused loser is handed over by trials_to_stop() for the controller to stop, or,
for a controller that does not ask, offered by choose_trial_to_run too and stopped at its first
result (STOP) -- one extra iteration.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .._checks import require_metric_mode
from ..trial import Trial, TrialStatus
from .trial_scheduler import FIFOScheduler, TrialScheduler, trial_by_id


class _Bracket:
    """One bracket's trials (id -> (time, score) of its last result) and its halving arithmetic."""

    def __init__(self, max_trials: int, milestone: float, max_t: float, eta: float, s: int,
                 stop_last_trials: bool = True):
        self.max_trials = self.n = max_trials
        self.milestone = milestone
        self.max_t = max_t
        self.eta = eta
        self.halves = s
        self.stop_last_trials = stop_last_trials
        self.live: dict[str, tuple[float, float] | None] = {}
        self.all_trials: list[str] = []
        self.progress = 0.0
        self.total_work = self._total_work(max_trials, milestone, s)

    def add(self, trial_id: str) -> None:
        self.live[trial_id] = None
        self.all_trials.append(trial_id)

    def filled(self) -> bool:
        return len(self.all_trials) >= self.max_trials

    def update(self, trial_id: str, time: float, score: float) -> None:
        previous = self.live[trial_id]
        self.progress += max(time - (previous[0] if previous else 0.0), 0.0)
        self.live[trial_id] = (time, score)

    def time_of(self, trial_id: str) -> float:
        entry = self.live.get(trial_id)
        return entry[0] if entry else 0.0

    def may_continue(self, trial_id: str) -> bool:
        if self.halves == 0 and not self.stop_last_trials:
            return True
        return self.time_of(trial_id) < self.milestone

    def milestone_reached(self) -> bool:
        return all(entry is not None and entry[0] >= self.milestone
                   for entry in self.live.values())

    def finished(self) -> bool:
        return self.stop_last_trials and self.halves == 0 and self.milestone_reached()

    def halve(self) -> tuple[list[str], list[str]]:
        """(winners, losers) among the live trials, the next milestone set."""
        self.halves -= 1
        self.n = int(math.ceil(self.n / self.eta))
        self.milestone = min(self.milestone * self.eta, self.max_t)
        ranked = sorted(self.live, key=lambda tid: self.live[tid][1], reverse=True)
        return ranked[:self.n], ranked[self.n:]

    def completion(self) -> float:
        if self.finished():
            return 1.0
        return min(self.progress / self.total_work, 1.0) if self.total_work else 1.0

    def _total_work(self, n: float, r: float, s: int) -> float:
        work = 0.0
        for _ in range(s + 1):
            work += n * r
            n = math.ceil(n / self.eta)
            r = min(r * self.eta, self.max_t)
        return work

    def describe(self) -> str:
        return (f"Bracket(n={self.n}, milestone={self.milestone:g}, "
                f"completed={self.completion():.0%}, live={len(self.live)})")


class HyperBandScheduler(FIFOScheduler):
    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: float = 81, reduction_factor: float = 3,
                 stop_last_trials: bool = True):
        super().__init__(metric, mode)
        if not max_t > 0:
            raise ValueError(f"HyperBandScheduler: max_t must be > 0, got {max_t!r}")
        if not reduction_factor > 1:
            raise ValueError(f"HyperBandScheduler: reduction_factor must be > 1, "
                             f"got {reduction_factor!r}")
        self._time_attr = time_attr
        self._max_t = max_t
        self._eta = reduction_factor
        self._stop_last_trials = stop_last_trials
        self._s_max_1 = int(round(math.log(max_t) / math.log(reduction_factor))) + 1
        self._bands: list[list[_Bracket]] = [[]]
        self._where: dict[str, tuple[int, int]] = {}    # trial_id -> (band, bracket)
        self._to_stop: set[str] = set()                  # paused losers, stopped on resuming
        self._num_stopped = 0

    def bracket_size(self, s: int) -> int:
        return int(math.ceil(self._s_max_1 / (s + 1) * self._eta ** s))

    def first_milestone(self, s: int) -> float:
        return int(self._max_t * self._eta ** (-s))

    def on_trial_add(self, controller: Any, trial: Trial) -> None:
        require_metric_mode(self._metric, self._mode, "HyperBandScheduler")
        band = self._bands[-1]
        if not band or band[-1].filled():
            while True:
                if len(band) == self._s_max_1:
                    band = []
                    self._bands.append(band)
                s = len(band)
                milestone = self.first_milestone(s)
                band.append(_Bracket(self.bracket_size(s), milestone, self._max_t, self._eta,
                                     s, self._stop_last_trials) if milestone > 0 else None)
                if milestone > 0:
                    break
        band[-1].add(trial.trial_id)
        self._where[trial.trial_id] = (len(self._bands) - 1, len(band) - 1)

    def _bracket(self, trial_id: str) -> _Bracket | None:
        where = self._where.get(trial_id)
        return self._bands[where[0]][where[1]] if where else None

    def on_trial_result(self, controller: Any, trial: Trial, result: dict) -> str:
        if trial.trial_id in self._to_stop:
            self._to_stop.discard(trial.trial_id)
            return TrialScheduler.STOP
        if trial.trial_id not in self._where:       # e.g. added before a restore of older state
            self.on_trial_add(controller, trial)
        bracket = self._bracket(trial.trial_id)
        time = self._time(result, self._time_attr, trial)
        bracket.update(trial.trial_id, time, self._score(result, trial))
        if self._stop_last_trials and time >= self._max_t:
            return TrialScheduler.STOP        # nothing is left for it to do: no pause first
        if bracket.may_continue(trial.trial_id):
            return TrialScheduler.CONTINUE
        return self._process(bracket, reporting=trial.trial_id)

    def _process(self, bracket: _Bracket, reporting: str | None) -> str:
        """Halve the bracket once every live trial reached its milestone; the decision for the
        reporting trial (PAUSE while the others catch up)."""
        if not bracket.milestone_reached():
            return TrialScheduler.PAUSE
        if bracket.finished():
            self._to_stop.update(tid for tid in bracket.live if tid != reporting)
            return TrialScheduler.STOP
        winners, losers = bracket.halve()
        self._num_stopped += len(losers)
        for tid in losers:
            bracket.live.pop(tid)
            if tid != reporting:
                self._to_stop.add(tid)
        if reporting in losers:
            return TrialScheduler.STOP
        if reporting in winners and bracket.may_continue(reporting):
            return TrialScheduler.CONTINUE
        return TrialScheduler.PAUSE

    def _leave(self, trial: Trial) -> None:
        self._to_stop.discard(trial.trial_id)
        bracket = self._bracket(trial.trial_id)
        if bracket is None or trial.trial_id not in bracket.live:
            return
        bracket.live.pop(trial.trial_id)
        if bracket.live and not bracket.finished():
            self._process(bracket, reporting=None)

    def on_trial_complete(self, controller: Any, trial: Trial, result: dict) -> None:
        self._leave(trial)

    def on_trial_error(self, controller: Any, trial: Trial) -> None:
        self._leave(trial)

    def on_trial_remove(self, controller: Any, trial: Trial) -> None:
        self._leave(trial)

    def choose_trial_to_run(self, controller: Any) -> Trial | None:
        """A paused loser first (to stop it), then, bracket by bracket from the least complete,
        a pending trial or a paused one that may go on to the next milestone."""
        for tid in sorted(self._to_stop):
            trial = trial_by_id(controller, tid)
            if trial is not None and trial.status == TrialStatus.PAUSED:
                return trial
        for band in self._bands:
            for bracket in sorted((b for b in band if b is not None), key=_Bracket.completion):
                for tid in bracket.live:
                    trial = trial_by_id(controller, tid)
                    if trial is None:
                        continue
                    if trial.status == TrialStatus.PENDING or (
                            trial.status == TrialStatus.PAUSED and bracket.may_continue(tid)):
                        return trial
        return None

    def trials_to_stop(self, controller: Any) -> list[Trial]:
        """The paused losers of a halving, for a controller that stops them directly (saving
        the resume and the iteration that choose_trial_to_run's way costs)."""
        paused = [t for t in controller.get_trials()
                  if t.trial_id in self._to_stop and t.status == TrialStatus.PAUSED]
        self._to_stop.difference_update(t.trial_id for t in paused)
        return paused

    def brackets(self) -> list[list[_Bracket]]:
        """The bands and their brackets (read-only view, for tests and the status table)."""
        return self._bands

    def debug_string(self) -> str:
        lines = [f"Using HyperBand: num_stopped={self._num_stopped} "
                 f"total_brackets={sum(len(b) for b in self._bands)}"]
        for index, band in enumerate(self._bands):
            lines.append(f"Round #{index}:")
            lines.extend(f"  {b.describe()}" for b in band if b is not None)
        return "\n".join(lines)

    def get_state(self) -> dict:
        return {**super().get_state(),
                "bands": [[None if b is None else copy.deepcopy(vars(b)) for b in band]
                          for band in self._bands],
                "where": dict(self._where), "to_stop": sorted(self._to_stop),
                "num_stopped": self._num_stopped}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._bands = []
        for band in state["bands"]:
            restored = []
            for fields in band:
                if fields is None:
                    restored.append(None)
                    continue
                bracket = _Bracket.__new__(_Bracket)
                vars(bracket).update(copy.deepcopy(fields))
                restored.append(bracket)
            self._bands.append(restored)
        self._where = dict(state["where"])
        self._to_stop = set(state["to_stop"])
        self._num_stopped = state["num_stopped"]
