"""The worker side of the population pipeline (ES, ARS): one actor evaluates antithetic
perturbations of theta, one episode each, and sends back only noise indices and returns.

This module imports numpy and gymnasium only, never torch: a worker process starts in the time of
a fork plus gymnasium's import (torch's import alone costs a worker ~1-3 CPU seconds, more than a
whole ES run on CartPole-v1 spends stepping envs). The driver describes its torch policy to the
worker as a `BatchedPolicy` (layer shapes, activation, action kind), whose numpy forward pass
evaluates every perturbation at once.

    set_weights(theta, version, obs stats) -> theta, and the normalisation shift/scale
    sample(num_pairs, noise_stdev):
        noise indices k ~ U[0, table size - dim]; params 2j, 2j+1 = theta +- sigma table[k_j:k_j+dim]
        every env copy (slot) runs one perturbation's episode; a slot whose episode ends writes
        its return and length and takes the next perturbation (or idles until the others end)
        visited states are buffered raw and folded into the statistics delta in chunks
        -> {noise_indices, pair_returns [P, 2], pair_lengths, env_steps, obs_stats delta}
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pyactor.rl import envs as rl_envs
from pyactor.rl.normalize import RunningMeanStd

OBS_CLIP = 10.0  # RunningMeanStd.normalize's clip, applied the same way here
STATS_CHUNK_STEPS = 256  # visited states buffered before they are folded into the statistics


def noise_rows(table: np.ndarray, indices: np.ndarray, dim: int) -> np.ndarray:
    """The perturbations [len(indices), dim] whose noise starts at each index."""
    return table[np.asarray(indices)[:, None] + np.arange(dim)]


_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0),
                "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))}


class BatchedPolicy:
    """DeterministicPolicy's forward pass for many parameter vectors at once in numpy: row i of
    `params` [n, dim] acts on row i of `obs` [n, obs_dim] (one perturbation per env copy).
    Built from plain values (no torch) so that it travels to a worker cheaply."""

    def __init__(self, layer_shapes: list[tuple[int, int]], activation: str, discrete: bool,
                 low: np.ndarray | None = None, high: np.ndarray | None = None):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(_ACTIVATIONS)}")
        self.shapes = [(int(out), int(inp)) for out, inp in layer_shapes]
        self.activation_name = activation
        self.discrete = discrete
        self.low = None if discrete else np.asarray(low, np.float32)
        self.high = None if discrete else np.asarray(high, np.float32)
        self.dim = sum(o * i + o for o, i in self.shapes)

    def views(self, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weights [n, out, in], bias [n, out]) views into `params` (they follow its updates)."""
        layers, offset, n = [], 0, params.shape[0]
        for out, inp in self.shapes:
            weights = params[:, offset:offset + out * inp].reshape(n, out, inp)
            offset += out * inp
            layers.append((weights, params[:, offset:offset + out]))
            offset += out
        return layers

    def act(self, layers: list, obs: np.ndarray) -> np.ndarray:
        activation = _ACTIVATIONS[self.activation_name]
        x = obs.reshape(obs.shape[0], -1)
        for i, (weights, bias) in enumerate(layers):
            x = np.einsum("noi,ni->no", weights, x) + bias  # ~3x a batched matmul's speed
            if i < len(layers) - 1:
                x = activation(x)
        if self.discrete:
            return x.argmax(-1)
        return np.clip(x, self.low, self.high)


class VisitedStates:
    """The statistics delta of the states a worker visits: raw observations are copied into a
    chunk buffer each step (one copy) and folded into a RunningMeanStd a chunk at a time."""

    def __init__(self, num_envs: int, obs_shape: tuple):
        self.delta = RunningMeanStd(obs_shape)
        self._obs = np.empty((STATS_CHUNK_STEPS, num_envs, *obs_shape), np.float32)
        self._live = np.empty((STATS_CHUNK_STEPS, num_envs), bool)
        self._used = 0

    def add(self, raw: np.ndarray, live: np.ndarray) -> None:
        self._obs[self._used] = raw
        self._live[self._used] = live
        self._used += 1
        if self._used == STATS_CHUNK_STEPS:
            self.flush()

    def flush(self) -> None:
        if self._used:
            seen = self._obs[:self._used]
            live = self._live[:self._used]
            seen = seen.reshape(-1, *seen.shape[2:]) if live.all() else seen[live]
            if len(seen):
                mean = seen.mean(0, dtype=np.float64)
                var = np.square(seen - mean).mean(0)
                self.delta.merge(RunningMeanStd(mean.shape, len(seen), mean, var))
            self._used = 0


