"""The Searcher interface: what the controller asks a search algorithm, and tells it.

    controller --set_search_properties(metric, mode, config=param_space, num_samples=N)--> searcher
    controller --suggest(trial_id)--> searcher --> a config | None (nothing now) | FINISHED
    controller --on_trial_result / on_trial_complete(trial_id, result)--> searcher (learns)
    controller --get_state()/set_state()--> searcher (exact resume; save/restore wrap them)

A searcher decides and never does I/O besides save/restore's one file. Subclasses override
suggest and on_trial_complete, and get_state/set_state for what they learned.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from .._checks import MetricModeHolder, check_metric, check_mode


class Searcher(MetricModeHolder):
    """Base class of search algorithms (Ray Tune's Searcher hooks)."""

    FINISHED = "FINISHED"

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        """Take the experiment's metric/mode where this searcher was given none. False means
        the searcher cannot use `config` (it was built with its own space)."""
        owner = type(self).__name__
        if self._metric is None:
            self._metric = check_metric(metric, owner)
        if self._mode is None:
            self._mode = check_mode(mode, owner)
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """True if this searcher limits its own concurrency; otherwise the controller wraps it in
        a ConcurrencyLimiter."""
        return False

    def suggest(self, trial_id: str) -> dict | None | str:
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """An intermediate result; most searchers learn only from the final one."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """The trial's last result (None, with error=True, when it failed)."""

    def get_state(self) -> dict:
        return {"metric": self._metric, "mode": self._mode}

    def set_state(self, state: dict) -> None:
        self._metric = state["metric"]
        self._mode = state["mode"]

    def save(self, checkpoint_path: str) -> None:
        """get_state() pickled to `checkpoint_path`, written whole or not at all."""
        temporary = f"{checkpoint_path}.tmp-{os.getpid()}"
        with open(temporary, "wb") as file:
            pickle.dump(self.get_state(), file)
        os.replace(temporary, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))
