"""Replay memory: the segment trees against a plain list model (hypothesis state machine), n-step
returns against a plain loop over random episodes, the bounded ring buffer, prioritized sampling
and importance weights, checkpoint state, and the replay actor fed by object-store refs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pyactor.rl.buffers import (FRAGMENT_FIELDS, MinTree, PrioritizedReplayBuffer, ReplayActor,
                                ReplayBuffer, SumTree, n_step_transitions)


# ---------------------------------------------------------------------- the trees
class SegmentTreeMachine(RuleBasedStateMachine):
    """Sum and min trees driven by batched updates against a list of leaves. Leaves are small
    integers stored as floats, so every sum is exact and prefix searches can be checked exactly.
    `written` tracks which leaves were ever set: the min tree's untouched leaves hold +inf."""

    @initialize(capacity=st.integers(1, 40))
    def start(self, capacity):
        self.model = [0.0] * capacity
        self.written = [False] * capacity
        self.sums = SumTree(capacity)
        self.mins = MinTree(capacity)

    @rule(data=st.data())
    def update_batch(self, data):
        """A batch of (index, value) pairs, repeats allowed: the last value for an index wins."""
        capacity = len(self.model)
        pairs = data.draw(st.lists(st.tuples(st.integers(0, capacity - 1),
                                             st.integers(0, 50).map(float)), max_size=12))
        for index, value in pairs:
            self.model[index] = value
            self.written[index] = True
        self.sums.update([i for i, _ in pairs], [v for _, v in pairs])
        self.mins.update([i for i, _ in pairs], [v for _, v in pairs])

    @rule(data=st.data())
    def search_prefixes(self, data):
        """find_prefix_sum returns the leaf whose cumulative interval holds each prefix."""
        total = sum(self.model)
        if total == 0:
            return
        prefixes = data.draw(st.lists(st.floats(0, total, exclude_max=True), min_size=1,
                                      max_size=8))
        found = self.sums.find_prefix_sum(prefixes)
        cumulative = np.cumsum(self.model)
        for prefix, leaf in zip(prefixes, found):
            below = cumulative[leaf] - self.model[leaf]
            assert self.model[leaf] > 0
            assert below <= prefix < cumulative[leaf], (prefix, leaf, self.model)

    @rule()
    def search_at_the_total(self):
        """A prefix equal to the total (rounding's worst case) lands on the last positive leaf."""
        positive = [i for i, value in enumerate(self.model) if value > 0]
        if positive:
            assert self.sums.find_prefix_sum([sum(self.model)])[0] == positive[-1]

    @invariant()
    def totals_match(self):
        assert self.sums.total() == sum(self.model)
        assert self.mins.min() == min([v for v, w in zip(self.model, self.written) if w],
                                      default=math.inf)
        assert list(self.sums.leaves()) == self.model
        assert list(self.sums[np.arange(len(self.model))]) == self.model


TestSegmentTreeMachine = SegmentTreeMachine.TestCase
TestSegmentTreeMachine.settings = settings(max_examples=40, stateful_step_count=25,
                                           deadline=None)


@given(st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=200), st.data())
@settings(max_examples=60, deadline=None)
def test_sum_tree_float_search_stays_on_positive_leaves(priorities, data):
    """With float priorities and zeros in between, every prefix in [0, total] finds a positive
    leaf whose interval holds the prefix up to rounding."""
    leaves = np.array(priorities) * np.array(data.draw(
        st.lists(st.sampled_from([0.0, 1.0]), min_size=len(priorities),
                 max_size=len(priorities))))
    if leaves.sum() == 0:
        leaves[-1] = 1.0
    tree = SumTree(len(leaves))
    tree.update(np.arange(len(leaves)), leaves)
    prefixes = np.concatenate([np.linspace(0, tree.total(), 50), [tree.total()]])
    found = tree.find_prefix_sum(prefixes)
    assert np.all(leaves[found] > 0)
    cumulative = np.cumsum(leaves)
    tolerance = 1e-9 * cumulative[-1]
    assert np.all(cumulative[found] - leaves[found] <= prefixes + tolerance)
    inside = prefixes < cumulative[-1] - tolerance
    assert np.all(prefixes[inside] < cumulative[found][inside] + tolerance)


def test_tree_rejects_out_of_range_leaves():
    """Updating a leaf outside [0, capacity) raises IndexError instead of corrupting the tree."""
    tree = SumTree(5)
    with pytest.raises(IndexError, match="range"):
        tree.update([5], [1.0])
    with pytest.raises(ValueError, match="capacity"):
        SumTree(0)


