"""BasicVariantGenerator: grid search crossed with random search, the default searcher.

Each of the num_samples rounds expands the whole grid once and draws every domain anew, so
`num_samples x grid size` configs come out (Ray Tune's order: round by round, the grid's first
key varying fastest). `points_to_evaluate` (partial configs) each take the place of one round,
their keys fixed and the rest drawn. A round is drawn when the previous one is used up; the
drawn configs waiting in it and the generator's RNG state are part of get_state, so a restored
generator hands out exactly the configs one that never stopped would have.
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from typing import Any

import numpy as np

from .searcher import Searcher
from .variant_generator import (assign_value, check_space, format_vars, generate_variants,
                                grid_size, parse_space)


class BasicVariantGenerator(Searcher):
    """Grid + random search; `random_state` (an int seed or a numpy Generator) makes the configs
    reproducible; `max_concurrent` > 0 caps the trials it has running at once."""

    def __init__(self, points_to_evaluate: list[dict] | None = None, max_concurrent: int = 0,
                 random_state: Any = None):
        super().__init__()
        if points_to_evaluate is not None and not all(isinstance(p, dict)
                                                      for p in points_to_evaluate):
            raise TypeError("points_to_evaluate must be a list of dicts (partial configs)")
        if not isinstance(max_concurrent, int) or max_concurrent < 0:
            raise ValueError(f"max_concurrent must be an int >= 0, got {max_concurrent!r}")
        if random_state is None or isinstance(random_state, (int, np.integer)):
            self._rng = np.random.default_rng(random_state)
        elif isinstance(random_state, np.random.Generator):
            self._rng = random_state
        else:
            raise TypeError("random_state must be None, an int seed or a numpy Generator, "
                            f"got {type(random_state).__name__}")
        self._points = deque(copy.deepcopy(points_to_evaluate or []))
        self.max_concurrent = max_concurrent
        self._space: dict | None = None
        self._num_samples = 0
        self.total_samples = 0
        # Progress (all of it in get_state):
        self._rounds_started = 0
        self._queue: deque = deque()        # (resolved_vars, config) drawn but not handed out
        self._live: set[str] = set()
        self._vars: dict[str, dict] = {}      # trial_id -> the drawn values by path

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              num_samples: int = 1, **spec: Any) -> bool:
        super().set_search_properties(metric, mode, config)
        check_space(config)
        if num_samples == -1:                 # Ray's "until a stop condition or time budget"
            num_samples = sys.maxsize
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1 (or -1: no limit), "
                             f"got {num_samples!r}")
        for point in self._points:
            self._check_point(config, point)
        self._space = config
        self._num_samples = num_samples
        self.total_samples = self._count(config, num_samples)
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | None | str:
        if self._space is None:
            raise RuntimeError("BasicVariantGenerator.suggest before set_search_properties: the "
                               "controller gives it the param_space first")
        if self.max_concurrent and len(self._live) >= self.max_concurrent:
            return None
        if not self._queue:
            if self._rounds_started >= self._num_samples:
                return Searcher.FINISHED
            self._draw_round()
        resolved_vars, config = self._queue.popleft()
        self._live.add(trial_id)
        self._vars[trial_id] = resolved_vars       # formatted when asked: off the hot path
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self._live.discard(trial_id)

    def variant_tag(self, trial_id: str) -> str:
        """The drawn and gridded values of a suggested trial's config ("lr=0.0012,width=64"),
        for its experiment tag and folder name; "" for a trial it did not suggest."""
        resolved_vars = self._vars.get(trial_id)
        return format_vars(resolved_vars) if resolved_vars else ""

    @property
    def is_finished(self) -> bool:
        return not self._queue and self._rounds_started >= self._num_samples

    def _draw_round(self) -> None:
        space = self._space
        if self._points:
            space = copy.deepcopy(space)
            for path, value in _leaves(self._points.popleft()):
                assign_value(space, path, value)
        self._queue.extend(generate_variants(space, self._rng))
        self._rounds_started += 1

    def _count(self, space: dict, num_samples: int) -> int:
        """num_samples x grid size, where each preset point replaces one round and may fix a
        gridded key (its round is then smaller)."""
        presets = list(self._points)[:num_samples]
        total = (num_samples - len(presets)) * grid_size(space)
        for point in presets:
            preset_space = copy.deepcopy(space)
            for path, value in _leaves(point):
                assign_value(preset_space, path, value)
            total += grid_size(preset_space)
        return total

    @staticmethod
    def _check_point(space: dict, point: dict) -> None:
        domains, grids = parse_space(space)
        known = {path for path, _ in domains} | {path for path, _ in grids}
        for path, _ in _leaves(point):
            if path not in known and not _has_path(space, path):
                raise ValueError(f"points_to_evaluate: {'/'.join(map(str, path))} is not a key "
                                 "of the param_space")

    def get_state(self) -> dict:
        return {**super().get_state(), "rng": self._rng.bit_generator.state,
                "rounds_started": self._rounds_started, "queue": list(self._queue),
                "live": sorted(self._live), "vars": dict(self._vars),
                "points": list(self._points), "max_concurrent": self.max_concurrent}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._rng.bit_generator.state = state["rng"]
        self._rounds_started = state["rounds_started"]
        self._queue = deque(state["queue"])
        self._live = set(state["live"])
        self._vars = dict(state["vars"])
        self._points = deque(state["points"])
        self.max_concurrent = state["max_concurrent"]


def _leaves(point: dict, prefix: tuple = ()):
    """(path, value) of each non-dict leaf of a partial config."""
    for key, value in point.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _has_path(space: Any, path: tuple) -> bool:
    node = space
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True
