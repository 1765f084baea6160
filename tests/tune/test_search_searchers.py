"""ConcurrencyLimiter and Repeater around a scripted searcher, and the Searcher base."""

from __future__ import annotations

import pickle

import pytest

from pyactor.tune import search
from pyactor.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Repeater, Searcher


class Recording(Searcher):
    """Suggests {"n": 0}, {"n": 1}, ... up to `limit`, and records what it is told."""

    def __init__(self, limit=100, metric="score", mode="max"):
        super().__init__(metric, mode)
        self.limit = limit
        self.count = 0
        self.completed: list = []

    def suggest(self, trial_id):
        if self.count >= self.limit:
            return Searcher.FINISHED
        self.count += 1
        return {"n": self.count - 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append((trial_id, result, error))

    def get_state(self):
        return {**super().get_state(), "count": self.count, "completed": list(self.completed)}

    def set_state(self, state):
        super().set_state(state)
        self.count = state["count"]
        self.completed = list(state["completed"])


def test_concurrency_limiter_caps_live_trials():
    """No more than max_concurrent trials are handed out until one completes."""
    limiter = ConcurrencyLimiter(Recording(), max_concurrent=2)
    assert limiter.suggest("a") == {"n": 0} and limiter.suggest("b") == {"n": 1}
    assert limiter.suggest("c") is None and limiter.suggest("c") is None
    limiter.on_trial_complete("a", {"score": 1.0})
    assert limiter.suggest("c") == {"n": 2}
    assert limiter.searcher.completed == [("a", {"score": 1.0}, False)]
    assert limiter.live_trials == ["b", "c"]


def test_concurrency_limiter_batch_releases_after_the_whole_batch():
    """batch=True: new trials only when every trial of the batch completed, and the searcher
    hears of the batch's results together."""
    inner = Recording()
    limiter = ConcurrencyLimiter(inner, max_concurrent=2, batch=True)
    limiter.suggest("a")
    limiter.suggest("b")
    limiter.on_trial_complete("a", {"score": 1.0})
    assert limiter.suggest("c") is None and inner.completed == []
    limiter.on_trial_complete("b", {"score": 2.0})
    assert [c[0] for c in inner.completed] == ["a", "b"]
    assert limiter.suggest("c") == {"n": 2}


def test_concurrency_limiter_passes_finished_through():
    """When the searcher is finished, so is the limiter."""
    limiter = ConcurrencyLimiter(Recording(limit=1), max_concurrent=3)
    assert limiter.suggest("a") == {"n": 0}
    assert limiter.suggest("b") == Searcher.FINISHED


def test_concurrency_limiter_state_round_trip_includes_the_searcher():
    """A restored limiter has the same live trials and its searcher's state."""
    limiter = ConcurrencyLimiter(Recording(), max_concurrent=2)
    limiter.suggest("a")
    limiter.suggest("b")
    copy = ConcurrencyLimiter(Recording(), max_concurrent=2)
    copy.set_state(pickle.loads(pickle.dumps(limiter.get_state())))
    assert copy.suggest("c") is None
    copy.on_trial_complete("a", {"score": 0.0})
    limiter.on_trial_complete("a", {"score": 0.0})
    assert copy.suggest("c") == limiter.suggest("c") == {"n": 2}


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_concurrency_limiter_refuses_a_bad_limit(bad):
    """max_concurrent must be a positive int."""
    with pytest.raises(ValueError, match="max_concurrent"):
        ConcurrencyLimiter(Recording(), max_concurrent=bad)


def test_repeater_hands_out_each_config_repeat_times_with_its_index():
    """Each suggested config comes out `repeat` times, __trial_index__ 0..repeat-1."""
    repeater = Repeater(Recording(), repeat=3)
    configs = [repeater.suggest(f"t{i}") for i in range(6)]
    assert configs == [{"n": 0, "__trial_index__": 0}, {"n": 0, "__trial_index__": 1},
                       {"n": 0, "__trial_index__": 2}, {"n": 1, "__trial_index__": 0},
                       {"n": 1, "__trial_index__": 1}, {"n": 1, "__trial_index__": 2}]
    assert Repeater(Recording(), repeat=2, set_index=False).suggest("x") == {"n": 0}


def test_repeater_reports_the_group_mean_once_under_the_first_trial_id():
    """When all of a group completed, the searcher gets the mean metric under the first id;
    failed members are left out of the mean."""
    inner = Recording()
    repeater = Repeater(inner, repeat=3)
    for i in range(3):
        repeater.suggest(f"t{i}")
    repeater.on_trial_complete("t1", {"score": 1.0})
    repeater.on_trial_complete("t0", {"score": 3.0})
    assert inner.completed == []
    repeater.on_trial_complete("t2", None, error=True)
    assert inner.completed == [("t0", {"score": 2.0, "repeats": 3}, False)]


def test_repeater_group_that_all_failed_reports_an_error():
    """A group whose every member failed tells the searcher the config errored."""
    inner = Recording()
    repeater = Repeater(inner, repeat=2)
    repeater.suggest("a")
    repeater.suggest("b")
    repeater.on_trial_complete("a", None, error=True)
    repeater.on_trial_complete("b", {"other": 1})
    assert inner.completed == [("a", None, True)]


def test_repeater_state_round_trip_finishes_a_group_started_before():
    """A restored repeater completes the group begun before the restore."""
    inner = Recording()
    repeater = Repeater(inner, repeat=2)
    repeater.suggest("a")
    copy = Repeater(Recording(), repeat=2)
    copy.set_state(pickle.loads(pickle.dumps(repeater.get_state())))
    assert copy.suggest("b") == {"n": 0, "__trial_index__": 1}
    copy.on_trial_complete("a", {"score": 1.0})
    copy.on_trial_complete("b", {"score": 2.0})
    assert copy.searcher.completed == [("a", {"score": 1.5, "repeats": 2}, False)]


def test_repeater_over_basic_variant_generator_repeats_grid_points():
    """Repeater(BasicVariantGenerator) gives each grid point `repeat` times, then FINISHED."""
    repeater = Repeater(BasicVariantGenerator(random_state=0), repeat=2)
    repeater.set_search_properties("score", "max", {"x": search.grid_search([1, 2])},
                                   num_samples=1)
    configs = []
    while (config := repeater.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
        configs.append(config)
    assert [(c["x"], c["__trial_index__"]) for c in configs] == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_searcher_base_takes_the_experiments_metric_only_when_it_has_none():
    """set_search_properties fills in metric/mode the searcher was not given."""
    own = Recording(metric="acc", mode="max")
    own.set_search_properties("loss", "min", {})
    assert (own.metric, own.mode) == ("acc", "max")
    bare = Recording(metric=None, mode=None)
    bare.set_search_properties("loss", "min", {})
    assert (bare.metric, bare.mode) == ("loss", "min")