# ---------------------------------------------------------------------- n-step returns
def n_step_plain(fragment, n_step, gamma):
    """The definition, one transition at a time."""
    rewards = fragment["rewards"]
    horizon, num_envs = rewards.shape
    out = {"rewards": [], "next_obs": [], "terminateds": [], "discounts": []}
    for t in range(horizon):
        for env in range(num_envs):
            total, discount, terminated, step = 0.0, 1.0, False, t
            for k in range(n_step):
                step = t + k
                if step >= horizon:
                    step -= 1
                    break
                total += discount * rewards[step, env]
                discount *= gamma
                if fragment["terminateds"][step, env]:
                    terminated = True
                    break
                if fragment["truncateds"][step, env]:
                    break
            out["rewards"].append(total)
            out["next_obs"].append(fragment["next_obs"][step, env])
            out["terminateds"].append(terminated)
            out["discounts"].append(discount)
    return {key: np.array(value) for key, value in out.items()}


@st.composite
def fragments(draw):
    horizon = draw(st.integers(1, 12))
    num_envs = draw(st.integers(1, 4))
    shape = (horizon, num_envs)
    ends = draw(st.lists(st.sampled_from(["none", "none", "none", "terminated", "truncated"]),
                         min_size=horizon * num_envs, max_size=horizon * num_envs))
    ends = np.array(ends).reshape(shape)
    rewards = np.array(draw(st.lists(st.floats(-10, 10), min_size=horizon * num_envs,
                                     max_size=horizon * num_envs))).reshape(shape)
    obs = np.arange(horizon * num_envs * 2, dtype=np.float32).reshape(horizon, num_envs, 2)
    return {"obs": obs, "next_obs": obs + 0.5, "actions": np.zeros(shape, dtype=np.int64),
            "rewards": rewards.astype(np.float32), "terminateds": ends == "terminated",
            "truncateds": ends == "truncated"}


