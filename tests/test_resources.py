"""ResourceSet arithmetic and validation, and one node's GPU instance bookkeeping."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyactor._private.resources import (SCALE, Allocation, NodeResources, ResourceSet,
                                        check_gpu_demand)

NAMES = ["CPU", "GPU", "memory", "accelerator_x"]

# Amounts on the fixed-point grid, written as users write them: ints and 4-decimal floats.
grid_amounts = st.one_of(
    st.integers(min_value=0, max_value=1_000),
    st.integers(min_value=0, max_value=10_000_000).map(lambda u: u / SCALE),
)
resource_dicts = st.dictionaries(st.sampled_from(NAMES), grid_amounts, max_size=4)
resource_sets = resource_dicts.map(ResourceSet.from_dict)


# --- validation ---

@pytest.mark.parametrize("amounts, message", [
    ({"CPU": -1}, "resource 'CPU' must not be negative, got -1"),
    ({"GPU": -0.5}, "resource 'GPU' must not be negative, got -0.5"),
    ({"accelerator_x": "two"}, "resource 'accelerator_x' must be a number, got 'two'"),
    ({"CPU": None}, "resource 'CPU' must be a number, got None"),
    ({"CPU": True}, "resource 'CPU' must be a number, got True"),
    ({"memory": float("nan")}, "resource 'memory' must be finite, got nan"),
    ({"CPU": float("inf")}, "resource 'CPU' must be finite, got inf"),
    ({"GPU": 0.00001}, "resource 'GPU' amount 1e-05 is below the resolution of 0.0001"),
    ({"": 1}, "resource names must be non-empty strings, got ''"),
    ({3: 1}, "resource names must be non-empty strings, got 3"),
])
def test_from_dict_rejects_bad_amounts_naming_the_resource(amounts, message):
    """Negative, non-numeric, non-finite or too-small amounts raise ValueError naming the name."""
    with pytest.raises(ValueError) as info:
        ResourceSet.from_dict(amounts)
    assert str(info.value) == message


def test_zero_amounts_are_dropped_and_sets_with_equal_amounts_are_equal():
    """{"CPU": 1, "GPU": 0} and {"CPU": 1.0} are the same set with the same hash."""
    a = ResourceSet.from_dict({"CPU": 1, "GPU": 0})
    b = ResourceSet.from_dict({"CPU": 1.0})
    assert a == b and hash(a) == hash(b)
    assert a.to_dict() == {"CPU": 1}
    assert ResourceSet.from_dict({"CPU": 0}).is_empty


def test_numbers_of_any_real_type_are_accepted():
    """Decimal and Fraction amounts convert exactly like floats and ints."""
    assert ResourceSet.from_dict({"GPU": Decimal("0.25")}) == ResourceSet.from_dict({"GPU": 0.25})
    assert ResourceSet.from_dict({"GPU": Fraction(1, 4)}).to_dict() == {"GPU": 0.25}


def test_to_dict_lists_cpu_gpu_memory_then_custom_names_alphabetically():
    """The canonical order makes messages stable whatever order the user wrote."""
    rs = ResourceSet.from_dict({"zeta": 1, "memory": 2**30, "alpha": 1, "GPU": 1, "CPU": 2})
    assert list(rs.to_dict()) == ["CPU", "GPU", "memory", "alpha", "zeta"]


def test_tenths_add_up_exactly():
    """0.1 + 0.2 == 0.3 and ten 0.1s make exactly 1 (floats would drift)."""
    tenth = ResourceSet.from_dict({"CPU": 0.1})
    total = ResourceSet()
    for _ in range(10):
        total = total + tenth
    assert total == ResourceSet.from_dict({"CPU": 1})
    assert tenth + ResourceSet.from_dict({"CPU": 0.2}) == ResourceSet.from_dict({"CPU": 0.3})


def test_subtracting_more_than_present_raises():
    """ResourceSets never hold negative amounts; `-` says which resource would go below zero."""
    with pytest.raises(ValueError, match="resource 'GPU' would become negative"):
        ResourceSet.from_dict({"CPU": 1}) - ResourceSet.from_dict({"GPU": 0.5})


def test_gpu_requests_above_one_must_be_whole():
    """1.5 GPUs cannot be mapped to device ids; 0.5 and 2 can."""
    check_gpu_demand(ResourceSet.from_dict({"GPU": 0.5}))
    check_gpu_demand(ResourceSet.from_dict({"GPU": 2}))
    with pytest.raises(ValueError, match="must be a whole number, got 1.5 GPUs"):
        check_gpu_demand(ResourceSet.from_dict({"GPU": 1.5}))


# --- properties ---

@given(resource_dicts)
def test_to_dict_round_trips(amounts):
    """from_dict(to_dict(x)) == x, and to_dict keeps every non-zero amount exactly."""
    rs = ResourceSet.from_dict(amounts)
    assert ResourceSet.from_dict(rs.to_dict()) == rs
    assert rs.to_dict() == {k: v for k, v in amounts.items() if v}


@given(resource_sets, resource_sets)
def test_add_then_subtract_returns_the_original(a, b):
    """(a + b) - b == a exactly, and a fits in a + b."""
    assert (a + b) - b == a
    assert a.fits_in(a + b) and b.fits_in(a + b)


@given(resource_sets, st.lists(resource_sets, max_size=30), st.randoms())
def test_no_drift_over_random_add_and_subtract_sequences(start, steps, rnd):
    """Adding many fractional sets and taking them back off in any order returns the start."""
    total = start
    for step in steps:
        total = total + step
    rnd.shuffle(steps)
    for step in steps:
        assert step.fits_in(total)
        total = total - step
    assert total == start


@given(resource_sets, resource_sets)
def test_fits_in_agrees_with_subtraction(a, b):
    """a fits in b exactly when b - a does not raise."""
    try:
        b - a
    except ValueError:
        assert not a.fits_in(b)
    else:
        assert a.fits_in(b)


# --- NodeResources: GPU instances ---

def node(**amounts) -> NodeResources:
    return NodeResources(ResourceSet.from_dict(amounts))


def gpus(amount) -> ResourceSet:
    return ResourceSet.from_dict({"GPU": amount})


def test_whole_gpu_requests_get_distinct_ids_nobody_else_holds():
    """Two 1-GPU requests on a 2-GPU node get ids 0 and 1; a third must wait."""
    n = node(GPU=2)
    first, second = n.allocate(gpus(1)), n.allocate(gpus(1))
    assert (first.gpu_ids, second.gpu_ids) == ((0,), (1,))
    assert n.allocate(gpus(0.1)) is None


def test_fractional_requests_share_one_id_up_to_a_whole_gpu():
    """0.5 + 0.25 + 0.25 share GPU 0; the next 0.5 goes to GPU 1; a whole GPU then cannot fit."""
    n = node(GPU=2)
    ids = [n.allocate(gpus(f)).gpu_ids for f in (0.5, 0.25, 0.25, 0.5)]
    assert ids == [(0,), (0,), (0,), (1,)]
    assert n.allocate(gpus(1)) is None
    assert n.gpu_free_units() == {0: 0, 1: SCALE // 2}


def test_fragmented_gpus_do_not_fit_a_whole_gpu_request():
    """Half of each of two GPUs free sums to 1 GPU but no single id is free: no allocation."""
    n = node(GPU=2)
    a, b, c = n.allocate(gpus(0.5)), n.allocate(gpus(0.5)), n.allocate(gpus(0.5))
    n.free(b)  # GPU 0 half used (a), GPU 1 half used (c)
    assert n.available() == gpus(1)
    assert n.allocate(gpus(1)) is None
    n.free(a)
    assert n.allocate(gpus(1)).gpu_ids == (0,)


def test_explicit_gpu_ids_are_handed_out():
    """A node that owns devices 2 and 5 grants those ids, not 0 and 1."""
    n = NodeResources(gpus(2), gpu_ids=[5, 2])
    assert n.allocate(gpus(2)).gpu_ids == (2, 5)
    assert Allocation(gpus(2), (2, 5)).cuda_visible_devices == "2,5"


def test_node_totals_must_have_whole_gpus_matching_the_ids():
    """A node with 1.5 GPUs, or 2 GPUs but 3 ids, is refused."""
    with pytest.raises(ValueError, match="GPU total must be a whole number"):
        node(GPU=1.5)
    with pytest.raises(ValueError, match="must be 2 distinct ids"):
        NodeResources(gpus(2), gpu_ids=[0, 1, 2])


def test_reclaim_can_drive_availability_negative_but_snapshots_clamp():
    """Taking back lent CPUs that others now use oversubscribes; available() shows 0."""
    n = node(CPU=1)
    cpu = ResourceSet.from_dict({"CPU": 1})
    n.allocate(cpu)
    n.give(cpu)
    n.allocate(cpu)
    n.take(cpu)
    assert n.available().is_empty
    assert n.oversubscribed() == cpu
