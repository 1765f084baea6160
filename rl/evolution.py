"""The population-of-perturbations pipeline shared by ES (Salimans et al. 2017) and ARS (Mania et
al. 2018): the policy's parameters theta are perturbed by rows of one Gaussian noise table, worker
actors run an episode per perturbation, and only noise indices and returns come back.

    driver (EvolutionAlgorithm)                      EvolutionWorker actor i (one process each)
      noise table: pa.put once ----------------------> constructor gets the ref: read in place,
                                                      never copied (every worker and the driver
                                                      read the same shared-memory pages)
      sync_weights: pa.put(theta flat, obs stats) ---> set_weights(ref, version, stats)
      sample(num_pairs, noise_stdev) ----------------> draw noise indices k, run the 2 episodes of
                                                      theta + sigma eps_k and theta - sigma eps_k
                                                      (antithetic pairs), one perturbation per
                                                      copy of a vector env, batched numpy policy
      <-- {noise_indices [P], pair_returns [P, 2], pair_lengths [P, 2], env_steps, episodes,
           obs_stats}: no parameter vector travels back
      eps_k = table[k : k + dim] rebuilt by the driver; the algorithm file turns the returns into
      an update of theta (ES: centered ranks + Adam; ARS: top-b directions + SGD).

The workers (rl/population_worker.py) import no torch; the driver describes its policy to them as
a BatchedPolicy. The worker group is an EnvRunnerGroup (same weights broadcast, restart and collect), so the
Algorithm base's sample() counts env steps, episodes and observation statistics for it.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from torch import nn

import pyactor as pa
from pyactor.rl import envs as rl_envs
from pyactor.rl.algorithm import Algorithm
from pyactor.rl.config import AlgorithmConfig
from pyactor.rl.learner import Learner
from pyactor.rl.module import RLModule, mlp
from pyactor.rl.population_worker import BatchedPolicy, EvolutionWorker, noise_rows
from pyactor.rl.rollout import EnvRunnerGroup

__all__ = ["BatchedPolicy", "DeterministicPolicy", "EvolutionAlgorithm", "EvolutionConfig",
           "EvolutionWorker", "EvolutionWorkerGroup", "centered_ranks", "make_noise_table",
           "noise_rows"]

# ------------------------------------------------------------------------------- noise table


def make_noise_table(size: int, seed: int) -> np.ndarray:
    """`size` float32 draws of N(0, 1): perturbation k of a d-parameter policy is
    table[k : k + d] (Salimans et al. 2017, sec. 2.1: 'a large block of Gaussian noise')."""
    return np.random.default_rng(seed).standard_normal(size, dtype=np.float32)


def centered_ranks(returns: np.ndarray) -> np.ndarray:
    """Fitness shaping (Salimans et al. 2017, sec. 2.1, after Wierstra et al. 2014): each return
    replaced by its rank over the whole population, scaled to [-0.5, 0.5]; same shape as input."""
    flat = np.asarray(returns, np.float64).ravel()
    ranks = np.empty(flat.size, np.float64)
    ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    if flat.size > 1:
        ranks = ranks / (flat.size - 1) - 0.5
    else:
        ranks[:] = 0.0
    return ranks.reshape(np.shape(returns))


# ------------------------------------------------------------------------------- the policy


class DeterministicPolicy(RLModule):
    """obs -> MLP (hidden [] is a linear policy, ARS's choice) -> argmax for discrete actions, the
    output clipped to the bounds for Box actions. Exploration happens in parameter space, so
    forward_exploration is the greedy action too. The last layer starts at zero (a constant
    policy: every direction the perturbations find is the population's own)."""

    def __init__(self, observation_space, action_space, model_config=None):
        super().__init__(observation_space, action_space, model_config)
        n_obs = int(np.prod(observation_space.shape))
        self.discrete = hasattr(action_space, "n")
        n_out = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.net = mlp([n_obs, *self.model_config["hidden"], n_out],
                       self.model_config["activation"], out_gain=0.0)
        self.activation = self.model_config["activation"]
        if not self.discrete:
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))

    def forward_inference(self, obs):
        out = self.net(obs.reshape(obs.shape[0], -1))
        actions = out.argmax(-1) if self.discrete else torch.max(torch.min(out, self.high), self.low)
        return {"actions": actions}

    def forward_exploration(self, obs, generator=None, **explore_kw):
        return self.forward_inference(obs)

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of each linear layer, in the order of the flat weights vector."""
        return [(m.out_features, m.in_features) for m in self.net if isinstance(m, nn.Linear)]

    def batched(self) -> BatchedPolicy:
        """This policy's forward pass for a worker: numpy, many parameter vectors at once."""
        bounds = (None, None) if self.discrete else (self.action_space.low,
                                                     self.action_space.high)
        return BatchedPolicy(self.layer_shapes(), self.activation, self.discrete, *bounds)


# ------------------------------------------------------------------------------- the workers


