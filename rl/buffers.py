"""Replay memory for off-policy algorithms (DQN): n-step transitions, uniform and prioritized
replay, and the actor that holds the memory between the env runners and the learner.

How data flows (the Ape-X layout on one host, Horgan et al. 2018):

    EnvRunner --fragment ref [T, N]--> ReplayActor.add_fragment   (n_step_transitions, then add)
    learner  <--batch (+ ids, weights)-- ReplayActor.sample          (one request kept in flight)
    learner  --ids, |TD error|-------> ReplayActor.update_priorities (fire and forget)

The memory is an actor so that adding fragments and drawing batches happen in its process while
the learner runs SGD in the driver; the fragment arrays travel through the object store by ref,
never through the driver.

Memory is bounded: `capacity` transitions, preallocated as one numpy array per field on the first
add, so `nbytes` is the buffer's whole footprint from then on (stated in the result as
`replay/size_bytes`). A transition stores its observation and its bootstrap observation (the one n
steps later), so an observation of D float32 numbers costs 8*D bytes of it.

Prioritized replay (Schaul et al. 2016) keeps p_i**alpha in a sum tree, to draw i with
probability P(i) = p_i**alpha / sum_k p_k**alpha, and in a min tree, for the largest importance
weight; both are updated and searched for a whole batch at once with numpy (one pass per tree
level, not one Python loop per index).
"""

from __future__ import annotations

import numpy as np

# The fields n_step_transitions makes from a fragment and the learner reads.
TRANSITION_FIELDS = ("obs", "actions", "rewards", "next_obs", "terminateds", "discounts")
FRAGMENT_FIELDS = ("obs", "actions", "rewards", "next_obs", "terminateds", "truncateds")


# ---------------------------------------------------------------------- segment trees
class SegmentTree:
    """A complete binary tree over `capacity` leaves where each inner node holds
    `combine(left, right)`. Node 1 is the root, node i has children 2i and 2i+1, and the leaves
    are nodes size..2*size-1 (size: capacity rounded up to a power of two; the padding leaves
    hold `neutral`). Inner nodes are recomputed from their children, never adjusted by deltas,
    so float sums do not drift however many updates there are."""

    def __init__(self, capacity: int, combine, neutral: float):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self._size = 1 << (capacity - 1).bit_length()
        self._depth = self._size.bit_length() - 1
        self._combine = combine
        self._tree = np.full(2 * self._size, neutral, dtype=np.float64)

    def update(self, indices, values) -> None:
        """Set leaves `indices` to `values` (the last value wins for a repeated index) and
        recompute their ancestors, one tree level per numpy pass."""
        indices = np.asarray(indices, dtype=np.int64).ravel()
        values = np.broadcast_to(np.asarray(values, dtype=np.float64).ravel(), indices.shape)
        if indices.size == 0:
            return
        if indices.min() < 0 or indices.max() >= self.capacity:
            raise IndexError(f"leaf index out of range [0, {self.capacity})")
        # numpy leaves the winner of a repeated fancy-index assignment unspecified: keep the last.
        last_first, where = np.unique(indices[::-1], return_index=True)
        nodes = last_first + self._size
        self._tree[nodes] = values[::-1][where]
        for _ in range(self._depth):
            # The parents of sorted distinct nodes are sorted: dropping repeats is one compare,
            # where np.unique would sort again (7x the time, most of a prioritized update's).
            nodes >>= 1
            if nodes.size > 1:
                nodes = nodes[np.concatenate(([True], nodes[1:] != nodes[:-1]))]
            left = nodes << 1
            self._tree[nodes] = self._combine(self._tree[left], self._tree[left + 1])

    def __getitem__(self, indices):
        return self._tree[np.asarray(indices, dtype=np.int64) + self._size]

    def reduce(self) -> float:
        """combine() over all leaves (the root)."""
        return float(self._tree[1])

    @property
    def nbytes(self) -> int:
        return self._tree.nbytes

    def leaves(self) -> np.ndarray:
        return self._tree[self._size:self._size + self.capacity].copy()


