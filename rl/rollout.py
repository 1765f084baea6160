"""Env runners: actors that step vectorised envs with a CPU copy of the policy, and the group that
keeps them alive and fed with weights.

    EnvRunnerGroup (driver)                        EnvRunner actor i (one process each)
      sync_weights: one pa.put(flat float32) ----> set_weights(ref, version, obs stats): read in place
      request(T): sample.remote(T) -----------------> T steps of N envs, policy in the loop
      collect(T): await fragment refs <------------- fragment: dict of [T, N] numpy arrays in the
                                                     object store + the episodes finished in it
      a runner that died (ActorDiedError) is restarted by the runtime (max_restarts); the group
      counts it, re-sends the last weights, and the iteration goes on with the other fragments.

A fragment: obs, next_obs (the true last observation at episode ends: same-step autoreset),
actions, rewards, terminateds, truncateds, plus what the module's forward_exploration returned
(PPO: logp, values); `episode_returns` / `episode_lengths` / `episode_env_indices` of the episodes that ended inside it;
`env_steps`, `weights_version` (the policy that acted, for the policy lag), `runner_index`, and
`obs_stats` (raw observation statistics seen, when normalising).
"""

from __future__ import annotations

import asyncio
import os
import warnings
from typing import Any

import numpy as np

import pyactor as pa
from pyactor.exceptions import ActorDiedError
from pyactor.rl import envs as rl_envs
from pyactor.rl.module_spec import ModuleSpec
from pyactor.rl.normalize import RunningMeanStd

# A runner that dies this many times in a row without delivering a fragment is broken, not unlucky.
MAX_CONSECUTIVE_DEATHS = 5


