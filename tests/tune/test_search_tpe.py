"""TPESearch: it beats random search, stays in its domains, and resumes exactly."""

from __future__ import annotations

import pickle
import statistics

import pytest

from pyactor.tune import search
from pyactor.tune.search import BasicVariantGenerator, Searcher
from pyactor.tune.search.tpe import TPESearch

SPACE_2D = {"x": search.uniform(-1.0, 1.0), "y": search.uniform(-1.0, 1.0)}


def bowl(config):
    return (config["x"] - 0.3) ** 2 + (config["y"] + 0.2) ** 2


def best_found(searcher, objective, trials):
    best = float("inf")
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        value = objective(config)
        best = min(best, value)
        searcher.on_trial_complete(f"t{i}", {"loss": value})
    return best


def tpe(space=None, seed=0, **kwargs):
    searcher = TPESearch(metric="loss", mode="min", random_state=seed, **kwargs)
    if space is not None:
        searcher.set_search_properties(None, None, space)
    return searcher


@pytest.mark.slow
def test_tpe_beats_random_search_on_a_2d_bowl_over_seeded_runs():
    """Over 20 fixed seeds x 40 trials, TPE's best is below random search's in most runs and
    its median best is several times lower (deterministic: every seed is fixed)."""
    tpe_best, random_best = [], []
    for seed in range(20):
        tpe_best.append(best_found(tpe(SPACE_2D, seed), bowl, 40))
        generator = BasicVariantGenerator(random_state=seed)
        generator.set_search_properties("loss", "min", SPACE_2D, num_samples=40)
        random_best.append(best_found(generator, bowl, 40))
    wins = sum(t < r for t, r in zip(tpe_best, random_best))
    assert wins >= 14
    assert statistics.median(tpe_best) < statistics.median(random_best) / 3


def test_tpe_concentrates_on_the_optimum_of_a_1d_objective_in_max_mode():
    """In max mode, TPE's later suggestions gather near the maximum of -(x - 0.3)**2."""
    searcher = TPESearch(metric="score", mode="max", random_state=3)
    searcher.set_search_properties(None, None, {"x": search.uniform(-1, 1)})
    xs = []
    for i in range(50):
        x = searcher.suggest(f"t{i}")["x"]
        xs.append(x)
        searcher.on_trial_complete(f"t{i}", {"score": -(x - 0.3) ** 2})
    assert statistics.median(abs(x - 0.3) for x in xs[-20:]) < 0.1


def test_tpe_suggestions_stay_inside_every_kind_of_domain_and_keep_nesting():
    """Model-based suggestions respect bounds, ints, quantisation, log scale and choices, and
    constants and nested dicts of the space are kept."""
    space = {"opt": {"lr": search.loguniform(1e-5, 1e-1), "momentum": search.quniform(0, 1, 0.1)},
             "layers": search.randint(1, 5), "width": search.qrandint(16, 256, 16),
             "units": search.lograndint(8, 1024), "act": search.choice(["relu", "tanh"]),
             "noise": search.randn(0, 1), "seed": 7}
    searcher = tpe(space, seed=1, n_startup_trials=5)
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        assert 1e-5 <= config["opt"]["lr"] <= 1e-1
        momentum = config["opt"]["momentum"]
        assert 0 <= momentum <= 1 and abs(momentum / 0.1 - round(momentum / 0.1)) < 1e-9
        assert type(config["layers"]) is int and 1 <= config["layers"] < 5
        assert config["width"] % 16 == 0 and 16 <= config["width"] <= 256
        assert type(config["units"]) is int and 8 <= config["units"] < 1024
        assert config["act"] in ("relu", "tanh") and config["seed"] == 7
        assert isinstance(config["noise"], float)
        loss = abs(config["layers"] - 3) + (config["act"] == "tanh")
        searcher.on_trial_complete(f"t{i}", {"loss": loss})


def test_tpe_is_reproducible_and_resumes_exactly():
    """The same random_state gives the same suggestions; a searcher restored from get_state
    mid-run suggests what the uninterrupted one does."""
    def run(searcher, start, stop):
        out = []
        for i in range(start, stop):
            config = searcher.suggest(f"t{i}")
            out.append(config)
            searcher.on_trial_complete(f"t{i}", {"loss": bowl(config)})
        return out

    reference = run(tpe(SPACE_2D, seed=5), 0, 30)
    interrupted = tpe(SPACE_2D, seed=5)
    head = run(interrupted, 0, 15)
    restored = TPESearch()
    restored.set_state(pickle.loads(pickle.dumps(interrupted.get_state())))
    restored.set_search_properties("loss", "min", SPACE_2D)
    assert head + run(restored, 15, 30) == reference


def test_tpe_ignores_failed_trials_and_uses_points_to_evaluate_first():
    """points_to_evaluate come out first (missing keys drawn); errored trials teach nothing."""
    searcher = tpe(SPACE_2D, points_to_evaluate=[{"x": 0.3, "y": -0.2}, {"x": 0.0}])
    assert searcher.suggest("a") == {"x": 0.3, "y": -0.2}
    second = searcher.suggest("b")
    assert second["x"] == 0.0 and -1 <= second["y"] <= 1
    searcher.on_trial_complete("a", None, error=True)
    searcher.on_trial_complete("b", {"other": 1.0})
    assert searcher.get_state()["observed"] == []


def test_tpe_with_its_own_space_declines_the_experiments_space():
    """A TPESearch built with a space returns False when the Tuner brings another space."""
    searcher = TPESearch(SPACE_2D, metric="loss", mode="min")
    assert searcher.set_search_properties("loss", "min", {"z": search.uniform(0, 1)}) is False
    assert searcher.set_search_properties("loss", "min", {}) is True
    assert set(searcher.suggest("t0")) == {"x", "y"}


@pytest.mark.parametrize("space, message", [
    ({"x": search.grid_search([1, 2])}, "cannot expand grid_search"),
    ({"x": search.sample_from(lambda spec: 1)}, "cannot model sample_from"),
    ([1, 2], "must be a dict"),
])
def test_tpe_refuses_what_it_cannot_model(space, message):
    """grid_search, sample_from and a space that is not a dict are refused with a reason."""
    with pytest.raises((TypeError, ValueError), match=message):
        TPESearch(space)


def test_tpe_needs_metric_and_mode_before_suggesting():
    """Without metric/mode, suggest raises naming what is missing."""
    searcher = TPESearch(SPACE_2D)
    with pytest.raises(ValueError, match="needs a metric and a mode"):
        searcher.suggest("t0")
    assert isinstance(tpe(SPACE_2D), Searcher)
