"""Search-space domains: what a value of a hyperparameter may be and how to draw one.

A param_space is a (nested) dict whose leaves are constants, Domains (`tune.uniform(0, 1)`, ...)
or `tune.grid_search([...])` markers. variant_generator.py walks it: grid markers are expanded
into every combination, each Domain is drawn with `Domain.sample(spec, random_state=...)`, and
`sample_from` functions are called with the config resolved so far.

Bounds follow Ray Tune: `uniform`/`loguniform` draw in [lower, upper); `randint`/`lograndint`
exclude `upper`; quantised domains (`quniform`, `qloguniform`, `qrandint`, `qlograndint`)
include `upper`. A `random_state` (an int seed, a numpy Generator or RandomState, or None for
numpy's global generator) makes draws reproducible.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import numpy as np


def as_generator(random_state: Any) -> Any:
    """A numpy Generator/RandomState (or the np.random module) from what a caller passed."""
    if random_state is None or random_state is np.random:
        return np.random
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        return random_state
    if isinstance(random_state, (int, np.integer)):
        return np.random.default_rng(int(random_state))
    raise TypeError("random_state must be None, an int seed, or a numpy Generator/RandomState, "
                    f"got {type(random_state).__name__}")


def _integers(rng: Any, low: int, high: int) -> int:
    """One int in [low, high) from either kind of numpy generator."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high))
    return int(rng.randint(low, high))


