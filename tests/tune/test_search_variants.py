"""Variant generation and BasicVariantGenerator: grid x num_samples, nesting, sample_from."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyactor.tune import search
from pyactor.tune.search import BasicVariantGenerator, Searcher
from pyactor.tune.search.variant_generator import generate_variants


def suggest_all(generator, prefix="t"):
    configs = []
    while True:
        config = generator.suggest(f"{prefix}{len(configs)}")
        if config == Searcher.FINISHED:
            return configs
        assert config is not None
        configs.append(config)


def make_generator(space, num_samples=1, seed=0, **kwargs):
    generator = BasicVariantGenerator(random_state=seed, **kwargs)
    generator.set_search_properties("loss", "min", space, num_samples=num_samples)
    return generator


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=3), st.integers(1, 4))
def test_grid_crossed_with_num_samples_gives_the_product(grid_sizes, num_samples):
    """num_samples x (product of the grid sizes) configs, total_samples says so, then FINISHED."""
    space = {f"g{i}": search.grid_search(list(range(n))) for i, n in enumerate(grid_sizes)}
    space["x"] = search.uniform(0, 1)
    generator = make_generator(space, num_samples)
    expected = num_samples
    for n in grid_sizes:
        expected *= n
    configs = suggest_all(generator)
    assert len(configs) == expected == generator.total_samples
    assert generator.suggest("again") == Searcher.FINISHED


def test_every_grid_combination_appears_once_per_round_first_key_fastest():
    """Each round holds every combination once; the first grid key (sorted) varies fastest."""
    space = {"b": search.grid_search(["x", "y"]), "a": search.grid_search([1, 2, 3])}
    configs = suggest_all(make_generator(space, num_samples=2))
    pairs = [(c["a"], c["b"]) for c in configs]
    one_round = [(1, "x"), (2, "x"), (3, "x"), (1, "y"), (2, "y"), (3, "y")]
    assert pairs == one_round * 2


def test_num_samples_minus_one_never_finishes():
    """num_samples=-1 (as in Ray) keeps drawing configs: the experiment's stop condition ends it."""
    generator = make_generator({"g": search.grid_search([1, 2]), "x": search.uniform(0, 1)}, -1)
    assert all(isinstance(generator.suggest(f"t{i}"), dict) for i in range(500))
    with pytest.raises(ValueError, match="num_samples must be"):
        make_generator({"x": 1}, num_samples=0)


def test_random_values_are_drawn_anew_for_each_variant():
    """A domain beside a grid gets a fresh draw in every config."""
    space = {"g": search.grid_search([1, 2, 3]), "x": search.uniform(0, 1)}
    xs = [c["x"] for c in suggest_all(make_generator(space, num_samples=3))]
    assert len(set(xs)) == 9


def test_nested_dicts_and_lists_are_resolved():
    """Domains and grids inside nested dicts and lists are drawn; constants stay."""
    space = {"model": {"width": search.choice([16, 64]), "depth": search.grid_search([1, 2]),
                       "act": "relu"},
             "layers": [search.randint(1, 4), 7], "lr": 0.1}
    configs = suggest_all(make_generator(space, num_samples=2))
    assert len(configs) == 4
    for config in configs:
        assert config["model"]["width"] in (16, 64) and config["model"]["act"] == "relu"
        assert 1 <= config["layers"][0] < 4 and config["layers"][1] == 7
        assert config["lr"] == 0.1
    assert [c["model"]["depth"] for c in configs] == [1, 2, 1, 2]


def test_sample_from_reads_other_keys_in_any_order():
    """sample_from sees grid values and drawn values, even ones declared after it, nested too."""
    space = {
        "double": search.sample_from(lambda spec: spec.config.base * 2),
        "nested": {"plus": search.sample_from(lambda spec: spec["config"]["double"] + 1)},
        "base": search.grid_search([1, 5]),
        "noise": search.uniform(0, 1),
        "with_noise": search.sample_from(lambda config: config["noise"] + config["base"]),
    }
    for config in suggest_all(make_generator(space, num_samples=3)):
        assert config["double"] == config["base"] * 2
        assert config["nested"]["plus"] == config["double"] + 1
        assert config["with_noise"] == config["noise"] + config["base"]


def test_sample_from_in_a_cycle_is_a_clear_error():
    """Two sample_from values that read each other cannot be resolved: a ValueError names them."""
    space = {"a": search.sample_from(lambda spec: spec.config.b),
             "b": search.sample_from(lambda spec: spec.config.a)}
    with pytest.raises(ValueError, match="could not resolve a, b"):
        suggest_all(make_generator(space))


def test_a_failing_sample_from_names_its_key():
    """An exception inside a sample_from function is reported with the key it was drawing."""
    space = {"x": search.sample_from(lambda spec: 1 / 0)}
    with pytest.raises(ValueError, match="could not draw x.*ZeroDivisionError"):
        suggest_all(make_generator(space))


