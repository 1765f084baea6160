"""Repeater: run each suggested config `repeat` times and report their mean to the searcher.

For noisy objectives (an RL return over seeds): the searcher suggests one config, the Repeater
hands it out `repeat` times (each with `__trial_index__` = 0..repeat-1 in its config when
set_index, to seed by), collects the group's final metrics and tells the searcher, under the
group's first trial id, their mean (NaNs from failed trials ignored).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .searcher import Searcher

TRIAL_INDEX = "__trial_index__"


class Repeater(Searcher):
    def __init__(self, searcher: Searcher, repeat: int = 1, set_index: bool = True):
        if not isinstance(searcher, Searcher):
            raise TypeError(f"Repeater wraps a Searcher, got {type(searcher).__name__}")
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"Repeater: repeat must be an int >= 1, got {repeat!r}")
        super().__init__(searcher.metric, searcher.mode)
        self.searcher = searcher
        self.repeat = repeat
        self.set_index = set_index
        # One group per suggested config: its first trial id, its config, members and scores.
        self._groups: list[dict] = []
        self._group_of: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        accepted = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return accepted

    def suggest(self, trial_id: str) -> dict | None | str:
        group = self._groups[-1] if self._groups else None
        if group is None or len(group["members"]) >= self.repeat:
            config = self.searcher.suggest(trial_id)
            if not isinstance(config, dict):
                return config
            group = {"primary": trial_id, "config": config, "members": [], "scores": {}}
            self._groups.append(group)
        index = len(group["members"])
        group["members"].append(trial_id)
        self._group_of[trial_id] = len(self._groups) - 1
        config = copy.deepcopy(group["config"])
        if self.set_index:
            config[TRIAL_INDEX] = index
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._group_of:
            return
        group = self._groups[self._group_of.pop(trial_id)]
        score = np.nan
        if result and not error and self._metric in result:
            score = float(result[self._metric])
        group["scores"][trial_id] = score
        if len(group["scores"]) < self.repeat:
            return
        scores = list(group["scores"].values())
        if all(np.isnan(scores)):
            self.searcher.on_trial_complete(group["primary"], None, error=True)
        else:
            self.searcher.on_trial_complete(
                group["primary"], {self._metric: float(np.nanmean(scores)),
                                   "repeats": len(scores)})

    def get_state(self) -> dict:
        return {**super().get_state(), "groups": copy.deepcopy(self._groups),
                "group_of": dict(self._group_of), "searcher": self.searcher.get_state()}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._groups = copy.deepcopy(state["groups"])
        self._group_of = dict(state["group_of"])
        self.searcher.set_state(state["searcher"])
