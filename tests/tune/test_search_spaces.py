"""Each search-space domain: its bounds, quantisation, log scale and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyactor.tune import search
from pyactor.tune.search import sample

SEEDS = st.integers(0, 2**32 - 1)
# The machine is shared and loaded: hypothesis's per-example deadline would only add flakiness.
relaxed = settings(deadline=None)
FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


def draws(domain, seed, n=64):
    return domain.sample(size=n, random_state=seed)


@relaxed
@given(FLOATS, st.floats(1e-3, 1e6), SEEDS)
def test_uniform_stays_in_its_bounds(lower, width, seed):
    """uniform(lower, upper) draws floats in [lower, upper]."""
    upper = lower + width
    values = draws(search.uniform(lower, upper), seed)
    assert all(isinstance(v, float) and lower <= v <= upper for v in values)


@relaxed
@given(st.integers(-1000, 1000), st.integers(1, 1000), st.sampled_from([0.5, 0.25, 1.0, 5.0]),
       SEEDS)
def test_quniform_is_a_multiple_of_q_within_bounds(low_steps, steps, q, seed):
    """quniform draws multiples of q in [lower, upper], upper included."""
    lower, upper = low_steps * q, (low_steps + steps) * q
    for v in draws(search.quniform(lower, upper, q), seed):
        assert lower <= v <= upper
        assert math.isclose(v / q, round(v / q), abs_tol=1e-9)


def test_quniform_reaches_its_upper_bound():
    """Quantisation makes the upper bound of quniform reachable."""
    values = set(draws(search.quniform(0, 1, 0.5), 0, n=200))
    assert values == {0.0, 0.5, 1.0}


@relaxed
@given(st.floats(1e-8, 1e3), st.floats(1.5, 1e6), SEEDS)
def test_loguniform_stays_in_its_bounds(lower, ratio, seed):
    """loguniform draws floats in [lower, upper]."""
    upper = lower * ratio
    assert all(lower <= v <= upper for v in draws(search.loguniform(lower, upper), seed))


def test_loguniform_is_uniform_in_the_logarithm():
    """Each decade of loguniform(1e-4, 1) gets about a quarter of the draws."""
    values = np.array(draws(search.loguniform(1e-4, 1.0), 7, n=8000))
    counts = np.histogram(np.log10(values), bins=[-4, -3, -2, -1, 0])[0] / len(values)
    assert np.all(np.abs(counts - 0.25) < 0.03)


@relaxed
@given(st.sampled_from([(1e-3, 1.0, 1e-3), (0.1, 100.0, 0.1), (5.0, 1000.0, 5.0)]), SEEDS)
def test_qloguniform_is_quantised_within_bounds(bounds, seed):
    """qloguniform draws multiples of q in [lower, upper]."""
    lower, upper, q = bounds
    for v in draws(search.qloguniform(lower, upper, q), seed):
        assert lower <= v <= upper
        assert math.isclose(v / q, round(v / q), abs_tol=1e-6)


def test_randn_has_its_mean_and_sd():
    """randn(mean, sd) draws from N(mean, sd**2)."""
    values = np.array(draws(search.randn(3.0, 2.0), 11, n=20000))
    assert abs(values.mean() - 3.0) < 0.05 and abs(values.std() - 2.0) < 0.05


@relaxed
@given(st.integers(-1000, 1000), st.integers(1, 50), SEEDS)
def test_randint_excludes_its_upper_bound(lower, width, seed):
    """randint(lower, upper) draws ints in [lower, upper), like numpy's randint."""
    upper = lower + width
    values = draws(search.randint(lower, upper), seed)
    assert all(type(v) is int and lower <= v < upper for v in values)


def test_randint_reaches_every_value():
    """Every int of randint(0, 5) is drawn, 5 never."""
    assert set(draws(search.randint(0, 5), 3, n=300)) == {0, 1, 2, 3, 4}


@relaxed
@given(st.integers(-100, 100), st.integers(0, 100), st.integers(1, 10), SEEDS)
def test_qrandint_draws_multiples_of_q_upper_included(lower, width, q, seed):
    """qrandint draws multiples of q in [lower, upper], upper included."""
    upper = lower + width
    multiples = [m for m in range(lower, upper + 1) if m % q == 0]
    if not multiples:
        with pytest.raises(ValueError, match="multiple of q"):
            search.qrandint(lower, upper, q)
        return
    values = draws(search.qrandint(lower, upper, q), seed)
    assert all(type(v) is int and v in multiples for v in values)