def test_grid_values_holding_domains_are_resolved_too():
    """A grid over dicts of domains expands the grid and draws the domains inside."""
    space = {"opt": search.grid_search([{"name": "sgd", "lr": search.loguniform(1e-3, 1e-1)},
                                        {"name": "adam", "lr": search.uniform(0.5, 1.0)}])}
    configs = suggest_all(make_generator(space, num_samples=2))
    assert [c["opt"]["name"] for c in configs] == ["sgd", "adam", "sgd", "adam"]
    assert all(isinstance(c["opt"]["lr"], float) for c in configs)
    assert 0.5 <= configs[1]["opt"]["lr"] <= 1.0


def test_the_same_random_state_gives_the_same_configs():
    """random_state makes the whole sequence of configs reproducible; another seed differs."""
    space = {"g": search.grid_search([1, 2]), "x": search.loguniform(1e-4, 1),
             "c": search.choice(["a", "b", "c"]), "i": search.randint(0, 1000)}
    first = suggest_all(make_generator(space, num_samples=5, seed=42))
    assert first == suggest_all(make_generator(space, num_samples=5, seed=42))
    assert first != suggest_all(make_generator(space, num_samples=5, seed=43))


def test_restored_generator_continues_with_the_same_configs():
    """get_state mid-way (pickled) and set_state on a fresh generator: the same remaining
    configs, the same total, then FINISHED."""
    space = {"g": search.grid_search([1, 2, 3]), "x": search.uniform(0, 1)}
    reference = suggest_all(make_generator(space, num_samples=4, seed=9))
    interrupted = make_generator(space, num_samples=4, seed=9)
    head = [interrupted.suggest(f"t{i}") for i in range(5)]
    state = pickle.loads(pickle.dumps(interrupted.get_state()))
    restored = BasicVariantGenerator()
    restored.set_state(state)
    restored.set_search_properties("loss", "min", space, num_samples=4)
    tail = suggest_all(restored, prefix="u")
    assert head + tail == reference
    assert restored.variant_tag("t4") == interrupted.variant_tag("t4") != ""


def test_save_and_restore_through_a_file(tmp_path):
    """save/restore write and read get_state through a file."""
    space = {"x": search.uniform(0, 1)}
    generator = make_generator(space, num_samples=3, seed=1)
    generator.suggest("t0")
    generator.save(str(tmp_path / "searcher.pkl"))
    restored = make_generator(space, num_samples=3, seed=2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t1") == generator.suggest("t1")


def test_max_concurrent_holds_suggestions_until_a_trial_completes():
    """With max_concurrent=2, the third suggestion waits (None) until one trial completes."""
    generator = make_generator({"x": search.uniform(0, 1)}, num_samples=5, max_concurrent=2)
    assert generator.suggest("a") and generator.suggest("b")
    assert generator.suggest("c") is None
    generator.on_trial_complete("a", {"loss": 1.0})
    assert isinstance(generator.suggest("c"), dict)


def test_points_to_evaluate_come_first_and_count_as_samples():
    """Each preset point fixes its keys in one round; its round is smaller if it fixes a grid."""
    space = {"g": search.grid_search([1, 2]), "x": search.uniform(0, 1)}
    generator = make_generator(space, num_samples=3,
                               points_to_evaluate=[{"x": 0.5}, {"g": 2, "x": 0.25}])
    configs = suggest_all(generator)
    assert generator.total_samples == len(configs) == 2 + 1 + 2
    assert configs[:3] == [{"g": 1, "x": 0.5}, {"g": 2, "x": 0.5}, {"g": 2, "x": 0.25}]


def test_a_point_naming_an_unknown_key_is_refused():
    """points_to_evaluate with a key the space lacks raises, naming it."""
    with pytest.raises(ValueError, match="nope is not a key"):
        make_generator({"x": search.uniform(0, 1)}, points_to_evaluate=[{"nope": 1}])


@pytest.mark.parametrize("space", [None, [1, 2], "x", 3])
def test_a_space_that_is_not_a_dict_is_refused(space):
    """param_space must be a dict: a TypeError says so."""
    with pytest.raises(TypeError, match="must be a dict"):
        make_generator(space)


def test_mode_other_than_min_or_max_is_refused():
    """A searcher given mode='maximize' raises a ValueError naming the allowed modes."""
    with pytest.raises(ValueError, match="'min' or 'max'"):
        BasicVariantGenerator().set_search_properties("loss", "maximize", {})
    with pytest.raises(ValueError, match="'min' or 'max'"):
        Searcher(metric="loss", mode="best")


def test_suggest_before_the_space_is_given_is_a_clear_error():
    """suggest on an unconfigured generator explains what is missing."""
    with pytest.raises(RuntimeError, match="before set_search_properties"):
        BasicVariantGenerator().suggest("t0")


def test_generate_variants_yields_resolved_vars_for_tags():
    """generate_variants gives, with each config, the drawn values by path."""
    space = {"a": search.grid_search([1, 2]), "b": {"c": search.choice(["p"])}, "k": 3}
    variants = list(generate_variants(space, random_state=0))
    assert [v for v, _ in variants] == [{("a",): 1, ("b", "c"): "p"},
                                        {("a",): 2, ("b", "c"): "p"}]
    assert search.format_vars(variants[0][0]) == "a=1,c=p"
