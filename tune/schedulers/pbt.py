"""Population Based Training (Jaderberg et al. 2017, arXiv:1711.09846), asynchronous form.

Every `perturbation_interval` units of time_attr a trial is ranked among the live trials that
have a score. One in the bottom `quantile_fraction` gets, instead of CONTINUE:

    Exploit(source=<a trial of the top quantile>, config=explore(source.config))

which the controller carries out: restore this trial from source's latest checkpoint, give it
the new config, go on (exploit = copy a better trial's weights; explore = change its
hyperparameters). explore() changes each key of hyperparam_mutations: with probability
resample_probability it is drawn anew from its domain; otherwise a number is multiplied by one
of perturbation_factors (1.2 or 0.8) and a value from a list moves to a neighbour in the list.
Each exploit is logged (logging and `decisions`), so the schedule a trial followed can be
rebuilt afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
from typing import Any, Callable

import numpy as np

from .._checks import require_metric_mode
from ..search.sample import Categorical, Domain, Float, Function, Integer
from ..trial import Trial, TrialStatus
from .trial_scheduler import FIFOScheduler, TrialScheduler

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Exploit:
    """PBT's decision: restore the trial from `source`'s latest checkpoint with `config`."""

    source: Trial
    config: dict


def explore(config: dict, mutations: dict, resample_probability: float,
            perturbation_factors: tuple, rng: random.Random,
            custom_explore_fn: Callable | None = None) -> dict:
    """A copy of `config` with each key of `mutations` resampled or perturbed."""
    new = copy.deepcopy(config)
    for key, space in mutations.items():
        if isinstance(space, dict):
            new[key] = explore(config[key], space, resample_probability, perturbation_factors,
                               rng)
            continue
        old = config[key]
        if isinstance(space, Categorical):
            space = space.categories
        if isinstance(space, (list, tuple)):
            values = list(space)
            if old not in values or rng.random() < resample_probability:
                new[key] = rng.choice(values)
            else:
                index = values.index(old) + rng.choice((-1, 1))
                new[key] = values[min(max(index, 0), len(values) - 1)]
        elif rng.random() < resample_probability:
            new[key] = _draw(space, rng)
        else:
            value = old * rng.choice(perturbation_factors)
            if isinstance(old, int) and not isinstance(old, bool):
                value = int(value)
            if isinstance(space, (Float, Integer)):     # stay inside the domain's bounds
                upper = space.upper - 1 if isinstance(space, Integer) and space.q is None \
                    else space.upper
                value = type(value)(min(max(value, space.lower), upper))
            new[key] = value
    if custom_explore_fn is not None:
        new = custom_explore_fn(new)
        if not isinstance(new, dict):
            raise TypeError("PBT custom_explore_fn must return the new config dict, got "
                            f"{type(new).__name__}")
    return new


def _draw(space: Any, rng: random.Random) -> Any:
    if isinstance(space, Domain):
        return space.sample(None, random_state=np.random.default_rng(rng.getrandbits(64)))
    return space()


class PopulationBasedTraining(FIFOScheduler):
    def __init__(self, time_attr: str = "time_total_s", metric: str | None = None,
                 mode: str | None = None, perturbation_interval: float = 60.0,
                 burn_in_period: float = 0.0, hyperparam_mutations: dict | None = None,
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: tuple = (1.2, 0.8),
                 custom_explore_fn: Callable | None = None, log_config: bool = True,
                 require_attrs: bool = True, seed: int | None = None):
        super().__init__(metric, mode)
        mutations = hyperparam_mutations or {}
        _check_mutations(mutations)
        if not mutations and custom_explore_fn is None:
            raise ValueError("PopulationBasedTraining needs hyperparam_mutations or "
                             "custom_explore_fn: what to change when a trial exploits another")
        if not 0 <= quantile_fraction <= 0.5:
            raise ValueError(f"PopulationBasedTraining: quantile_fraction must be in [0, 0.5], "
                             f"got {quantile_fraction!r}")
        if not 0 <= resample_probability <= 1:
            raise ValueError("PopulationBasedTraining: resample_probability must be in [0, 1], "
                             f"got {resample_probability!r}")
        if not perturbation_interval > 0:
            raise ValueError("PopulationBasedTraining: perturbation_interval must be > 0, "
                             f"got {perturbation_interval!r}")
        if not perturbation_factors:
            raise ValueError("PopulationBasedTraining: perturbation_factors must not be empty")
        self._time_attr = time_attr
        self._interval = perturbation_interval
        self._burn_in = burn_in_period
        self._mutations = mutations
        self._quantile_fraction = quantile_fraction
        self._resample_probability = resample_probability
        self._factors = tuple(perturbation_factors)
        self._custom_explore_fn = custom_explore_fn
        self._log_config = log_config
        self._require_attrs = require_attrs
        self._rng = random.Random(seed)
        # trial_id -> {"score", "last_perturbation_time", "last_train_time"}
        self._state: dict[str, dict] = {}
        self.decisions: list[dict] = []
        self._num_perturbations = 0

    def on_trial_add(self, controller: Any, trial: Trial) -> None:
        require_metric_mode(self._metric, self._mode, "PopulationBasedTraining")
        _check_config_has(trial, trial.config, self._mutations, ())
        self._state[trial.trial_id] = {"score": None, "last_perturbation_time": 0.0,
                                       "last_train_time": 0.0}

    def on_trial_result(self, controller: Any, trial: Trial, result: dict) -> Any:
        if not self._require_attrs and (self._time_attr not in result
                                        or self._metric not in result):
            return TrialScheduler.CONTINUE
        time = self._time(result, self._time_attr, trial)
        score = self._score(result, trial)
        state = self._state.setdefault(trial.trial_id, {"score": None, "last_train_time": 0.0,
                                                        "last_perturbation_time": 0.0})
        state["last_train_time"] = time
        if time - state["last_perturbation_time"] < self._interval or time < self._burn_in:
            return TrialScheduler.CONTINUE
        state["score"] = score
        state["last_perturbation_time"] = time
        lower, upper = self.quantiles(controller)
        if trial in lower and upper:
            decision = self._exploit(trial, self._rng.choice(upper), time)
            if decision is not None:
                return decision
        waiting = any(t.status in (TrialStatus.PENDING, TrialStatus.PAUSED)
                      for t in controller.get_trials())
        return TrialScheduler.PAUSE if waiting else TrialScheduler.CONTINUE

    def quantiles(self, controller: Any) -> tuple[list[Trial], list[Trial]]:
        """(bottom, top) quantile_fraction of the live trials with a score, worst first."""
        scored = [t for t in controller.get_trials()
                  if not t.is_finished and self._state.get(t.trial_id, {}).get("score")
                  is not None]
        if len(scored) <= 1:
            return [], []
        scored.sort(key=lambda t: self._state[t.trial_id]["score"])
        count = min(int(math.ceil(len(scored) * self._quantile_fraction)), len(scored) // 2)
        if count == 0:
            return [], []
        return scored[:count], scored[-count:]

    def _exploit(self, trial: Trial, source: Trial, time: float) -> Exploit | None:
        if source.checkpoint is None:
            logger.info("[pbt] %s would exploit %s, which has no checkpoint yet: skipped",
                        trial.trial_id, source.trial_id)
            return None
        new_config = explore(source.config, self._mutations, self._resample_probability,
                             self._factors, self._rng, self._custom_explore_fn)
        target, origin = self._state[trial.trial_id], self._state[source.trial_id]
        decision = {"time": time, "trial_id": trial.trial_id, "source_id": source.trial_id,
                    "trial_score": _unsign(target["score"], self._mode),
                    "source_score": _unsign(origin["score"], self._mode),
                    "old_config": copy.deepcopy(trial.config) if self._log_config else None,
                    "new_config": copy.deepcopy(new_config) if self._log_config else None}
        self.decisions.append(decision)
        self._num_perturbations += 1
        target["score"] = origin["score"]      # it now is a copy of the source
        # Its clock may restart from the source's checkpoint: count the next interval from
        # there, or a trial whose time went back would wait out the difference.
        target["last_perturbation_time"] = min(time, origin["last_train_time"])
        logger.info("[pbt] exploit: %s (score %s) copies %s (score %s); explore: %s -> %s",
                    trial.trial_id, decision["trial_score"], source.trial_id,
                    decision["source_score"], _mutated(trial.config, self._mutations),
                    _mutated(new_config, self._mutations))
        return Exploit(source=source, config=new_config)

    def on_trial_complete(self, controller: Any, trial: Trial, result: dict) -> None:
        self._state.pop(trial.trial_id, None)

    def on_trial_remove(self, controller: Any, trial: Trial) -> None:
        self._state.pop(trial.trial_id, None)

    def on_trial_error(self, controller: Any, trial: Trial) -> None:
        self._state.pop(trial.trial_id, None)

    def choose_trial_to_run(self, controller: Any) -> Trial | None:
        """The waiting trial that has trained least, so the population stays level."""
        waiting = [t for t in controller.get_trials()
                   if t.status in (TrialStatus.PENDING, TrialStatus.PAUSED)]
        if not waiting:
            return None
        return min(waiting, key=lambda t: self._state.get(t.trial_id, {})
                   .get("last_train_time", 0.0))

    def debug_string(self) -> str:
        return f"PopulationBasedTraining: {self._num_perturbations} perturbs"

    def get_state(self) -> dict:
        return {**super().get_state(), "trials": copy.deepcopy(self._state),
                "rng": self._rng.getstate(), "decisions": copy.deepcopy(self.decisions),
                "num_perturbations": self._num_perturbations}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._state = copy.deepcopy(state["trials"])
        self._rng.setstate(state["rng"])
        self.decisions = copy.deepcopy(state["decisions"])
        self._num_perturbations = state["num_perturbations"]


def _check_mutations(mutations: dict, prefix: str = "") -> None:
    if not isinstance(mutations, dict):
        raise TypeError("hyperparam_mutations must be a dict, got "
                        f"{type(mutations).__name__}")
    for key, space in mutations.items():
        if isinstance(space, Function):
            raise ValueError(f"hyperparam_mutations[{prefix}{key!r}]: sample_from is not "
                             "supported; use a list, a callable or a domain (tune.uniform, ...)")
        if isinstance(space, dict):
            _check_mutations(space, f"{prefix}{key!r}/")
        elif not (isinstance(space, (list, tuple, Domain)) or callable(space)):
            raise TypeError(f"hyperparam_mutations[{prefix}{key!r}] must be a list, a dict, a "
                            f"domain or a callable, got {type(space).__name__}")
        elif isinstance(space, (list, tuple)) and not space:
            raise ValueError(f"hyperparam_mutations[{prefix}{key!r}] is an empty list")


def _check_config_has(trial: Trial, config: dict, mutations: dict, path: tuple) -> None:
    for key, space in mutations.items():
        if not isinstance(config, dict) or key not in config:
            name = "/".join(map(str, path + (key,)))
            raise ValueError(f"PopulationBasedTraining: trial {trial.trial_id}'s config has no "
                             f"{name!r}, a key of hyperparam_mutations; put it in param_space")
        if isinstance(space, dict):
            _check_config_has(trial, config[key], space, path + (key,))


def _unsign(score: float | None, mode: str) -> float | None:
    return None if score is None else (score if mode == "max" else -score)


def _mutated(config: dict, mutations: dict) -> dict:
    """The values of the mutated keys, for the log line."""
    return {key: config.get(key) for key in mutations}