def test_qrandint_reaches_its_upper_bound_evenly():
    """qrandint(0, 10, 5) draws 0, 5 and 10 about equally often."""
    values = draws(search.qrandint(0, 10, 5), 1, n=3000)
    counts = [values.count(v) / 3000 for v in (0, 5, 10)]
    assert all(abs(c - 1 / 3) < 0.04 for c in counts)


@relaxed
@given(st.integers(1, 1000), st.integers(2, 1000), SEEDS)
def test_lograndint_stays_in_range_and_excludes_upper(lower, ratio, seed):
    """lograndint(lower, upper) draws ints in [lower, upper)."""
    upper = lower * ratio
    assert all(type(v) is int and lower <= v < upper
               for v in draws(search.lograndint(lower, upper), seed))


def test_lograndint_favours_small_values_as_a_log_scale_does():
    """lograndint(1, 1000): about a third of the draws below 10."""
    values = np.array(draws(search.lograndint(1, 1000), 5, n=6000))
    assert abs((values < 10).mean() - 1 / 3) < 0.03


@relaxed
@given(st.lists(st.one_of(st.integers(), st.text(), st.none()), min_size=1, max_size=8,
                unique=True), SEEDS)
def test_choice_draws_only_its_categories_keeping_their_types(categories, seed):
    """choice returns one of its categories, unchanged (no numpy coercion)."""
    for v in draws(search.choice(categories), seed, n=16):
        assert any(v == c and type(v) is type(c) for c in categories)


def test_choice_is_uniform():
    """Each of choice's categories gets an equal share of the draws."""
    values = draws(search.choice(["a", "b", "c", "d"]), 2, n=4000)
    assert all(abs(values.count(c) / 4000 - 0.25) < 0.03 for c in "abcd")


@settings(max_examples=30, deadline=None)
@given(SEEDS)
def test_a_seed_reproduces_every_domain(seed):
    """The same random_state draws the same values from every domain."""
    domains = [search.uniform(0, 1), search.quniform(0, 10, 0.5), search.loguniform(1e-4, 1),
               search.qloguniform(1e-3, 1, 1e-3), search.randn(), search.randint(0, 100),
               search.qrandint(0, 100, 5), search.lograndint(1, 100), search.choice([1, "x", None])]
    for domain in domains:
        assert draws(domain, seed) == draws(domain, seed)
        generator_a, generator_b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert domain.sample(random_state=generator_a) == domain.sample(random_state=generator_b)


def test_sample_from_takes_a_function_of_nothing_or_of_the_spec():
    """sample_from accepts f() and f(spec); a function of two arguments is refused."""
    assert search.sample_from(lambda: 4).sample() == 4
    assert search.sample_from(lambda spec: 5).sample() == 5
    with pytest.raises(ValueError, match="no argument or one"):
        search.sample_from(lambda a, b: 1)
    with pytest.raises(TypeError, match="callable"):
        search.sample_from(3)


@pytest.mark.parametrize("make, message", [
    (lambda: search.uniform(1, 0), "lower must be below upper"),
    (lambda: search.uniform("a", 1), "lower must be a number"),
    (lambda: search.loguniform(0, 1), "lower must be > 0"),
    (lambda: search.quniform(0.1, 1, 0.25), "not a multiple of q"),
    (lambda: search.quniform(0, 1, 0), "q must be > 0"),
    (lambda: search.randint(3, 3), "no int lies"),
    (lambda: search.randint(0.5, 3), "lower must be an int"),
    (lambda: search.lograndint(0, 10), "lower must be > 0"),
    (lambda: search.qrandint(0, 10, 0), "q must be a positive int"),
    (lambda: search.randn(0, 0), "sd must be > 0"),
    (lambda: search.choice([]), "at least one category"),
    (lambda: search.choice("abc"), "list of categories"),
    (lambda: search.grid_search([]), "at least one value"),
    (lambda: search.grid_search(5), "list of values"),
])
def test_bad_domain_arguments_are_refused_naming_the_mistake(make, message):
    """A domain built from bad arguments raises at once, saying what is wrong."""
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_random_state_of_a_wrong_type_is_refused():
    """random_state must be None, an int or a numpy generator."""
    with pytest.raises(TypeError, match="random_state"):
        search.uniform(0, 1).sample(random_state="seed")


def test_domains_are_the_sample_module_classes():
    """Each constructor returns the domain class a searcher inspects."""
    assert isinstance(search.uniform(0, 1), sample.Float)
    assert isinstance(search.randint(0, 2), sample.Integer)
    assert isinstance(search.choice([1]), sample.Categorical)
    assert isinstance(search.sample_from(lambda: 1), sample.Function)
    assert search.grid_search([1, 2]) == {"grid_search": [1, 2]}