@given(fragments(), st.integers(1, 5), st.floats(0.0, 1.0))
@settings(max_examples=150, deadline=None)
def test_n_step_matches_plain_loop(fragment, n_step, gamma):
    """n-step returns, bootstrap observations, discounts and termination flags equal a plain
    loop over random episodes that terminate, truncate, and run past the fragment's end."""
    fast = n_step_transitions(fragment, n_step, gamma)
    plain = n_step_plain(fragment, n_step, gamma)
    np.testing.assert_allclose(fast["rewards"], plain["rewards"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fast["discounts"], plain["discounts"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fast["terminateds"], plain["terminateds"])
    np.testing.assert_array_equal(fast["next_obs"], plain["next_obs"])
    np.testing.assert_array_equal(fast["obs"], fragment["obs"].reshape(-1, 2))


def test_n_step_worked_example():
    """One env, gamma 0.5, n 3: a termination cuts the window and a truncation bootstraps from
    the true last observation, not the reset one."""
    fragment = {"obs": np.arange(5.0).reshape(5, 1), "next_obs": np.arange(1.0, 6.0).reshape(5, 1),
                "actions": np.zeros((5, 1)), "rewards": np.ones((5, 1)),
                "terminateds": np.array([[False], [True], [False], [False], [False]]),
                "truncateds": np.array([[False], [False], [False], [True], [False]])}
    out = n_step_transitions(fragment, 3, 0.5)
    np.testing.assert_allclose(out["rewards"], [1.5, 1.0, 1.5, 1.0, 1.0])
    np.testing.assert_array_equal(out["terminateds"], [True, True, False, False, False])
    np.testing.assert_allclose(out["discounts"], [0.25, 0.5, 0.25, 0.5, 0.5])
    np.testing.assert_array_equal(out["next_obs"], [2.0, 2.0, 4.0, 4.0, 5.0])


def test_n_step_rejects_bad_input():
    """A missing field, non-[T, N] arrays or a bad n_step give errors naming the problem."""
    fragment = {key: np.zeros((3, 2)) for key in FRAGMENT_FIELDS}
    with pytest.raises(ValueError, match="n_step"):
        n_step_transitions(fragment, 0, 0.9)
    with pytest.raises(ValueError, match="truncateds"):
        n_step_transitions({k: v for k, v in fragment.items() if k != "truncateds"}, 1, 0.9)
    with pytest.raises(ValueError, match="time-major"):
        n_step_transitions({**fragment, "rewards": np.zeros(3)}, 1, 0.9)


# ---------------------------------------------------------------------- the ring buffer
def transitions(start, count, obs_dim=4):
    values = np.arange(start, start + count)
    return {"obs": np.repeat(values[:, None], obs_dim, 1).astype(np.float32),
            "actions": values.astype(np.int64), "rewards": values.astype(np.float32)}


def test_buffer_memory_is_bounded_and_stated():
    """Adding ten times the capacity keeps len, nbytes and the arrays fixed; nbytes is exactly
    capacity times the bytes of one transition (plus its insertion id)."""
    buffer = ReplayBuffer(100, seed=0)
    buffer.add(transitions(0, 10))
    per_transition = 4 * 4 + 8 + 4 + 8
    assert buffer.nbytes == 100 * per_transition
    for start in range(10, 1000, 30):
        buffer.add(transitions(start, 30))
    assert len(buffer) == 100 and buffer.num_added == 1000
    assert buffer.nbytes == 100 * per_transition
    batch = buffer.sample(500)
    assert batch["actions"].min() >= buffer.num_added - 100
    np.testing.assert_array_equal(batch["ids"], batch["actions"])
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["rewards"])


def test_buffer_batch_larger_than_capacity_keeps_the_newest():
    """One add of more transitions than fit keeps only the newest `capacity` of them."""
    buffer = ReplayBuffer(8, seed=0)
    buffer.add(transitions(0, 20))
    assert sorted(buffer.sample(200)["actions"].tolist())[0] == 12
    assert set(buffer.sample(200)["actions"].tolist()) == set(range(12, 20))


def test_buffer_refuses_inconsistent_batches():
    """A batch with other fields, another shape, or ragged lengths is refused by name."""
    buffer = ReplayBuffer(8)
    buffer.add(transitions(0, 2))
    with pytest.raises(ValueError, match="obs"):
        buffer.add(transitions(0, 2, obs_dim=3))
    with pytest.raises(ValueError, match="fields"):
        buffer.add({"obs": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match="length"):
        buffer.add({**transitions(0, 2), "rewards": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4).sample(1)


@pytest.mark.parametrize("prioritized", [False, True])
def test_buffer_state_round_trip_samples_the_same(prioritized):
    """A buffer restored from get_state() draws the same batches as the original."""
    make = (lambda: PrioritizedReplayBuffer(50, alpha=0.7, seed=3)) if prioritized \
        else (lambda: ReplayBuffer(50, seed=3))
    original = make()
    original.add(transitions(0, 70))
    if prioritized:
        original.update_priorities(np.arange(30, 60), np.linspace(0.1, 5, 30))
    restored = make()
    restored.set_state(original.get_state())
    assert restored.nbytes == original.nbytes and len(restored) == len(original)
    for _ in range(3):
        a, b = original.sample(16), restored.sample(16)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


# ---------------------------------------------------------------------- prioritized replay
def test_prioritized_sampling_follows_priorities():
    """Transitions are drawn with probability p**alpha / sum p**alpha (a chi-square check over
    40,000 draws), and new transitions enter at the largest priority seen."""
    buffer = PrioritizedReplayBuffer(4, alpha=0.5, seed=1)
    buffer.add(transitions(0, 4))
    buffer.update_priorities(np.arange(4), [1.0, 4.0, 9.0, 16.0])
    counts = np.bincount(np.concatenate([buffer.sample(400)["actions"] for _ in range(100)]),
                         minlength=4)
    expected = np.array([1.0, 2.0, 3.0, 4.0]) / 10 * counts.sum()
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 16.3  # p = 0.001 at 3 degrees of freedom
    buffer.add(transitions(4, 1))  # overwrites slot 0 with the max priority, 16
    assert buffer._sums[0] == pytest.approx((16.0 + buffer.eps) ** 0.5)


def test_importance_weights():
    """w_i = (N P(i))**-beta normalised by the largest weight, i.e. (p_i / p_min)**(-alpha*beta):
    the rarest transition weighs 1."""
    buffer = PrioritizedReplayBuffer(3, alpha=1.0, eps=1e-12, seed=0)
    buffer.add(transitions(0, 3))
    buffer.update_priorities(np.arange(3), [1.0, 2.0, 4.0])
    batch = buffer.sample(300, beta=0.5)
    expected = {0: 1.0, 1: 2.0 ** -0.5, 2: 4.0 ** -0.5}
    for action, weight in zip(batch["actions"], batch["weights"]):
        assert weight == pytest.approx(expected[int(action)], rel=1e-6)


def test_priority_updates_for_overwritten_slots_are_dropped():
    """An update that arrives after its transition's slot was overwritten leaves the new
    transition's priority alone."""
    buffer = PrioritizedReplayBuffer(2, alpha=1.0, seed=0)
    buffer.add(transitions(0, 2))
    stale_ids = buffer.sample(2)["ids"]
    buffer.add(transitions(2, 2))  # both slots now hold newer transitions
    before = buffer._sums.leaves()
    buffer.update_priorities(stale_ids, [100.0, 100.0])
    np.testing.assert_array_equal(buffer._sums.leaves(), before)
    with pytest.raises(ValueError, match="finite"):
        buffer.update_priorities([2], [math.nan])


@pytest.mark.parametrize("prioritized", [False, True])
def test_sample_batches_stacks_independent_batches(prioritized):
    """sample_batches(K, B) gives every field as [K, B, ...] with its ids and weights, drawn by
    the same rule as sample (prioritized: each row stratified over the whole total)."""
    buffer = PrioritizedReplayBuffer(64, alpha=1.0, seed=0) if prioritized \
        else ReplayBuffer(64, seed=0)
    buffer.add(transitions(0, 64))
    if prioritized:  # all the mass on transitions 0..7: every row has one draw per eighth
        buffer.update_priorities(np.arange(64), np.where(np.arange(64) < 8, 1.0, 0.0))
    batch = buffer.sample_batches(5, 8)
    assert batch["obs"].shape == (5, 8, 4) and batch["weights"].shape == (5, 8)
    np.testing.assert_array_equal(batch["ids"], batch["actions"])
    if prioritized:
        np.testing.assert_array_equal(np.sort(batch["actions"], axis=1),
                                      np.tile(np.arange(8), (5, 1)))
    with pytest.raises(ValueError, match="num_batches"):
        buffer.sample_batches(0, 8)


def test_replay_actor_applies_priorities_before_the_draw_it_is_sent_with():
    """update_priorities_and_sample (a chunk's priorities riding on the request for a later
    chunk) applies the priorities first, then draws as sample_batches does."""
    actor = ReplayActor(capacity=64, prioritized=True, alpha=1.0, seed=0)
    actor.add_transitions(transitions(0, 64))
    mass_on_first_eight = np.where(np.arange(64) < 8, 1.0, 0.0)
    batch = actor.update_priorities_and_sample(np.arange(64), mass_on_first_eight, 5, 8)
    np.testing.assert_array_equal(np.sort(batch["actions"], axis=1), np.tile(np.arange(8), (5, 1)))
    assert actor.update_priorities_and_sample([0], [1.0], 2, 65) is None  # fewer than B stored


def test_prioritized_add_with_given_priorities():
    """Transitions added with priorities (Ape-X's runners compute them) enter at
    (priority + eps)**alpha, and the largest becomes the default for later adds."""
    buffer = PrioritizedReplayBuffer(8, alpha=0.5, eps=1e-6, seed=0)
    buffer.add(transitions(0, 3), priorities=[0.0, 4.0, 25.0])
    np.testing.assert_allclose(buffer._sums[np.arange(3)], np.sqrt([1e-6, 4 + 1e-6, 25 + 1e-6]))
    buffer.add(transitions(3, 1))
    assert buffer._sums[3] == pytest.approx(np.sqrt(25 + 1e-6))
    with pytest.raises(ValueError, match="priorities"):
        buffer.add(transitions(4, 2), priorities=[1.0])
    with pytest.raises(ValueError, match="priorities"):
        buffer.add(transitions(4, 1), priorities=[-1.0])


# ---------------------------------------------------------------------- the actor
def test_replay_actor_takes_fragments_by_ref(pa_module):
    """The replay actor resolves a fragment ref from the store, stores its n-step transitions,
    serves prioritized batches, takes priority updates and reports its byte size."""
    pa = pa_module
    actor = pa.remote(ReplayActor).remote(capacity=64, prioritized=True, n_step=3, gamma=0.9,
                                          seed=0)
    fragment = {"obs": np.zeros((8, 4, 3), np.float32), "next_obs": np.ones((8, 4, 3), np.float32),
                "actions": np.zeros((8, 4), np.int64), "rewards": np.ones((8, 4), np.float32),
                "terminateds": np.zeros((8, 4), bool), "truncateds": np.zeros((8, 4), bool)}
    assert pa.get(actor.sample.remote(8)) is None
    assert pa.get(actor.add_fragment.remote(pa.put(fragment))) == 32
    batch = pa.get(actor.sample.remote(8, 0.4))
    assert batch["obs"].shape == (8, 3) and batch["weights"].shape == (8,)
    assert all(np.isclose([1.0, 1.9, 2.71], value).any() for value in batch["rewards"])
    actor.update_priorities.remote(batch["ids"], np.full(8, 3.0))
    stats = pa.get(actor.stats.remote())
    assert stats["size"] == 32 and stats["num_added"] == 32
    assert stats["size_bytes"] == pa.get(actor.get_state.remote())["capacity"] * (
        2 * 3 * 4 + 8 + 4 + 1 + 4 + 8) + 2 * 2 * 64 * 8
    pa.kill(actor)