class EnvRunner:
    """Steps `num_envs` copies of an env with the policy in the loop. Used as an actor (one per
    runner) and, with num_env_runners=0 or for evaluation, as a plain object in the driver."""

    def __init__(self, env: Any, env_config: dict, num_envs: int, module_spec: ModuleSpec,
                 seed: int | None, runner_index: int = 0, normalize_observations: bool = False):
        self.name = rl_envs.env_name(env)
        self.runner_index = runner_index
        self.num_envs = num_envs
        self.envs = rl_envs.make_vector_env(env, env_config, num_envs)
        self.module_spec = module_spec
        self._module = None   # the torch module, built on first use (see `module`)
        self._generator = None
        self._flat: np.ndarray | None = None  # the last weights, for a module built later
        # The numpy copy of the policy when the module has one (a step costs a third of the torch
        # forward's time on CartPole); the stock actor-critic's is made without importing torch.
        self.fast_policy = module_spec.numpy_policy()
        if self.fast_policy is None:
            self.fast_policy = self.module.numpy_policy()
        space = module_spec.action_space
        self.discrete = not hasattr(space, "low")
        self.action_low = None if self.discrete else space.low.astype(np.float32)
        self.action_high = None if self.discrete else space.high.astype(np.float32)
        self.runner_seed = None if seed is None else seed + 10_000 * runner_index
        self.rng = np.random.default_rng(self.runner_seed)
        self.obs_stats = RunningMeanStd(module_spec.observation_space.shape) \
            if normalize_observations else None
        self.obs_delta = RunningMeanStd(module_spec.observation_space.shape)
        self.weights_version = 0
        self.raw_obs = rl_envs.reset_vector_env(self.envs, self.runner_seed, self.name)
        rl_envs.check_finite(self.name, "reset() observation", self.raw_obs)
        self.episode_return = np.zeros(num_envs, np.float64)
        self.episode_length = np.zeros(num_envs, np.int64)
        # Episode returns are summed lazily: when some copy ends an episode, over the steps since
        # the last such moment (and at the fragment's end), not with two array updates a step.
        self._counted_to = 0
        self._finished: tuple[list, list, list] = ([], [], [])

    @property
    def module(self):
        """The torch module (torch imported and the module built on first use: a runner acting
        with its numpy policy never needs it), with the last weights received."""
        if self._module is None:
            import torch
            torch.set_num_threads(1)  # tiny networks: threads cost more than they give
            module = self.module_spec.build()
            module.eval()
            if self._flat is not None:
                module.set_flat_weights(self._flat)
            elif self.fast_policy is not None:  # acting before any weights: the initial ones
                self.fast_policy.set_flat_weights(module.get_flat_weights())
            self._module = module
        return self._module

    @property
    def generator(self):
        """The torch generator of the torch-module path, seeded like `rng`."""
        if self._generator is None:
            import torch
            self._generator = torch.Generator()
            if self.runner_seed is not None:
                self._generator.manual_seed(self.runner_seed)
            else:
                self._generator.seed()
        return self._generator

    def set_weights(self, flat: np.ndarray, version: int, obs_stats: dict | None = None) -> None:
        if self._module is not None:
            with warnings.catch_warnings():  # the store's read-only buffer: read in place
                warnings.simplefilter("ignore", UserWarning)
                self._module.set_flat_weights(flat)
        else:  # a copy: the store's buffer may go when its ref does
            self._flat = np.array(flat, np.float32)
        if self.fast_policy is not None:
            self.fast_policy.set_flat_weights(flat)
        self.weights_version = version
        if obs_stats is not None and self.obs_stats is not None:
            self.obs_stats = RunningMeanStd.from_dict(obs_stats)

    def _normalize(self, raw: np.ndarray) -> np.ndarray:
        if self.obs_stats is None:
            return raw.astype(np.float32, copy=False)
        return self.obs_stats.normalize(raw)

    def _act(self, obs: np.ndarray, explore: bool, explore_kw: dict) -> dict:
        """The policy's outputs for `obs` as numpy arrays (numpy copy or torch module)."""
        if self.fast_policy is not None and not explore_kw:
            return self.fast_policy.explore(obs, self.rng) if explore \
                else self.fast_policy.greedy(obs)
        import torch
        module = self.module
        with torch.inference_mode():
            obs_tensor = torch.from_numpy(obs)
            out = module.forward_exploration(obs_tensor, self.generator, **explore_kw) \
                if explore else module.forward_inference(obs_tensor)
            return {key: value.numpy() for key, value in out.items()}

    def sample(self, num_steps: int, explore: bool = True, **explore_kw) -> dict[str, Any]:
        """Step every env `num_steps` times; return the fragment described in the module note."""
        T, N = num_steps, self.num_envs
        if self._flat is None and self._module is None:
            _ = self.module  # no weights received yet: act with the module's initial ones
        obs_shape = self.raw_obs.shape[1:]
        obs_buf = np.empty((T, N, *obs_shape), np.float32)
        next_buf = np.empty((T, N, *obs_shape), np.float32)
        rewards_buf = np.empty((T, N), np.float32)
        terminated_buf = np.empty((T, N), bool)
        truncated_buf = np.empty((T, N), bool)
        fragment: dict[str, Any] = {"obs": obs_buf, "next_obs": next_buf, "rewards": rewards_buf,
                                    "terminateds": terminated_buf, "truncateds": truncated_buf}
        outputs: list[dict] = []
        normalizing = self.obs_stats is not None
        check_each_step = normalizing or not self.discrete
        envs, name = self.envs, self.name
        obs = self._normalize(self.raw_obs)
        for t in range(T):
            out = self._act(obs, explore, explore_kw)
            outputs.append(out)
            actions = out["actions"]
            if not self.discrete:
                actions = np.clip(actions, self.action_low, self.action_high)
            raw_obs, raw_next, rewards, terminateds, truncateds = rl_envs.step_vector_env(
                envs, actions, name)
            if check_each_step:  # before the statistics, or an action computed from a NaN
                rl_envs.check_finite(name, "observations", raw_next)
            if normalizing:
                self.obs_delta.update(raw_next)
            obs_buf[t] = obs
            next_buf[t] = self._normalize(raw_next) if normalizing else raw_next
            rewards_buf[t] = rewards
            terminated_buf[t] = terminateds
            truncated_buf[t] = truncateds
            done = terminateds | truncateds
            self.raw_obs = raw_obs
            if done.any():
                self._end_episodes(t, done, rewards_buf)
                obs = self._normalize(raw_obs)
            elif normalizing:
                obs = self._normalize(raw_obs)
            else:
                obs = next_buf[t]
        # Discrete actions from a NaN are still valid actions: checking once per fragment is enough.
        rl_envs.check_finite(name, "observations", next_buf)
        rl_envs.check_finite(name, "rewards", rewards_buf)
        for key in outputs[0]:
            fragment[key] = np.stack([out[key] for out in outputs])
        returns, lengths, env_indices = self._finished
        fragment["episode_returns"] = np.asarray(returns, np.float64)
        fragment["episode_lengths"] = np.asarray(lengths, np.int64)
        fragment["episode_env_indices"] = np.asarray(env_indices, np.int64)
        self._finished = ([], [], [])
        self.episode_return += rewards_buf[self._counted_to:].sum(0, dtype=np.float64)
        self.episode_length += T - self._counted_to
        self._counted_to = 0
        fragment["env_steps"] = T * N
        fragment["weights_version"] = self.weights_version
        fragment["runner_index"] = self.runner_index
        if normalizing:
            fragment["obs_stats"] = self.obs_delta.to_dict()
            self.obs_delta = RunningMeanStd(obs_shape)
        return fragment

    def _end_episodes(self, t: int, done: np.ndarray, rewards_buf: np.ndarray) -> None:
        self.episode_return += rewards_buf[self._counted_to:t + 1].sum(0, dtype=np.float64)
        self.episode_length += t + 1 - self._counted_to
        self._counted_to = t + 1
        returns, lengths, env_indices = self._finished
        for i in np.flatnonzero(done):
            returns.append(float(self.episode_return[i]))
            lengths.append(int(self.episode_length[i]))
            env_indices.append(int(i))
        self.episode_return[done] = 0.0
        self.episode_length[done] = 0

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.envs.close()


