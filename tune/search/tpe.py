"""TPESearch: a small Tree-structured Parzen Estimator (Bergstra et al. 2011, NeurIPS).

    completed trials --split by score--> good (best gamma fraction) | bad (the rest)
    per parameter:   l(x) = Parzen density of the good values, g(x) = of the bad ones
    suggest:         draw n_ei_candidates from l, keep the one with the largest l(x) / g(x)

The first n_startup_trials configs are drawn at random from the domains. Each parameter is
modelled on its own (univariate TPE, as hyperopt and Optuna's default). Numbers are modelled in
the domain's own scale (log for loguniform/lograndint) as a mixture of Gaussians truncated to
the bounds: one per observation, its width the larger gap to a neighbour, plus a wide prior
component; choices as smoothed frequencies. The space is the param_space (nested dicts of
domains and constants; grid_search and sample_from need BasicVariantGenerator).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from .._checks import require_metric_mode, signed
from .sample import Categorical, Domain, Float, Function, Integer
from .searcher import Searcher
from .variant_generator import assign_value, check_space, parse_space

_ERF = np.vectorize(math.erf)


class TPESearch(Searcher):
    def __init__(self, space: dict | None = None, metric: str | None = None,
                 mode: str | None = None, points_to_evaluate: list[dict] | None = None,
                 n_startup_trials: int = 10, n_ei_candidates: int = 24, gamma: float = 0.25,
                 prior_weight: float = 1.0, random_state: int | None = None):
        super().__init__(metric, mode)
        if not isinstance(n_startup_trials, int) or n_startup_trials < 1:
            raise ValueError(f"TPESearch: n_startup_trials must be an int >= 1, "
                             f"got {n_startup_trials!r}")
        if not 0 < gamma < 1:
            raise ValueError(f"TPESearch: gamma must be in (0, 1), got {gamma!r}")
        self._n_startup = n_startup_trials
        self._n_candidates = n_ei_candidates
        self._gamma = gamma
        self._prior_weight = prior_weight
        self._rng = np.random.default_rng(random_state)
        self._points = [copy.deepcopy(p) for p in points_to_evaluate or []]
        self._space: dict | None = None
        self._domains: list[tuple[tuple, Domain]] = []
        self._observed: list[tuple[dict, float]] = []     # (params by path, signed score)
        self._pending: dict[str, dict] = {}
        if space is not None:
            self._set_space(space)

    def _set_space(self, space: dict) -> None:
        domains, grids = parse_space(check_space(space, "TPESearch space"))
        if grids:
            raise ValueError("TPESearch cannot expand grid_search (at "
                             f"{'/'.join(map(str, grids[0][0]))}); use tune.choice, or "
                             "BasicVariantGenerator for a grid")
        for path, domain in domains:
            if isinstance(domain, Function):
                raise ValueError(f"TPESearch cannot model sample_from (at "
                                 f"{'/'.join(map(str, path))}); use a domain such as "
                                 "tune.uniform or tune.choice")
        self._space = space
        self._domains = domains

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        if self._space is not None and config and parse_space(check_space(config))[0]:
            return False        # it has its own space and the experiment brings another
        super().set_search_properties(metric, mode, config)
        if self._space is None:
            self._set_space(config)
        return True

    def suggest(self, trial_id: str) -> dict | None | str:
        if self._space is None:
            raise RuntimeError("TPESearch.suggest without a space: pass space= or a "
                               "param_space to the Tuner")
        require_metric_mode(self._metric, self._mode, "TPESearch")
        if self._points:
            params = self._params_of_point(self._points.pop(0))
        elif len(self._observed) < self._n_startup:
            params = {path: domain.sample(None, random_state=self._rng)
                      for path, domain in self._domains}
        else:
            params = self._model_params()
        self._pending[trial_id] = params
        config = copy.deepcopy(self._space)
        for path, value in params.items():
            assign_value(config, path, value)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        params = self._pending.pop(trial_id, None)
        if params is None or error or not result or self._metric not in result:
            return
        score = signed(result[self._metric], self._mode)
        if math.isfinite(score):
            self._observed.append((params, score))

    def _params_of_point(self, point: dict) -> dict:
        params = {}
        for path, domain in self._domains:
            node = point
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    node = None
                    break
                node = node[key]
            params[path] = node if node is not None else domain.sample(None,
                                                                       random_state=self._rng)
        return params

    def _model_params(self) -> dict:
        ranked = sorted(self._observed, key=lambda item: item[1], reverse=True)
        n_good = min(max(1, int(math.ceil(self._gamma * len(ranked)))), 25)
        good, bad = ranked[:n_good], ranked[n_good:]
        params = {}
        for path, domain in self._domains:
            good_values = [p[path] for p, _ in good]
            bad_values = [p[path] for p, _ in bad]
            if isinstance(domain, Categorical):
                params[path] = self._suggest_categorical(domain, good_values, bad_values)
            else:
                params[path] = self._suggest_numeric(domain, good_values, bad_values)
        return params

    def _suggest_categorical(self, domain: Categorical, good: list, bad: list) -> Any:
        def weights(values: list) -> np.ndarray:
            counts = np.full(len(domain.categories), self._prior_weight)
            for value in values:
                if value in domain.categories:
                    counts[domain.categories.index(value)] += 1
            return counts / counts.sum()

        p_good, p_bad = weights(good), weights(bad)
        candidates = self._rng.choice(len(domain.categories), size=self._n_candidates,
                                      p=p_good)
        best = max(set(candidates.tolist()), key=lambda i: p_good[i] / p_bad[i])
        return domain.categories[best]

    def _suggest_numeric(self, domain: Float | Integer, good: list, bad: list) -> Any:
        log = domain.sampler == "loguniform"
        low, high = _bounds(domain)
        to_model = (lambda v: math.log(v)) if log else float
        good_estimator = _Parzen([to_model(v) for v in good], low, high, self._prior_weight)
        bad_estimator = _Parzen([to_model(v) for v in bad], low, high, self._prior_weight)
        samples = good_estimator.sample(self._rng, self._n_candidates)
        values = [_to_domain(domain, math.exp(x) if log else x) for x in samples]
        # Score each candidate where it really lands (after rounding to the domain's steps).
        landed = np.array([to_model(v) for v in values])
        ratio = good_estimator.log_pdf(landed) - bad_estimator.log_pdf(landed)
        return values[int(np.argmax(ratio))]

    def get_state(self) -> dict:
        return {**super().get_state(), "rng": self._rng.bit_generator.state,
                "observed": copy.deepcopy(self._observed), "pending": copy.deepcopy(self._pending),
                "points": copy.deepcopy(self._points)}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._rng.bit_generator.state = state["rng"]
        self._observed = copy.deepcopy(state["observed"])
        self._pending = copy.deepcopy(state["pending"])
        self._points = copy.deepcopy(state["points"])


class _Parzen:
    """A mixture of Gaussians truncated to [low, high]: one per value plus a wide prior."""

    def __init__(self, values: list[float], low: float, high: float, prior_weight: float):
        span = high - low
        mus = np.array(values + [(low + high) / 2])
        order = np.argsort(mus)
        ordered = mus[order]
        padded = np.concatenate([[low], ordered, [high]])
        gaps = np.maximum(padded[1:-1] - padded[:-2], padded[2:] - padded[1:-1])
        sigmas = np.empty_like(mus)
        sigmas[order] = np.clip(gaps, span / min(100.0, len(mus) + 1.0), span)
        sigmas[-1] = span                                   # the prior is wide
        weights = np.ones(len(mus))
        weights[-1] = prior_weight
        self.mus, self.sigmas, self.weights = mus, sigmas, weights / weights.sum()
        self.low, self.high = low, high
        # The mass of each component inside the bounds, to renormalise the truncation.
        self.mass = np.maximum(_cdf(high, mus, sigmas) - _cdf(low, mus, sigmas), 1e-12)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        components = rng.choice(len(self.mus), size=size, p=self.weights)
        out = np.empty(size)
        for i, c in enumerate(components):
            for _ in range(100):                            # rejection into the bounds
                x = rng.normal(self.mus[c], self.sigmas[c])
                if self.low <= x <= self.high:
                    break
            out[i] = min(max(x, self.low), self.high)
        return out

    def log_pdf(self, xs: np.ndarray) -> np.ndarray:
        z = (xs[:, None] - self.mus[None, :]) / self.sigmas[None, :]
        densities = np.exp(-0.5 * z ** 2) / (self.sigmas * math.sqrt(2 * math.pi) * self.mass)
        return np.log(np.maximum(densities @ self.weights, 1e-300))


def _cdf(x: float, mus: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + _ERF((x - mus) / (sigmas * math.sqrt(2))))


def _bounds(domain: Float | Integer) -> tuple[float, float]:
    """The modelled interval: log bounds on a log scale; mean +- 4 sd for randn."""
    if isinstance(domain, Float) and domain.sampler == "normal":
        return domain.mean - 4 * domain.sd, domain.mean + 4 * domain.sd
    high = domain.upper if isinstance(domain, Float) or domain.q is not None \
        else domain.upper - 1
    if domain.sampler == "loguniform":
        return math.log(domain.lower), math.log(high)
    return float(domain.lower), float(high)


def _to_domain(domain: Float | Integer, value: float) -> Any:
    """A modelled value as the domain would draw it: rounded to q, an int, within bounds."""
    if isinstance(domain, Integer):
        step = domain.q or 1
        value = int(round(value / step) * step)
        high = domain.upper if domain.q is not None else domain.upper - 1
        return int(min(max(value, domain.lower), high))
    if domain.q is not None:
        value = round(value / domain.q) * domain.q
    return float(min(max(value, domain.lower), domain.upper))
