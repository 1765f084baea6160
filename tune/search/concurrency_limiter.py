"""ConcurrencyLimiter: at most `max_concurrent` of a searcher's trials running at once.

It sits between the controller and a searcher: suggest answers None ("ask again later") while
the limit is reached, and passes everything else through. With batch=True it releases new
trials only when the whole current batch has completed, and tells the searcher of the batch's
results together (for searchers that fit a model per batch).
"""

from __future__ import annotations

from typing import Any

from .searcher import Searcher


class ConcurrencyLimiter(Searcher):
    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False):
        if not isinstance(searcher, Searcher):
            raise TypeError(f"ConcurrencyLimiter wraps a Searcher, got {type(searcher).__name__}")
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"ConcurrencyLimiter: max_concurrent must be an int >= 1, "
                             f"got {max_concurrent!r}")
        super().__init__(searcher.metric, searcher.mode)
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.batch = batch
        self._live: list[str] = []
        self._held: dict[str, tuple[dict | None, bool]] = {}   # batch results not yet passed on

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        accepted = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return accepted

    def suggest(self, trial_id: str) -> dict | None | str:
        if len(self._live) >= self.max_concurrent:
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self._live.append(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._live:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._live:
            return
        if not self.batch:
            self._live.remove(trial_id)
            self.searcher.on_trial_complete(trial_id, result, error=error)
            return
        self._held[trial_id] = (result, error)
        if len(self._held) == len(self._live):      # the whole batch is in
            for held_id, (held_result, held_error) in self._held.items():
                self.searcher.on_trial_complete(held_id, held_result, error=held_error)
            self._live.clear()
            self._held.clear()

    @property
    def live_trials(self) -> list[str]:
        return list(self._live)

    def get_state(self) -> dict:
        return {**super().get_state(), "live": list(self._live), "held": dict(self._held),
                "searcher": self.searcher.get_state()}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._live = list(state["live"])
        self._held = dict(state["held"])
        self.searcher.set_state(state["searcher"])