class EnvRunnerGroup:
    """The env-runner actors of one algorithm (or a local runner when num_env_runners=0)."""

    def __init__(self, *, env, env_config: dict, num_env_runners: int, num_envs_per_runner: int,
                 module_spec: ModuleSpec, seed: int | None, normalize_observations: bool,
                 num_cpus_per_env_runner: float = 1, custom_resources_per_env_runner=None,
                 max_env_runner_restarts: int = -1, runner_class: type | None = None,
                 runner_kwargs: dict | None = None):
        self.num_restarts = 0
        self.max_restarts = max_env_runner_restarts
        self._restarts_of = [0] * num_env_runners
        self._deaths_in_a_row = [0] * num_env_runners
        self._pending: list[tuple[int, Any]] = []
        self._weights: tuple | None = None  # (ref, version, obs_stats) last sent
        env = rl_envs.portable(env)  # a registered name means nothing in another process
        args = (env, env_config, num_envs_per_runner, module_spec, seed)
        # An algorithm may run its own EnvRunner subclass (Ape-X's runners add priorities,
        # A3C's compute gradients).
        runner_class = runner_class or EnvRunner
        kwargs = dict(runner_kwargs or {})
        if num_env_runners == 0:
            self.local: EnvRunner | None = runner_class(*args, 0, normalize_observations, **kwargs)
            self.runners: list = []
            return
        self.local = None
        actor_class = pa.remote(runner_class).options(
            num_cpus=num_cpus_per_env_runner, resources=dict(custom_resources_per_env_runner or {}),
            max_restarts=max_env_runner_restarts, max_task_retries=0)
        self.runners = [actor_class.remote(*args, i, normalize_observations, **kwargs)
                        for i in range(num_env_runners)]

    @property
    def num_envs(self) -> int:
        return self.local.num_envs if self.local else 0

    def sync_weights(self, flat: np.ndarray, version: int, obs_stats: dict | None) -> None:
        """Send one copy of the weights to every runner (one put, read in place by each)."""
        if self.local is not None:
            self.local.set_weights(flat, version, obs_stats)
            return
        ref = pa.put(flat)
        self._weights = (ref, version, obs_stats)
        for runner in self.runners:
            runner.set_weights.remote(ref, version, obs_stats)

    def request(self, num_steps: int, **explore_kw) -> None:
        """Start one fragment on every runner; `collect` awaits them."""
        assert not self._pending, "collect() the fragments already requested first"
        self._num_steps, self._explore_kw = num_steps, explore_kw
        if self.local is not None:
            self._pending = [(0, self.local.sample(num_steps, **explore_kw))]
            return
        self._pending = [(i, runner.sample.remote(num_steps, **explore_kw))
                         for i, runner in enumerate(self.runners)]

    async def collect(self, next_steps: int | None = None, **next_explore_kw) -> list[dict]:
        """The fragments requested last (in runner order), without those of runners that died; if
        none survived, sample again from the restarted runners. With `next_steps`, each runner is
        asked for its next fragment the moment this one arrives (the double buffering of
        async sampling): a runner never waits for the slowest one, and the next fragments are
        still sampled with the weights of this moment, as when requested after collect()."""
        if self.local is not None:
            fragments = [item for _, item in self._pending]
            self._pending = []
            self.collected_refs = [None] * len(fragments)
            if next_steps is not None:
                self.request(next_steps, **next_explore_kw)
            return fragments
        while True:
            pending, self._pending = self._pending, []
            arrived: dict[int, tuple[dict, Any]] = {}
            requeue = next_steps is not None

            async def fetch(index: int, ref) -> None:
                try:
                    arrived[index] = (await ref, ref)
                    self._deaths_in_a_row[index] = 0
                except ActorDiedError as error:
                    self._runner_died(index, error)
                if requeue:  # a restarted runner too: it has had the last weights re-sent
                    self._pending.append(
                        (index, self.runners[index].sample.remote(next_steps, **next_explore_kw)))

            await asyncio.gather(*(fetch(index, ref) for index, ref in pending))
            if requeue:
                self._pending.sort(key=lambda item: item[0])
                self._num_steps, self._explore_kw = next_steps, next_explore_kw
            if arrived:
                order = sorted(arrived)
                self.collected_refs = [arrived[i][1] for i in order]  # e.g. for a replay
                return [arrived[i][0] for i in order]
            if not requeue:
                self.request(self._num_steps, **self._explore_kw)

    def _runner_died(self, index: int, error: Exception) -> None:
        if "__init__ raised" in str(error):  # dead for good, and every restart would fail alike
            raise RuntimeError(f"env runner {index} could not start: {error}") from error
        self.num_restarts += 1
        self._restarts_of[index] += 1
        self._deaths_in_a_row[index] += 1
        if self.max_restarts != -1 and self._restarts_of[index] > self.max_restarts:
            raise RuntimeError(f"env runner {index} died more than max_env_runner_restarts="
                               f"{self.max_restarts} times") from error
        if self._deaths_in_a_row[index] >= MAX_CONSECUTIVE_DEATHS:
            raise RuntimeError(f"env runner {index} died {MAX_CONSECUTIVE_DEATHS} times in a row "
                               f"without delivering a fragment; last error: {error}") from error
        if self._weights is not None:  # the restarted process starts from its initial weights
            self.runners[index].set_weights.remote(*self._weights)

    def runner_delivered(self, index: int) -> None:
        """For pipelines that await runners one by one: runner `index` delivered a result."""
        self._deaths_in_a_row[index] = 0

    def runner_died(self, index: int, error: Exception) -> None:
        """For pipelines that await runners one by one: count the death of runner `index`
        (raising past the restart limits) and re-send the last weights to its new process."""
        self._runner_died(index, error)

    def runner_pids(self) -> list[int]:
        return pa.get([runner.pid.remote() for runner in self.runners])

    def stop(self) -> None:
        self._pending = []
        for runner in self.runners:
            try:
                pa.kill(runner, no_restart=True)
            except Exception:  # already gone
                pass
        self.runners = []
        if self.local is not None:
            self.local.close()
