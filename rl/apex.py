"""Ape-X DQN: distributed prioritized experience replay (Horgan et al. 2018, ICLR, "Distributed
Prioritized Experience Replay"), on DQN's learner and loss (rl/dqn.py).

What Ape-X changes against DQN, each piece here or in a shared module:
- **Many runners, each with its own fixed epsilon** (section 4.1):
      eps_i = eps ** (1 + i / (N - 1) * alpha),   eps = 0.4, alpha = 7, i = 0 .. N-1
  so runner 0 explores a lot and the last almost not at all; together they cover both.
- **Priorities computed by the runners** (algorithm 1, actor lines 7-10): a runner turns its own
  fragment into n-step transitions and their |TD error| under its local copy of Q, so a new
  transition enters the replay with an informed priority instead of the largest seen so far.
- **Replay sharded over several actors** (rl/sharded_replay.py): fragments are routed to the
  shards in turn, and the learner draws its batches from the shards in turn, sending each chunk's
  new priorities back to the shard it came from.
- **Weights broadcast periodically**: the runners get new weights once every
  `weights_broadcast_interval` learner updates, not after every iteration (the paper's actors
  copy the parameters every 400 frames).

    ApexEnvRunner i (eps_i)      --fragment ref: transitions + priorities-->  ShardedReplay
        ^                                                                      shard (i + k) mod S
        | weights ref, every weights_broadcast_interval updates                    |
        +--- driver: DQNLearner.update on chunks from shard j mod S <-------------+
                     ids, |TD error| --------------------------------------------> shard j mod S

One iteration is DQN's (DQN.training_step): a fragment from every runner into the shards, then
replay_ratio updates per env step sampled; only the epsilons, the priorities' origin, the shards
and the broadcast period differ.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pyactor.rl.buffers import FRAGMENT_FIELDS, n_step_transitions
from pyactor.rl.dqn import DQN, DQNConfig, q_targets
from pyactor.rl.rollout import EnvRunner


@dataclasses.dataclass(frozen=True)
class ApexDQNConfig(DQNConfig):
    num_env_runners: int = 2
    num_envs_per_runner: int = 8
    rollout_fragment_length: int = 16
    num_replay_shards: int = 2
    apex_epsilon: float = 0.4  # eps of the formula above (the paper's value)
    apex_epsilon_alpha: float = 7.0  # alpha of the formula above (the paper's value)
    weights_broadcast_interval: int = 32  # learner updates between weight broadcasts
    prioritized_replay: bool = True  # the point of Ape-X (DQN defaults to uniform replay)

    algo_name = "APEX"

    def validate(self) -> None:
        super().validate()
        if self.num_replay_shards < 1:
            raise ValueError(f"num_replay_shards must be >= 1, got {self.num_replay_shards}")
        if not 0.0 <= self.apex_epsilon <= 1.0:
            raise ValueError(f"apex_epsilon must be in [0, 1], got {self.apex_epsilon}")
        if self.apex_epsilon_alpha < 0:
            raise ValueError(f"apex_epsilon_alpha must be >= 0, got {self.apex_epsilon_alpha}")
        if self.weights_broadcast_interval < 1:
            raise ValueError(f"weights_broadcast_interval must be >= 1, got "
                             f"{self.weights_broadcast_interval}")

    @classmethod
    def algorithm_class(cls):
        return ApexDQN


def runner_epsilons(num_runners: int, epsilon: float = 0.4, alpha: float = 7.0) -> list[float]:
    """eps_i = eps ** (1 + i / (N - 1) * alpha) for i = 0 .. N-1 (Horgan et al. 2018, section
    4.1); a single runner gets eps itself."""
    if num_runners < 1:
        raise ValueError(f"num_runners must be >= 1, got {num_runners}")
    if num_runners == 1:
        return [float(epsilon)]
    return [float(epsilon ** (1 + i / (num_runners - 1) * alpha)) for i in range(num_runners)]


class ApexEnvRunner(EnvRunner):
    """An env runner with its own epsilon that hands in n-step transitions with their initial
    priorities instead of raw [T, N] arrays (the replay shard stores them as they are)."""

    def __init__(self, *args, epsilons: list[float], n_step: int, gamma: float, **kw):
        super().__init__(*args, **kw)
        self.epsilon = float(epsilons[self.runner_index])
        self.n_step = n_step
        self.gamma = gamma

    def sample(self, num_steps: int, explore: bool = True, **explore_kw) -> dict:
        fragment = super().sample(num_steps, explore, epsilon=self.epsilon)
        transitions = n_step_transitions(fragment, self.n_step, self.gamma)
        fragment["priorities"] = self.td_errors(transitions)
        fragment["transitions"] = transitions
        fragment["epsilon"] = self.epsilon
        for key in FRAGMENT_FIELDS:  # the transitions hold them; half the bytes to the store
            fragment.pop(key, None)
        return fragment

    def td_errors(self, transitions: dict) -> np.ndarray:
        """|y - Q(s, a)| under this runner's copy of Q (Horgan et al. 2018, algorithm 1, actor
        line 8), with the n-step target of DQN: y = r + gamma^m (1 - done) max_a' Q(s', a').
        The runner has no target network, so its own Q bootstraps (the paper does the same)."""
        with torch.inference_mode():
            q = self.module.q_values(torch.from_numpy(transitions["obs"]))
            next_q = self.module.q_values(torch.from_numpy(transitions["next_obs"]))
            actions = torch.from_numpy(transitions["actions"]).long()
            q_taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            targets = q_targets(torch.from_numpy(transitions["rewards"]),
                                torch.from_numpy(transitions["terminateds"]).float(),
                                torch.from_numpy(transitions["discounts"]), next_q, None)
            return (targets - q_taken).abs().numpy()


class ApexDQN(DQN):
    config_class = ApexDQNConfig
    env_runner_class = ApexEnvRunner

    def __init__(self, config: ApexDQNConfig):
        if not isinstance(config, ApexDQNConfig):
            raise TypeError(f"ApexDQN needs an ApexDQNConfig, got {type(config).__name__}")
        self._updates_since_broadcast = 0
        super().__init__(config)

    def num_replay_shards(self) -> int:
        return self.config.num_replay_shards

    def epsilons(self) -> list[float]:
        c = self.config
        # num_env_runners=0: one runner in the driver (as `pyactor rl evaluate` builds it).
        return runner_epsilons(max(c.num_env_runners, 1), c.apex_epsilon, c.apex_epsilon_alpha)

    def env_runner_kwargs(self) -> dict:
        c = self.config
        return {"epsilons": self.epsilons(), "n_step": c.n_step, "gamma": c.gamma}

    def exploration_kwargs(self) -> dict:
        return {}  # each runner uses its own fixed epsilon

    async def training_step(self) -> dict:
        metrics = await super().training_step()
        epsilons = self.epsilons()
        metrics.update(epsilon_min=min(epsilons), epsilon_max=max(epsilons))
        return metrics

    def after_updates(self, num_updates: int) -> None:
        self._updates_since_broadcast += num_updates
        if self._updates_since_broadcast >= self.config.weights_broadcast_interval:
            self._updates_since_broadcast = 0
            self.sync_weights()

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(),
                "updates_since_broadcast": self._updates_since_broadcast}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self._updates_since_broadcast = state["updates_since_broadcast"]
