"""User-defined metrics, as `ray.util.metrics`: Counter, Gauge, Histogram.

    from pyactor.util.metrics import Counter
    requests = Counter("requests", description="requests served", tag_keys=("route",))
    requests.set_default_tags({"route": "/"})
    requests.inc()                          # in a driver, a task or an actor

Each process keeps its values (pyactor/_private/metrics.py); the node sums them over its
workers and drivers when its Prometheus endpoint is scraped (see docs/dashboard.md). A counter
named `requests` is exported as `requests_total`, following Prometheus' convention.
"""

from __future__ import annotations

import re

from pyactor._private.metrics import COUNTER, GAUGE, HISTOGRAM, REGISTRY

__all__ = ["Counter", "Gauge", "Histogram", "Metric"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


class Metric:
    """What the three kinds share: a name, a description, tag keys and default tags."""

    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None,
                 _boundaries: tuple = ()):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a metric needs a non-empty str name, got {name!r}")
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} is not a Prometheus name: use letters, "
                             f"digits, '_' and ':', not starting with a digit")
        if not isinstance(description, str):
            raise TypeError(f"description of metric {name!r} must be a str, "
                            f"got {type(description).__name__}")
        if isinstance(tag_keys, str) or not isinstance(tag_keys, (tuple, list, type(None))) \
                or not all(isinstance(k, str) for k in tag_keys or ()):
            raise TypeError(f"tag_keys of metric {name!r} must be a tuple of str, "
                            f"got {tag_keys!r}")
        tag_keys = tuple(tag_keys or ())
        if len(set(tag_keys)) != len(tag_keys):
            raise ValueError(f"tag_keys of metric {name!r} repeat a key: {tag_keys!r}")
        self._name, self._description, self._tag_keys = name, description, tag_keys
        self._default_tags: dict[str, str] = {}
        self._state = REGISTRY.register(name, self._kind, description, tag_keys, _boundaries)

    @property
    def info(self) -> dict:
        """Name, description, tag keys and default tags (as Ray's Metric.info)."""
        return {"name": self._name, "description": self._description,
                "tag_keys": self._tag_keys, "default_tags": dict(self._default_tags)}

    def set_default_tags(self, default_tags: dict[str, str]) -> "Metric":
        """Tags used when a call gives none for a key; returns the metric, for chaining."""
        self._check_tags(default_tags, complete=False)
        self._default_tags = dict(default_tags)
        return self

    def _tag_values(self, tags: dict | None) -> tuple:
        if tags:
            self._check_tags(tags, complete=False)
            merged = {**self._default_tags, **tags}
        else:
            merged = self._default_tags
        missing = [k for k in self._tag_keys if k not in merged]
        if missing:
            raise ValueError(f"metric {self._name!r}: missing value for tag key(s) {missing} "
                             f"(give them in tags= or set_default_tags)")
        return tuple(merged[k] for k in self._tag_keys)

    def _check_tags(self, tags, complete: bool) -> None:
        if not isinstance(tags, dict):
            raise TypeError(f"tags of metric {self._name!r} must be a dict, "
                            f"got {type(tags).__name__}")
        unknown = [k for k in tags if k not in self._tag_keys]
        if unknown:
            raise ValueError(f"metric {self._name!r} has no tag key(s) {unknown}; its tag_keys "
                             f"are {self._tag_keys}")
        for key, value in tags.items():
            if not isinstance(value, str):
                raise TypeError(f"tag {key!r} of metric {self._name!r} must be a str, "
                                f"got {type(value).__name__}")


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


class Counter(Metric):
    """A count that only goes up (requests served, bytes sent)."""

    _kind = COUNTER

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        value = _number(value, f"the increment of counter {self._name!r}")
        if value <= 0:
            raise ValueError(f"counter {self._name!r} only goes up: inc() needs a value > 0, "
                             f"got {value}")
        REGISTRY.add(self._state, self._tag_values(tags), value)


class Gauge(Metric):
    """A value that goes up and down (queue length); across processes the latest set wins."""

    _kind = GAUGE

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        value = _number(value, f"the value of gauge {self._name!r}")
        REGISTRY.set(self._state, self._tag_values(tags), value)


class Histogram(Metric):
    """Observed values counted into buckets with the given upper boundaries (latencies)."""

    _kind = HISTOGRAM

    def __init__(self, name: str, description: str = "", boundaries: list[float] | None = None,
                 tag_keys: tuple[str, ...] | None = None):
        if not boundaries:
            raise ValueError(f"histogram {name!r} needs boundaries, e.g. [0.1, 1, 10]")
        bounds = tuple(_number(b, f"a boundary of histogram {name!r}") for b in boundaries)
        if any(b <= 0 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"boundaries of histogram {name!r} must be positive and strictly "
                             f"increasing, got {list(boundaries)}")
        super().__init__(name, description, tag_keys, _boundaries=bounds)
        self.boundaries = list(bounds)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        value = _number(value, f"a value of histogram {self._name!r}")
        REGISTRY.observe(self._state, self._tag_values(tags), value)

    @property
    def info(self) -> dict:
        return {**super().info, "boundaries": list(self.boundaries)}