class EvolutionWorkerGroup(EnvRunnerGroup):
    """EnvRunnerGroup's weights broadcast, restarts and collect, with EvolutionWorker actors;
    `request(num_pairs, noise_stdev=...)` gives every worker its share of the population."""

    def __init__(self, *, env, env_config, num_workers, num_envs_per_worker, policy, seed,
                 normalize_observations, noise_ref, num_cpus_per_worker=1.0,
                 custom_resources_per_worker=None, max_worker_restarts=-1):
        self.num_restarts = 0
        self.max_restarts = max_worker_restarts
        self._restarts_of = [0] * num_workers
        self._deaths_in_a_row = [0] * num_workers
        self._pending = []
        self._weights = None
        env = rl_envs.portable(env)
        args = (env, env_config, num_envs_per_worker, policy, seed)
        if num_workers == 0:  # in the driver (e.g. restored only to evaluate)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.local = EvolutionWorker(*args, 0, normalize_observations, pa.get(noise_ref))
            self.runners = []
            return
        self.local = None
        actor_class = pa.remote(EvolutionWorker).options(
            num_cpus=num_cpus_per_worker, resources=dict(custom_resources_per_worker or {}),
            max_restarts=max_worker_restarts, max_task_retries=0)
        # The noise ref as a top-level argument: each worker maps the stored table, no copy.
        self.runners = [actor_class.remote(*args, i, normalize_observations, noise_ref)
                        for i in range(num_workers)]


# ------------------------------------------------------------------------------- config + driver


@dataclasses.dataclass(frozen=True)
class EvolutionConfig(AlgorithmConfig):
    """Fields shared by ES and ARS. num_env_runners is the number of worker actors (0: one worker
    in the driver); num_envs_per_runner the episodes a worker runs at once (one perturbation per
    env copy)."""
    num_env_runners: int = 2
    num_envs_per_runner: int = 16
    async_sampling: bool = False  # an update needs the returns around the current theta
    num_perturbations: int = 16   # antithetic pairs per iteration, split over the workers
    noise_stdev: float = 0.02
    noise_table_size: int = 2 ** 20  # 4 MiB of float32: a million offsets for a policy's noise
    noise_table_seed: int = 0
    model: dict = dataclasses.field(default_factory=lambda: {"hidden": [], "activation": "tanh"})

    def validate(self) -> None:
        super().validate()
        if self.num_perturbations < max(self.num_env_runners, 1):
            raise ValueError(f"num_perturbations ({self.num_perturbations}) must be >= "
                             f"num_env_runners ({self.num_env_runners}): each worker needs a pair")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.noise_stdev <= 0:
            raise ValueError(f"noise_stdev must be > 0, got {self.noise_stdev}")
        if self.noise_table_size < 1:
            raise ValueError(f"noise_table_size must be >= 1, got {self.noise_table_size}")


class FlatParameterLearner(Learner):
    """Holds theta (the module's weights) for the driver; the algorithm file applies its update
    rule to the flat vector with `step(direction)` (Adam via the optimiser) or `add(delta)`."""

    def step(self, ascent_direction: np.ndarray, lr: float) -> None:
        """One optimiser step that follows `ascent_direction` (the optimiser minimises)."""
        self.set_lr(lr)
        offset = 0
        for parameter in self.module.parameters():
            size = parameter.numel()
            chunk = -torch.as_tensor(ascent_direction[offset:offset + size], dtype=torch.float32)
            parameter.grad = chunk.view_as(parameter).to(self.device)
            offset += size
        self.optimizer.step()
        self.num_updates += 1

    def add(self, delta: np.ndarray) -> None:
        self.module.set_flat_weights(self.module.get_flat_weights() + delta.astype(np.float32))
        self.num_updates += 1


class EvolutionAlgorithm(Algorithm):
    """The driver side shared by ES and ARS: the noise table, the worker group, and one
    population evaluated per iteration."""

    module_class = DeterministicPolicy
    learner_class = FlatParameterLearner

    def make_env_runner_group(self) -> EvolutionWorkerGroup:
        c = self.config
        policy = self.module_spec.build().batched()
        dim = policy.dim
        if c.noise_table_size < dim:
            raise ValueError(f"noise_table_size ({c.noise_table_size}) must be >= the policy's "
                             f"{dim} parameters")
        self.noise_ref = pa.put(make_noise_table(c.noise_table_size, c.noise_table_seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.noise = pa.get(self.noise_ref)  # the stored table, read in place
        return EvolutionWorkerGroup(
            env=c.env, env_config=c.env_config, num_workers=c.num_env_runners,
            num_envs_per_worker=c.num_envs_per_runner, policy=policy, seed=c.seed,
            normalize_observations=c.normalize_observations, noise_ref=self.noise_ref,
            num_cpus_per_worker=c.num_cpus_per_env_runner,
            custom_resources_per_worker=c.custom_resources_per_env_runner,
            max_worker_restarts=c.max_env_runner_restarts)

    async def sample_population(self, noise_stdev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Evaluate num_perturbations antithetic pairs around theta: (noise indices [P], returns
        [P, 2] (+, -), perturbations eps [P, dim] rebuilt from the table)."""
        c = self.config
        workers = max(len(self.env_runner_group.runners), 1)  # 0: one worker in the driver
        share = -(-c.num_perturbations // workers)  # ceil: every pair asked for is evaluated
        results = await self.sample(share, noise_stdev=noise_stdev)
        indices = np.concatenate([r["noise_indices"] for r in results])
        returns = np.concatenate([r["pair_returns"] for r in results])
        dim = self.noise_dim()
        return indices, returns, noise_rows(self.noise, indices, dim)

    def noise_dim(self) -> int:
        return int(self.learner.call("get_flat_weights").size)

    def stop(self) -> None:
        self.noise = None  # the view into the store goes before the store does
        super().stop()
