"""Replay memory sharded over several ReplayActor processes (Ape-X, Horgan et al. 2018, section 3:
"the replay memory ... can be sharded"), so adding fragments and drawing batches spread over
processes instead of queueing on one.

    runner i's k-th fragment (ref) --shard_for(i, k)--> shard s: ReplayActor.add_fragment
    learner's j-th chunk of batches <---------------- shard j mod S: sample_batches
    the chunk's ids, |TD error| -----------------------> the same shard: update_priorities

Routing is a pure function of (runner index, that runner's fragment count): each runner's
fragments go round the shards in turn, offset by its index, so the shards fill evenly, every
shard holds every runner's (every epsilon's) experience, and in one round the runners write to
different shards. Transition ids are per shard, so a chunk's priorities must go back to the shard
it came from; `sample_batches` returns the shard with the ref.

Each shard holds capacity / num_shards transitions (the total stated by `stats`), and with
prioritized replay draws in proportion to its own priorities: the learner takes chunks from the
shards in turn, which matches one big buffer when the shards are alike (routing keeps them so).
"""

from __future__ import annotations

import pyactor as pa
from pyactor.rl.buffers import ReplayActor


def shard_for(runner_index: int, fragment_index: int, num_shards: int) -> int:
    """The shard that receives runner `runner_index`'s `fragment_index`-th fragment."""
    return (runner_index + fragment_index) % num_shards


class ShardedReplay:
    """`num_shards` ReplayActor processes behind one interface (wrap nothing: this object lives in
    the driver and only forwards refs)."""

    def __init__(self, num_shards: int, capacity: int, prioritized: bool, alpha: float,
                 n_step: int, gamma: float, seed: int | None):
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
        if capacity < num_shards:
            raise ValueError(f"replay capacity {capacity} is less than one transition per shard "
                             f"({num_shards} shards)")
        self.num_shards = num_shards
        self.shard_capacity = capacity // num_shards
        actor_class = pa.remote(ReplayActor).options(num_cpus=0)
        self.shards = []
        try:
            for s in range(num_shards):
                shard_seed = None if seed is None else seed + 7_919 * (s + 1)
                self.shards.append(actor_class.remote(self.shard_capacity, prioritized, alpha,
                                                      n_step, gamma, shard_seed))
        except BaseException:
            self.stop()
            raise
        self._fragments_of: dict[int, int] = {}  # runner index -> fragments routed so far
        self._routed = [0] * num_shards  # transitions sent to each shard so far
        self._next_chunk = 0

    def add_fragment(self, fragment_or_ref, runner_index: int, num_transitions: int) -> int:
        """Route one fragment of num_transitions transitions (preferably its ref: the shard reads
        it from the store); returns the shard chosen."""
        count = self._fragments_of.get(runner_index, 0)
        self._fragments_of[runner_index] = count + 1
        shard = shard_for(runner_index, count, self.num_shards)
        self.shards[shard].add_fragment.remote(fragment_or_ref)
        self._routed[shard] += num_transitions
        return shard

    def smallest_shard_size(self) -> int:
        """Transitions held by the emptiest shard once what was routed has arrived (known here
        without asking: a batch may be requested from every shard once this is >= its size)."""
        return min(min(routed, self.shard_capacity) for routed in self._routed)

    def sample_batches(self, num_batches: int, batch_size: int, beta: float,
                       priorities: tuple | None = None):
        """(shard, ref of num_batches stacked batches) from the next shard in turn.
        `priorities`: (shard, ids, priorities) of an earlier chunk, applied first; on the same
        message when that chunk came from the same shard."""
        shard = self._next_chunk % self.num_shards
        self._next_chunk += 1
        if priorities is None:
            return shard, self.shards[shard].sample_batches.remote(num_batches, batch_size, beta)
        if priorities[0] != shard:
            self.update_priorities(*priorities)
            return shard, self.shards[shard].sample_batches.remote(num_batches, batch_size, beta)
        return shard, self.shards[shard].update_priorities_and_sample.remote(
            priorities[1], priorities[2], num_batches, batch_size, beta)

    def update_priorities(self, shard: int, ids, priorities) -> None:
        self.shards[shard].update_priorities.remote(ids, priorities)

    async def stats(self) -> dict:
        """Sizes summed over the shards (transitions stored, bytes held)."""
        per_shard = [await shard.stats.remote() for shard in self.shards]
        return {"size": sum(s["size"] for s in per_shard),
                "size_bytes": sum(s["size_bytes"] for s in per_shard),
                "sizes": [s["size"] for s in per_shard]}

    # Checkpoints: every shard's state and the routing counters.
    def get_state(self) -> dict:
        return {"shards": pa.get([shard.get_state.remote() for shard in self.shards]),
                "fragments_of": dict(self._fragments_of), "next_chunk": self._next_chunk,
                "routed": list(self._routed)}

    def set_state(self, state: dict) -> None:
        if "shards" not in state:  # a one-buffer state, as DQN checkpoints held before shards
            state = {"shards": [state], "fragments_of": {}, "next_chunk": 0,
                     "routed": [state["num_added"]]}
        if len(state["shards"]) != self.num_shards:
            raise ValueError(f"the checkpoint has {len(state['shards'])} replay shards, this "
                             f"config {self.num_shards}")
        pa.get([shard.set_state.remote(s) for shard, s in zip(self.shards, state["shards"])])
        self._fragments_of = dict(state["fragments_of"])
        self._next_chunk = state["next_chunk"]
        self._routed = list(state["routed"])

    def stop(self) -> None:
        for shard in self.shards:
            try:
                pa.kill(shard, no_restart=True)
            except Exception:  # already gone
                pass
        self.shards = []