def _check_number(value: Any, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    return value


class Domain:
    """A set of values a hyperparameter may take, with the way to draw one."""

    def sample(self, config: Any = None, size: int = 1, random_state: Any = None) -> Any:
        """One value (a list of `size` values when size > 1); `config` is what a sample_from
        function receives (the spec of the config being resolved)."""
        rng = as_generator(random_state)
        values = [self._draw(rng, config) for _ in range(size)]
        return values if size > 1 else values[0]

    def _draw(self, rng: Any, spec: Any) -> Any:
        raise NotImplementedError

    def __deepcopy__(self, memo: dict) -> "Domain":
        return self       # never changed once built: configs copied from a space share it

    def is_grid(self) -> bool:
        return False

    def is_function(self) -> bool:
        return False

    def is_valid(self, value: Any) -> bool:
        raise NotImplementedError


class Float(Domain):
    """A float in [lower, upper]: `sampler` is "uniform", "loguniform" or "normal"; `q` rounds
    each draw to a multiple of q."""

    def __init__(self, lower: float | None, upper: float | None, sampler: str = "uniform",
                 q: float | None = None, mean: float = 0.0, sd: float = 1.0):
        self.lower = -math.inf if lower is None else float(lower)
        self.upper = math.inf if upper is None else float(upper)
        self.sampler = sampler
        self.q = q
        self.mean = mean
        self.sd = sd

    def _draw(self, rng: Any, spec: Any) -> float:
        if self.sampler == "normal":
            value = float(rng.normal(self.mean, self.sd))
        elif self.sampler == "loguniform":
            value = float(np.exp(rng.uniform(math.log(self.lower), math.log(self.upper))))
        else:
            value = float(rng.uniform(self.lower, self.upper))
        if self.q is not None:
            value = round(value / self.q) * self.q
        # exp(log(x)) and k*q may land a hair outside the bounds in floating point.
        return min(max(value, self.lower), self.upper)

    def is_valid(self, value: Any) -> bool:
        return self.lower <= value <= self.upper

    def __repr__(self) -> str:
        if self.sampler == "normal":
            return f"randn({self.mean}, {self.sd})" + (f" q={self.q}" if self.q else "")
        q = f", q={self.q}" if self.q is not None else ""
        return f"{self.sampler}({self.lower}, {self.upper}{q})"


class Integer(Domain):
    """An int in [lower, upper) ("uniform" or "loguniform"); with `q`, a multiple of q in
    [lower, upper], upper included."""

    def __init__(self, lower: int, upper: int, sampler: str = "uniform", q: int | None = None):
        self.lower = int(lower)
        self.upper = int(upper)
        self.sampler = sampler
        self.q = q

    def _draw(self, rng: Any, spec: Any) -> int:
        if self.q is not None:
            if self.sampler == "loguniform":
                raw = math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))
                value = round(raw / self.q) * self.q
                return int(min(max(value, self._first_multiple()), self._last_multiple()))
            # Uniform over the multiples of q in [lower, upper]: each equally likely.
            count = (self._last_multiple() - self._first_multiple()) // self.q + 1
            return self._first_multiple() + self.q * _integers(rng, 0, count)
        if self.sampler == "loguniform":
            raw = math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))
            return min(int(math.floor(raw)), self.upper - 1)
        return _integers(rng, self.lower, self.upper)

    def _first_multiple(self) -> int:
        return -(-self.lower // self.q) * self.q

    def _last_multiple(self) -> int:
        return (self.upper // self.q) * self.q

    def is_valid(self, value: Any) -> bool:
        if self.q is not None:
            return self.lower <= value <= self.upper and value % self.q == 0
        return self.lower <= value < self.upper

    def __repr__(self) -> str:
        q = f", q={self.q}" if self.q is not None else ""
        return f"{'lograndint' if self.sampler == 'loguniform' else 'randint'}" \
               f"({self.lower}, {self.upper}{q})"


class Categorical(Domain):
    """One of `categories`, each equally likely (values keep their own types)."""

    def __init__(self, categories: Sequence):
        self.categories = list(categories)

    def _draw(self, rng: Any, spec: Any) -> Any:
        return self.categories[_integers(rng, 0, len(self.categories))]

    def is_valid(self, value: Any) -> bool:
        return value in self.categories

    def __len__(self) -> int:
        return len(self.categories)

    def __repr__(self) -> str:
        return f"choice({self.categories!r})"


class Function(Domain):
    """A value computed by a user function, given the config resolved so far (or nothing)."""

    def __init__(self, func: Callable):
        if not callable(func):
            raise TypeError(f"sample_from needs a callable, got {func!r}")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):  # a builtin without a signature: try it with no argument
            self.pass_config = False
        else:
            try:
                signature.bind(None)
                self.pass_config = True
            except TypeError:
                try:
                    signature.bind()
                except TypeError:
                    raise ValueError(
                        "sample_from: the function must take no argument or one (the spec, whose "
                        f"`.config` holds the values resolved so far): {func!r}") from None
                self.pass_config = False
        self.func = func

    def _draw(self, rng: Any, spec: Any) -> Any:
        return self.func(spec) if self.pass_config else self.func()

    def is_function(self) -> bool:
        return True

    def is_valid(self, value: Any) -> bool:
        return True

    def __repr__(self) -> str:
        return f"sample_from({getattr(self.func, '__name__', self.func)})"


# --- the public constructors (API.md's list) ---------------------------------------------------

def uniform(lower: float, upper: float) -> Float:
    """A float drawn uniformly in [lower, upper)."""
    _check_bounds(lower, upper, "uniform")
    return Float(lower, upper, "uniform")


def quniform(lower: float, upper: float, q: float) -> Float:
    """A float drawn uniformly in [lower, upper], rounded to a multiple of q."""
    _check_bounds(lower, upper, "quniform")
    _check_quantum(lower, upper, q, "quniform")
    return Float(lower, upper, "uniform", q=q)


def loguniform(lower: float, upper: float) -> Float:
    """A float whose logarithm is uniform in [log lower, log upper): for orders of magnitude."""
    _check_bounds(lower, upper, "loguniform", positive=True)
    return Float(lower, upper, "loguniform")


def qloguniform(lower: float, upper: float, q: float) -> Float:
    """loguniform, rounded to a multiple of q (upper included)."""
    _check_bounds(lower, upper, "qloguniform", positive=True)
    _check_quantum(lower, upper, q, "qloguniform")
    return Float(lower, upper, "loguniform", q=q)


def randn(mean: float = 0.0, sd: float = 1.0) -> Float:
    """A float drawn from the normal distribution N(mean, sd**2)."""
    _check_number(mean, "mean", "randn")
    if _check_number(sd, "sd", "randn") <= 0:
        raise ValueError(f"randn: sd must be > 0, got {sd!r}")
    return Float(None, None, "normal", mean=float(mean), sd=float(sd))


def qrandn(mean: float, sd: float, q: float) -> Float:
    """randn rounded to a multiple of q."""
    domain = randn(mean, sd)
    if _check_number(q, "q", "qrandn") <= 0:
        raise ValueError(f"qrandn: q must be > 0, got {q!r}")
    domain.q = q
    return domain


def randint(lower: int, upper: int) -> Integer:
    """An int drawn uniformly from lower, ..., upper - 1 (upper excluded, as numpy's randint)."""
    _check_int_bounds(lower, upper, "randint")
    return Integer(lower, upper, "uniform")


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    """A multiple of q drawn uniformly from [lower, upper], upper included."""
    _check_int_bounds(lower, upper, "qrandint", inclusive=True)
    _check_int_quantum(lower, upper, q, "qrandint")
    return Integer(lower, upper, "uniform", q=q)


def lograndint(lower: int, upper: int) -> Integer:
    """An int in [lower, upper) whose logarithm is uniform (upper excluded)."""
    _check_int_bounds(lower, upper, "lograndint", positive=True)
    return Integer(lower, upper, "loguniform")


def qlograndint(lower: int, upper: int, q: int) -> Integer:
    """lograndint rounded to a multiple of q in [lower, upper], upper included."""
    _check_int_bounds(lower, upper, "qlograndint", positive=True, inclusive=True)
    _check_int_quantum(lower, upper, q, "qlograndint")
    return Integer(lower, upper, "loguniform", q=q)


def choice(categories: Sequence) -> Categorical:
    """One of `categories`, each equally likely."""
    if isinstance(categories, (str, bytes)) or not isinstance(categories, Sequence):
        raise TypeError(f"choice needs a list of categories, got {categories!r}")
    if len(categories) == 0:
        raise ValueError("choice needs at least one category")
    return Categorical(categories)


def sample_from(func: Callable) -> Function:
    """A value computed by `func(spec)` (spec.config holds the other values of the trial's config,
    spec["key"] also reads them) or `func()`; for values that depend on others."""
    return Function(func)


def grid_search(values: Sequence) -> dict:
    """Every one of `values`, each in its own trial(s): crossed with every other grid, and the
    whole grid repeated num_samples times."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"grid_search needs a list of values, got {values!r}")
    values = list(values)
    if not values:
        raise ValueError("grid_search needs at least one value")
    return {"grid_search": values}


def _check_bounds(lower: Any, upper: Any, owner: str, positive: bool = False) -> None:
    _check_number(lower, "lower", owner)
    _check_number(upper, "upper", owner)
    if positive and lower <= 0:
        raise ValueError(f"{owner}: lower must be > 0 for a log scale, got {lower!r} (pass the "
                         "value itself, not its logarithm)")
    if lower >= upper:
        raise ValueError(f"{owner}: lower must be below upper, got lower={lower!r}, "
                         f"upper={upper!r}")


def _check_quantum(lower: float, upper: float, q: Any, owner: str) -> None:
    if _check_number(q, "q", owner) <= 0:
        raise ValueError(f"{owner}: q must be > 0, got {q!r}")
    for name, bound in (("lower", lower), ("upper", upper)):
        if not math.isclose(bound / q, round(bound / q), rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"{owner}: {name}={bound!r} is not a multiple of q={q!r}")


def _check_int_bounds(lower: Any, upper: Any, owner: str, positive: bool = False,
                      inclusive: bool = False) -> None:
    for name, bound in (("lower", lower), ("upper", upper)):
        if isinstance(bound, bool) or not isinstance(bound, (int, np.integer)):
            raise TypeError(f"{owner}: {name} must be an int, got {bound!r}")
    if positive and lower <= 0:
        raise ValueError(f"{owner}: lower must be > 0 for a log scale, got {lower!r}")
    if upper < lower or (upper == lower and not inclusive):
        raise ValueError(f"{owner}: no int lies in the range, got lower={lower!r}, "
                         f"upper={upper!r} (upper is {'in' if inclusive else 'ex'}cluded)")


def _check_int_quantum(lower: int, upper: int, q: Any, owner: str) -> None:
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or q <= 0:
        raise ValueError(f"{owner}: q must be a positive int, got {q!r}")
    if (upper // q) * q < -(-lower // q) * q:
        raise ValueError(f"{owner}: no multiple of q={q} lies in [{lower}, {upper}]")