class SumTree(SegmentTree):
    """Sums of non-negative leaves, searchable by prefix sum."""

    def __init__(self, capacity: int):
        super().__init__(capacity, np.add, 0.0)

    def total(self) -> float:
        return self.reduce()

    def find_prefix_sum(self, prefixes) -> np.ndarray:
        """For each prefix s in [0, total()), the leaf i with sum(leaves[:i]) <= s <
        sum(leaves[:i+1]), found for all prefixes at once by walking down the levels.
        The walk never enters an empty subtree, so it always returns a positive leaf, even when
        rounding makes s reach the total."""
        remaining = np.array(prefixes, dtype=np.float64).ravel()
        nodes = np.ones(remaining.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * nodes
            left_sum = self._tree[left]
            go_right = (remaining >= left_sum) & (self._tree[left + 1] > 0)
            remaining = np.where(go_right, remaining - left_sum, remaining)
            nodes = np.where(go_right, left + 1, left)
        return nodes - self._size


class MinTree(SegmentTree):
    """Minimum over the leaves; empty leaves hold +inf."""

    def __init__(self, capacity: int):
        super().__init__(capacity, np.minimum, np.inf)

    def min(self) -> float:
        return self.reduce()


# ---------------------------------------------------------------------- n-step returns
def n_step_transitions(fragment, n_step: int, gamma: float) -> dict[str, np.ndarray]:
    """Turn a fragment of time-major [T, N] arrays into T*N n-step transitions (Sutton & Barto
    7.1; Hessel et al. 2018 use it in Rainbow):

        rewards[t]   = sum_{k<m} gamma**k r_{t+k}
        next_obs[t]  = the observation after step t+m-1 (the bootstrap state)
        discounts[t] = gamma**m
        terminateds  = whether the episode terminated within the m steps

    where m <= n_step stops early at the first step that terminated or truncated (an episode end
    is never summed across, and autoreset's next observation is never used as a bootstrap) or at
    the end of the fragment, where the window is cut to the steps it holds: a shorter return is
    still a valid target. A truncated window bootstraps from the true last observation, which
    `next_obs` holds under same-step autoreset. The target is then
    rewards + (1 - terminateds) * discounts * max_a Q(next_obs, a)."""
    if not isinstance(n_step, int) or n_step < 1:
        raise ValueError(f"n_step must be an int >= 1, got {n_step!r}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    missing = [key for key in FRAGMENT_FIELDS if key not in fragment]
    if missing:
        raise ValueError(f"the fragment lacks the field(s) {missing}")
    rewards = np.asarray(fragment["rewards"], dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"fragment arrays must be time-major [T, N]; rewards has shape "
                         f"{rewards.shape}")
    horizon, num_envs = rewards.shape
    terminateds = np.asarray(fragment["terminateds"], dtype=bool)
    ends = terminateds | np.asarray(fragment["truncateds"], dtype=bool)

    start = np.arange(horizon)[:, None]
    returns = np.zeros((horizon, num_envs))
    discounts = np.ones((horizon, num_envs))
    last = np.broadcast_to(start, (horizon, num_envs)).copy()
    terminated = np.zeros((horizon, num_envs), dtype=bool)
    open_window = np.ones((horizon, num_envs), dtype=bool)
    for k in range(n_step):
        step = start + k
        inside = step < horizon
        step = np.minimum(step, horizon - 1)
        adds = open_window & inside
        returns += np.where(adds, discounts * rewards[step, np.arange(num_envs)], 0.0)
        discounts = np.where(adds, discounts * gamma, discounts)
        last = np.where(adds, step, last)
        terminated |= adds & terminateds[step, np.arange(num_envs)]
        open_window = adds & ~ends[step, np.arange(num_envs)]

    next_obs = np.asarray(fragment["next_obs"])[last, np.arange(num_envs)]
    return {
        "obs": _flatten(np.asarray(fragment["obs"])),
        "actions": _flatten(np.asarray(fragment["actions"])),
        "rewards": returns.astype(np.float32).reshape(-1),
        "next_obs": _flatten(next_obs),
        "terminateds": terminated.reshape(-1),
        "discounts": discounts.astype(np.float32).reshape(-1),
    }


def _flatten(array: np.ndarray) -> np.ndarray:
    return array.reshape((-1,) + array.shape[2:])


# ---------------------------------------------------------------------- buffers
class ReplayBuffer:
    """A ring buffer of `capacity` transitions with uniform sampling.

    Each field is one preallocated array [capacity, ...], made on the first `add` from that
    batch's shapes and dtypes; a later batch with other fields, shapes or dtypes is refused.
    Every stored transition carries its insertion id (0, 1, 2, ... over the buffer's life), which
    `sample` returns as `ids`: an id whose slot has since been overwritten is recognised."""

    def __init__(self, capacity: int, seed: int | None = None):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive int (transitions), got {capacity!r}")
        self.capacity = capacity
        self._rng = np.random.default_rng(seed)
        self._storage: dict[str, np.ndarray] = {}
        self._ids = np.full(capacity, -1, dtype=np.int64)
        self._num_added = 0

    def __len__(self) -> int:
        return min(self._num_added, self.capacity)

    @property
    def num_added(self) -> int:
        return self._num_added

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays: from the first add on, its whole footprint at
        capacity (the fields are allocated then, for all `capacity` transitions)."""
        return self._ids.nbytes + sum(array.nbytes for array in self._storage.values())

    def add(self, batch: dict[str, np.ndarray], priorities=None) -> np.ndarray:
        """Append a batch of transitions (every field shaped [B, ...]); returns their slots.
        `priorities` (prioritized replay only) are ignored here."""
        count = self._check_batch(batch)
        if count == 0:
            return np.empty(0, dtype=np.int64)
        if not self._storage:
            self._allocate(batch)
        ids = np.arange(self._num_added, self._num_added + count, dtype=np.int64)
        if count > self.capacity:  # only the newest `capacity` survive; write just those
            ids = ids[-self.capacity:]
            batch = {key: value[-self.capacity:] for key, value in batch.items()}
        slots = ids % self.capacity
        for key, array in self._storage.items():
            array[slots] = batch[key]
        self._ids[slots] = ids
        self._num_added += count
        return slots

    def sample(self, batch_size: int, beta: float = 0.0) -> dict[str, np.ndarray]:
        """batch_size transitions drawn uniformly with replacement, with their `ids` and
        importance `weights` (all ones here; `beta` matters only for prioritized replay)."""
        slots = self._draw_slots(batch_size)
        return self._gather(slots, np.ones(len(slots), dtype=np.float32))

    def sample_batches(self, num_batches: int, batch_size: int,
                       beta: float = 0.0) -> dict[str, np.ndarray]:
        """num_batches batches drawn at once, stacked: every field shaped [num_batches,
        batch_size, ...]. The same draws as num_batches calls of `sample` with no priority update
        between them, in one numpy pass (one actor round trip for a learner's next K updates)."""
        _check_num_batches(num_batches)
        slots = self._draw_slots(batch_size * num_batches).reshape(num_batches, batch_size)
        return self._gather(slots, np.ones(slots.shape, dtype=np.float32))

    def update_priorities(self, ids, priorities) -> None:
        """Uniform replay has no priorities; accepted so a learner can treat both alike."""

    def _draw_slots(self, batch_size: int) -> np.ndarray:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self._rng.integers(0, len(self), size=batch_size)

    def _gather(self, slots: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        batch = {key: array[slots] for key, array in self._storage.items()}
        batch["ids"] = self._ids[slots]
        batch["weights"] = weights
        return batch

    def _check_batch(self, batch) -> int:
        if not isinstance(batch, dict) or not batch:
            raise TypeError("add() takes a non-empty dict of arrays shaped [B, ...]")
        sizes = {key: len(value) for key, value in batch.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the fields of a batch differ in length: {sizes}")
        if self._storage:
            if set(batch) != set(self._storage):
                raise ValueError(f"batch fields {sorted(batch)} differ from the buffer's "
                                 f"{sorted(self._storage)}")
            for key, array in self._storage.items():
                value = np.asarray(batch[key])
                if value.shape[1:] != array.shape[1:] or not np.can_cast(value.dtype, array.dtype,
                                                                         "same_kind"):
                    raise ValueError(f"field {key!r}: got {value.dtype}{list(value.shape[1:])}, "
                                     f"the buffer holds {array.dtype}{list(array.shape[1:])}")
        return next(iter(sizes.values()))

    def _allocate(self, batch) -> None:
        for key, value in batch.items():
            value = np.asarray(value)
            self._storage[key] = np.zeros((self.capacity,) + value.shape[1:], dtype=value.dtype)

    # Checkpoints: only the filled part of the ring is saved.
    def get_state(self) -> dict:
        filled = len(self)
        return {"capacity": self.capacity, "num_added": self._num_added,
                "rng": self._rng.bit_generator.state, "ids": self._ids[:filled].copy(),
                "storage": {key: array[:filled].copy() for key, array in self._storage.items()}}

    def set_state(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"the saved replay buffer has capacity {state['capacity']}, "
                             f"this one {self.capacity}")
        self._storage = {}
        self._ids = np.full(self.capacity, -1, dtype=np.int64)
        if state["storage"]:
            filled = len(state["ids"])
            self._allocate(state["storage"])
            for key, array in state["storage"].items():
                self._storage[key][:filled] = array
            self._ids[:filled] = state["ids"]
        self._num_added = state["num_added"]
        self._rng.bit_generator.state = state["rng"]


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016, section 3.3):

        P(i) = p_i**alpha / sum_k p_k**alpha,    p_i = |delta_i| + eps
        w_i  = (N * P(i))**-beta / max_j w_j  =  (p_i**alpha / min_k p_k**alpha)**-beta

    A new transition gets the largest priority seen so far, so it is replayed at least once soon.
    A batch is drawn stratified: one prefix sum uniform in each of batch_size equal segments of
    the total."""

    def __init__(self, capacity: int, alpha: float = 0.6, eps: float = 1e-6,
                 seed: int | None = None):
        super().__init__(capacity, seed)
        if not 0.0 <= alpha:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.alpha = alpha
        self.eps = eps
        self._sums = SumTree(capacity)
        self._mins = MinTree(capacity)
        self._max_priority = 1.0

    @property
    def nbytes(self) -> int:
        return super().nbytes + self._sums.nbytes + self._mins.nbytes

    def add(self, batch, priorities=None):
        """Append transitions with the largest priority seen so far, or with `priorities`
        (|TD error| per transition, as Ape-X's actors compute them; eps is added here)."""
        count = len(next(iter(batch.values()))) if isinstance(batch, dict) and batch else 0
        if priorities is not None:
            priorities = np.asarray(priorities, dtype=np.float64).ravel()
            if priorities.shape != (count,) or not np.all(np.isfinite(priorities)) \
                    or np.any(priorities < 0):
                raise ValueError(f"priorities must be {count} finite values >= 0, one per "
                                 f"transition")
        slots = super().add(batch)
        if priorities is None:
            priorities = np.full(len(slots), self._max_priority)
        else:
            priorities = priorities[len(priorities) - len(slots):] + self.eps
            self._max_priority = max(self._max_priority, float(priorities.max(initial=0.0)))
        self._set_priorities(slots, priorities)
        return slots

    def sample(self, batch_size: int, beta: float = 0.4):
        batch = self.sample_batches(1, batch_size, beta)
        return {key: value[0] for key, value in batch.items()}

    def sample_batches(self, num_batches: int, batch_size: int, beta: float = 0.4):
        """num_batches stratified batches stacked [num_batches, batch_size, ...], all found in
        one walk down the sum tree."""
        if not beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        _check_num_batches(num_batches)
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        total = self._sums.total()
        prefixes = (np.arange(batch_size) + self._rng.random((num_batches, batch_size))) \
            * (total / batch_size)
        slots = self._sums.find_prefix_sum(prefixes).reshape(num_batches, batch_size)
        scaled = self._sums[slots]  # p_i ** alpha
        weights = (scaled / self._mins.min()) ** -beta
        return self._gather(slots, weights.astype(np.float32))

    def update_priorities(self, ids, priorities) -> None:
        """Set p_i = priorities + eps for the transitions `ids` (as `sample` returned them);
        ids whose slot was overwritten since they were sampled are skipped."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        priorities = np.asarray(priorities, dtype=np.float64).ravel()
        if ids.shape != priorities.shape:
            raise ValueError(f"{ids.size} ids but {priorities.size} priorities")
        if not np.all(np.isfinite(priorities)) or np.any(priorities < 0):
            raise ValueError("priorities must be finite and >= 0")
        slots = ids % self.capacity
        current = (ids >= 0) & (self._ids[slots] == ids)
        priorities = priorities[current] + self.eps
        if priorities.size:
            self._max_priority = max(self._max_priority, float(priorities.max()))
            self._set_priorities(slots[current], priorities)

    def _set_priorities(self, slots, priorities) -> None:
        scaled = priorities ** self.alpha
        self._sums.update(slots, scaled)
        self._mins.update(slots, scaled)

    def get_state(self) -> dict:
        state = super().get_state()
        state["priorities"] = self._sums.leaves()[:len(self)]
        state["max_priority"] = self._max_priority
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._sums = SumTree(self.capacity)
        self._mins = MinTree(self.capacity)
        filled = np.arange(len(state["priorities"]))
        self._sums.update(filled, state["priorities"])
        self._mins.update(filled, state["priorities"])
        self._max_priority = state["max_priority"]


def _check_num_batches(num_batches) -> None:
    if not isinstance(num_batches, int) or isinstance(num_batches, bool) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")


def make_replay_buffer(capacity: int, prioritized: bool, alpha: float = 0.6,
                       seed: int | None = None) -> ReplayBuffer:
    if prioritized:
        return PrioritizedReplayBuffer(capacity, alpha=alpha, seed=seed)
    return ReplayBuffer(capacity, seed=seed)


# ---------------------------------------------------------------------- the actor
class ReplayActor:
    """The replay memory in its own process (wrap with pa.remote). Fragments arrive by ref from
    the env runners (resolved from the object store without a copy) and become n-step
    transitions here, so neither the driver nor the learner spends time on them."""

    def __init__(self, capacity: int, prioritized: bool = False, alpha: float = 0.6,
                 n_step: int = 1, gamma: float = 0.99, seed: int | None = None):
        n_step_transitions({key: np.zeros((1, 1)) for key in FRAGMENT_FIELDS}, n_step, gamma)
        self.buffer = make_replay_buffer(capacity, prioritized, alpha, seed)
        self.n_step = n_step
        self.gamma = gamma

    def add_fragment(self, fragment) -> int:
        """Add a fragment's transitions; returns the number of transitions now stored. A fragment
        whose runner already made its n-step `transitions` (and their initial `priorities`,
        Ape-X) is stored as it is."""
        if "transitions" in fragment:
            self.buffer.add(fragment["transitions"], fragment.get("priorities"))
        else:
            self.buffer.add(n_step_transitions(fragment, self.n_step, self.gamma))
        return len(self.buffer)

    def add_transitions(self, batch) -> int:
        self.buffer.add(batch)
        return len(self.buffer)

    def sample(self, batch_size: int, beta: float = 0.0) -> dict | None:
        """A batch, or None while the buffer holds fewer than batch_size transitions."""
        if len(self.buffer) < batch_size:
            return None
        return self.buffer.sample(batch_size, beta)

    def sample_batches(self, num_batches: int, batch_size: int, beta: float = 0.0) -> dict | None:
        """num_batches batches stacked [num_batches, batch_size, ...] (see the buffer's
        sample_batches), or None while fewer than batch_size transitions are stored."""
        if len(self.buffer) < batch_size:
            return None
        return self.buffer.sample_batches(num_batches, batch_size, beta)

    def update_priorities(self, ids, priorities) -> None:
        self.buffer.update_priorities(ids, priorities)

    def update_priorities_and_sample(self, ids, priorities, num_batches: int, batch_size: int,
                                     beta: float = 0.0) -> dict | None:
        """update_priorities then sample_batches, in one call: a learner sends a chunk's
        priorities with its request for a later chunk (one message per chunk, not two)."""
        self.buffer.update_priorities(ids, priorities)
        return self.sample_batches(num_batches, batch_size, beta)

    def stats(self) -> dict:
        return {"size": len(self.buffer), "capacity": self.buffer.capacity,
                "num_added": self.buffer.num_added, "size_bytes": self.buffer.nbytes}

    def get_state(self) -> dict:
        return self.buffer.get_state()

    def set_state(self, state: dict) -> None:
        self.buffer.set_state(state)