class EvolutionWorker:
    """Runs the episodes of antithetic perturbations of theta on `num_envs` env copies."""

    def __init__(self, env: Any, env_config: dict, num_envs: int, policy: BatchedPolicy,
                 seed: int | None, runner_index: int, normalize_observations: bool,
                 noise_table: np.ndarray):
        self.name = rl_envs.env_name(env)
        self.runner_index = runner_index
        self.num_envs = num_envs
        self.envs = rl_envs.make_vector_env(env, env_config, num_envs)
        self.obs_shape = tuple(self.envs.single_observation_space.shape)
        self.noise = noise_table  # the store's read-only pages, shared with every other worker
        self.policy = policy
        self.theta = np.zeros(policy.dim, np.float32)
        self._seed = None if seed is None else seed + 10_000 * runner_index
        self.rng = np.random.default_rng(self._seed)
        self.normalize_observations = normalize_observations
        self._shift = self._scale = None  # normalisation; None: no statistics yet (identity)
        self.weights_version = 0

    def set_weights(self, flat: np.ndarray, version: int, obs_stats: dict | None = None) -> None:
        theta = np.array(flat, np.float32)
        if theta.size != self.policy.dim:
            raise ValueError(f"weights vector has {theta.size} values, policy has "
                             f"{self.policy.dim}")
        self.theta = theta
        self.weights_version = version
        if obs_stats is not None and self.normalize_observations and obs_stats["count"] > 0:
            stats = RunningMeanStd.from_dict(obs_stats)
            self._shift = stats.mean
            self._scale = 1.0 / np.sqrt(stats.var + 1e-8)

    def perturbed_params(self, indices: np.ndarray, noise_stdev: float) -> np.ndarray:
        """Rows 2j and 2j+1: theta + sigma eps_j and theta - sigma eps_j (antithetic pair j)."""
        eps = noise_rows(self.noise, indices, self.policy.dim)
        params = np.empty((2 * len(indices), self.policy.dim), np.float32)
        params[0::2] = self.theta + noise_stdev * eps
        params[1::2] = self.theta - noise_stdev * eps
        return params

    def _normalized(self, raw: np.ndarray) -> np.ndarray:
        """RunningMeanStd.normalize with the statistics last received, as float32."""
        if self._shift is None:
            return raw.astype(np.float32, copy=False)
        out = (raw - self._shift) * self._scale
        np.clip(out, -OBS_CLIP, OBS_CLIP, out=out)
        return out.astype(np.float32)

    def sample(self, num_pairs: int, noise_stdev: float, record_params: bool = False) -> dict:
        """One episode for each of the 2 * num_pairs perturbations; a copy whose episode ends
        takes the next perturbation (same-step autoreset gives it a fresh first observation)."""
        dim = self.policy.dim
        indices = self.rng.integers(0, self.noise.size - dim + 1, num_pairs)
        params = self.perturbed_params(indices, noise_stdev)
        num_episodes = 2 * num_pairs
        returns = np.zeros(num_episodes, np.float64)
        lengths = np.zeros(num_episodes, np.int64)
        n = self.num_envs
        slot_episode = np.full(n, -1, np.int64)  # the perturbation each copy runs; -1: idle
        first = min(n, num_episodes)
        slot_episode[:first] = np.arange(first)
        slot_params = np.zeros((n, dim), np.float32)
        slot_params[:first] = params[:first]
        layers = self.policy.views(slot_params)
        slot_return = np.zeros(n, np.float64)  # of the episode each slot runs (idle: unused)
        slot_length = np.zeros(n, np.int64)
        next_episode, num_live = first, first
        live = slot_episode >= 0
        visited = VisitedStates(n, self.obs_shape) if self.normalize_observations else None
        raw = rl_envs.reset_vector_env(self.envs, self._seed, self.name)
        self._seed = None  # the first reset seeds the env copies; later ones continue their RNG
        while num_live:
            if visited is not None:
                visited.add(raw, live)
            actions = self.policy.act(layers, self._normalized(raw))
            raw, _, rewards, terminateds, truncateds = rl_envs.step_vector_env(
                self.envs, actions, self.name)
            slot_return += rewards
            slot_length += 1
            done = terminateds | truncateds
            if not done.any():
                continue
            for slot in np.flatnonzero(done & live):
                episode = slot_episode[slot]
                returns[episode], lengths[episode] = slot_return[slot], slot_length[slot]
                slot_return[slot], slot_length[slot] = 0.0, 0
                if next_episode < num_episodes:
                    slot_episode[slot] = next_episode
                    slot_params[slot] = params[next_episode]
                    next_episode += 1
                else:
                    slot_episode[slot] = -1
                    num_live -= 1
            live = slot_episode >= 0
        rl_envs.check_finite(self.name, "rewards", returns)
        result = {
            "noise_indices": indices, "pair_returns": returns.reshape(num_pairs, 2),
            "pair_lengths": lengths.reshape(num_pairs, 2), "episode_returns": returns,
            "episode_lengths": lengths, "env_steps": int(lengths.sum()),
            "weights_version": self.weights_version, "runner_index": self.runner_index}
        if visited is not None:
            visited.flush()
            if visited.delta.count:
                result["obs_stats"] = visited.delta.to_dict()
        if record_params:
            result["params"] = params
        return result

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.envs.close()
