"""Algorithm: the driver of a training run, and the base every algorithm file extends.

    env runners (actors)           object store               driver (this module)
    +----------------+  fragment refs [T,N] arrays   +-------------------------------+
    | EnvRunner 0..k |  -------------------------->  | collect() -> training_step()  |
    | vector env     |                               |   learner.update(fragments)   |
    | CPU policy     |  <--------------------------  |   (in the driver, or an actor |
    +----------------+   one weights ref per update  |    holding the GPU)           |
                         (flat float32 + obs stats)  +-------------------------------+

Double buffering (async_sampling=True): as soon as fragment k is collected, fragment k+1 is
requested, so the runners step envs while the learner updates on fragment k; fragment k+1 was
acted by the weights before that update (policy lag 1, reported as `policy_lag`; PPO's ratio uses
the behaviour log-probs, which makes that correct). async_sampling=False requests after the
weights went out: no lag, and with a seed the run is reproducible iteration by iteration.

`results(stop=...)` is the loop as an async iterator; `train()` runs one iteration of it on a
private event loop. A subclass supplies `training_step` (a coroutine: sample, update, return the
learner metrics), its config and learner classes, and optional checkpoint extras.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import time
from collections import deque
from typing import Any, AsyncIterator

import cloudpickle
import numpy as np
import torch

import pyactor as pa
from pyactor.rl import envs as rl_envs
from pyactor.rl.config import AlgorithmConfig, get_config_class
from pyactor.rl.learner import Learner, LearnerHandle
from pyactor.rl.logger import RunLogger, make_run_dir
from pyactor.rl.module import ActorCriticModule, ModuleSpec, RLModule
from pyactor.rl.normalize import RunningMeanStd
from pyactor.rl.rollout import EnvRunner, EnvRunnerGroup

CHECKPOINT_FORMAT_VERSION = 1

__all__ = ["Algorithm", "AlgorithmConfig", "CHECKPOINT_FORMAT_VERSION"]


class Algorithm:
    config_class: type[AlgorithmConfig] = AlgorithmConfig
    learner_class: type[Learner] = Learner
    module_class: type[RLModule] = ActorCriticModule
    env_runner_class: type[EnvRunner] = EnvRunner  # Ape-X's add priorities, A3C's gradients

    def __init__(self, config: AlgorithmConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        if config.env is None:
            raise ValueError("config.env is not set: pass a gymnasium id, a registered name or "
                             "a gymnasium.Env subclass (config.environment('CartPole-v1'))")
        self._build_start = time.monotonic()
        self.config = config
        self._started_pyactor = not pa.is_initialized()
        self.env_runner_group: EnvRunnerGroup | None = None
        self.learner: LearnerHandle | None = None
        self.logger: RunLogger | None = None
        self._evaluation_runner: EnvRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.iteration = 0
        self.env_steps_total = 0
        self.episodes_total = 0
        self._time_before_s = 0.0  # time_total_s carried over from a checkpoint
        window = config.metrics_num_episodes_for_smoothing
        self._returns: deque = deque(maxlen=window)
        self._lengths: deque = deque(maxlen=window)
        self.weights_version = 0
        self._policy_lags: list[int] = []
        self._policy: RLModule | None = None  # driver copy for compute_single_action
        self._policy_version = -1
        self._run_dir: str | None = None  # made on the first result or save (not by evaluation)
        if self._started_pyactor:
            pa.init()
        try:
            self._start_pipeline(config)
            self.sync_weights()
        except BaseException:
            self.stop()  # no actor, learner or node left behind by a failed build
            raise

    def _start_pipeline(self, config: AlgorithmConfig) -> None:
        observation_space, action_space = rl_envs.probe_spaces(config.env, config.env_config)
        self.module_spec = ModuleSpec(self.module_class, observation_space, action_space,
                                      config.model)
        self.obs_stats = RunningMeanStd(observation_space.shape) \
            if config.normalize_observations else None
        self.learner = LearnerHandle(self.learner_class, self.module_spec, config.to_dict(),
                                     config.seed, config.num_learners, config.num_gpus_per_learner)
        self.env_runner_group = self.make_env_runner_group()

    # ------------------------------------------------------------------ subclass interface
    async def training_step(self) -> dict[str, Any]:
        """Sample (self.sample()), update the learner, self.sync_weights(); return the learner's
        metrics (reported under `learner/`) and any other result keys."""
        raise NotImplementedError

    def get_extra_state(self) -> dict:
        """Algorithm-specific state for a checkpoint (e.g. a replay buffer)."""
        return {}

    def set_extra_state(self, state: dict) -> None:
        pass

    def make_env_runner_group(self) -> EnvRunnerGroup:
        """The runner actors; an algorithm with another kind of runner (ES's workers) overrides."""
        config = self.config
        return EnvRunnerGroup(
            env=config.env, env_config=config.env_config, num_env_runners=config.num_env_runners,
            num_envs_per_runner=config.num_envs_per_runner, module_spec=self.module_spec,
            seed=config.seed, normalize_observations=config.normalize_observations,
            num_cpus_per_env_runner=config.num_cpus_per_env_runner,
            custom_resources_per_env_runner=config.custom_resources_per_env_runner,
            max_env_runner_restarts=config.max_env_runner_restarts,
            runner_class=self.env_runner_class, runner_kwargs=self.env_runner_kwargs())

    def env_runner_kwargs(self) -> dict:
        """Extra keyword arguments for env_runner_class (each runner gets the same)."""
        return {}

    # ------------------------------------------------------------------ pieces for subclasses
    async def sample(self, num_steps: int | None = None, **explore_kw) -> list[dict]:
        """The next fragments (one per live runner), double-buffered when async_sampling;
        `num_steps` defaults to rollout_fragment_length; `explore_kw` goes to the module's
        forward_exploration (e.g. epsilon)."""
        group = self.env_runner_group
        length = num_steps or self.config.rollout_fragment_length
        if not group._pending:
            group.request(length, **explore_kw)
        if self.config.async_sampling:  # runners step k+1 while the learner works on k
            fragments = await group.collect(length, **explore_kw)
        else:
            fragments = await group.collect()
        for fragment in fragments:
            self.record_fragment(fragment)
        return fragments

    def record_fragment(self, fragment: dict) -> None:
        """Count a fragment's env steps, finished episodes, policy lag and observation
        statistics (every pipeline calls this once per fragment it consumes)."""
        self.env_steps_total += int(fragment["env_steps"])
        self._policy_lags.append(self.weights_version - int(fragment["weights_version"]))
        returns, lengths = fragment["episode_returns"], fragment["episode_lengths"]
        self._returns.extend(returns.tolist())
        self._lengths.extend(lengths.tolist())
        self.episodes_total += len(returns)
        if self.obs_stats is not None and "obs_stats" in fragment:
            self.obs_stats.merge(RunningMeanStd.from_dict(fragment["obs_stats"]))

    def sync_weights(self) -> None:
        """Send the learner's weights (and the observation statistics) to every runner."""
        self.weights_version += 1
        flat = self.learner.call("get_flat_weights")
        stats = self.obs_stats.to_dict() if self.obs_stats is not None else None
        self.env_runner_group.sync_weights(flat, self.weights_version, stats)

    # ------------------------------------------------------------------ the loop
    async def step_async(self) -> dict[str, Any]:
        """One training iteration -> result dict (also logged to the run directory)."""
        start = time.monotonic()
        steps_before = self.env_steps_total
        metrics = await self.training_step()
        self.iteration += 1
        elapsed = time.monotonic() - start
        result = self._result(metrics, elapsed, self.env_steps_total - steps_before)
        if self.logger is None:
            self.logger = RunLogger(self.run_dir, self.config.to_dict(),
                                    self.config.log_to_tensorboard)
        self.logger.log(result)
        return result

    @property
    def run_dir(self) -> str:
        """`<output or ~/pyactor_results>/<algo>_<env>_<time>`, made when first needed."""
        if self._run_dir is None:
            self._run_dir = make_run_dir(self.config.output, self.config_class.algo_name,
                                         rl_envs.env_name(self.config.env))
        return self._run_dir

    def _result(self, metrics: dict, elapsed: float, env_steps: int) -> dict[str, Any]:
        returns = self._returns
        result: dict[str, Any] = {
            "training_iteration": self.iteration,
            "env_steps_total": self.env_steps_total,
            "episodes_total": self.episodes_total,
            "episode_return_mean": float(np.mean(returns)) if returns else math.nan,
            "episode_return_min": float(np.min(returns)) if returns else math.nan,
            "episode_return_max": float(np.max(returns)) if returns else math.nan,
            "episode_len_mean": float(np.mean(self._lengths)) if returns else math.nan,
            "time_total_s": self.time_total_s(),
            "time_this_iter_s": elapsed,
            "env_steps_this_iter": env_steps,
            "env_steps_per_s": env_steps / elapsed if elapsed > 0 else math.nan,
            "num_env_runner_restarts": self.env_runner_group.num_restarts,
            "policy_lag": float(np.mean(self._policy_lags)) if self._policy_lags else 0.0,
        }
        self._policy_lags = []
        for key, value in metrics.items():
            result[key if "/" in key else f"learner/{key}"] = value
        return result

    def time_total_s(self) -> float:
        """Seconds since build() began (actor start-up included), plus those before a restore."""
        return self._time_before_s + time.monotonic() - self._build_start

    def train(self) -> dict[str, Any]:
        """One iteration (the synchronous face of `results`)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(self.step_async())
        raise RuntimeError("train() was called inside a running event loop: use "
                           "`async for result in algo.results(stop=...)` there")

    async def results(self, stop: dict | None = None) -> AsyncIterator[dict[str, Any]]:
        """Iterations as an async iterator, until a result has `key >= value` for any stop item."""
        stop = dict(stop or {})
        for key, value in stop.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"stop[{key!r}] must be a number, got {value!r}")
        while True:
            result = await self.step_async()
            yield result
            if should_stop(result, stop):
                return

    # ------------------------------------------------------------------ using the policy
    def _driver_policy(self) -> RLModule:
        if self._policy is None:
            self._policy = self.module_spec.build()
            self._policy.eval()
        if self._policy_version != self.weights_version:
            self._policy.set_flat_weights(self.learner.call("get_flat_weights"))
            self._policy_version = self.weights_version
        return self._policy

    def compute_single_action(self, obs, explore: bool = False):
        """The action for one observation: greedy by default, sampled with explore=True."""
        policy = self._driver_policy()
        space = self.module_spec.observation_space
        obs = np.asarray(obs, np.float32)
        if obs.shape != space.shape:
            raise ValueError(f"observation shape {obs.shape} does not match the env's "
                             f"{space.shape}")
        if self.obs_stats is not None:
            obs = self.obs_stats.normalize(obs)
        with torch.inference_mode():
            obs_tensor = torch.from_numpy(obs[None])
            out = policy.forward_exploration(obs_tensor) if explore \
                else policy.forward_inference(obs_tensor)
        action = out["actions"][0].numpy()
        action_space = self.module_spec.action_space
        if hasattr(action_space, "n"):
            return int(action)
        return np.clip(action, action_space.low, action_space.high)

    def evaluate(self, episodes: int | None = None) -> dict[str, Any]:
        """Mean return of the greedy policy over `episodes` episodes (the first episode of each
        of that many env copies, so short episodes are not favoured)."""
        episodes = episodes or self.config.evaluation_num_episodes
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        runner = self._evaluation_runner
        if runner is None or runner.num_envs != episodes:
            seed = None if self.config.seed is None else self.config.seed + 999_983
            runner = self._evaluation_runner = EnvRunner(
                self.config.env, self.config.env_config, episodes, self.module_spec, seed,
                normalize_observations=self.obs_stats is not None)
        runner.set_weights(self.learner.call("get_flat_weights"), self.weights_version,
                           self.obs_stats.to_dict() if self.obs_stats is not None else None)
        runner.raw_obs = rl_envs.reset_vector_env(runner.envs, None, runner.name)
        runner.episode_return[:] = 0
        runner.episode_length[:] = 0
        first: dict[int, tuple[float, int]] = {}
        while len(first) < episodes:
            fragment = runner.sample(64, explore=False)
            for env_index, ret, length in zip(fragment["episode_env_indices"],
                                              fragment["episode_returns"],
                                              fragment["episode_lengths"]):
                first.setdefault(int(env_index), (float(ret), int(length)))
        returns = [r for r, _ in first.values()]
        return {"episode_return_mean": float(np.mean(returns)),
                "episode_return_min": float(np.min(returns)),
                "episode_return_max": float(np.max(returns)),
                "episode_len_mean": float(np.mean([n for _, n in first.values()])),
                "episodes": episodes}

    # ------------------------------------------------------------------ checkpoints
    def save(self, checkpoint_dir: str | None = None) -> str:
        """Write config, weights, optimiser, counters, normalisation statistics (and the
        algorithm's extras) to `checkpoint_dir` (default: the run directory's next checkpoint)."""
        path = checkpoint_dir or os.path.join(self.run_dir, f"checkpoint_{self.iteration:06d}")
        os.makedirs(path, exist_ok=True)
        counters = {"iteration": self.iteration, "env_steps_total": self.env_steps_total,
                    "episodes_total": self.episodes_total, "time_total_s": self.time_total_s(),
                    "weights_version": self.weights_version}
        meta = {"format_version": CHECKPOINT_FORMAT_VERSION,
                "algorithm": self.config_class.algo_name, "counters": counters}
        with open(os.path.join(path, "checkpoint.json"), "w") as f:
            json.dump(meta, f, indent=2)
        with open(os.path.join(path, "config.pkl"), "wb") as f:
            cloudpickle.dump(self.config, f)
        torch.save(self.learner.call("get_state"), os.path.join(path, "learner.pt"))
        state = {"obs_stats": self.obs_stats.to_dict() if self.obs_stats is not None else None,
                 "returns": list(self._returns), "lengths": list(self._lengths),
                 "extra": self.get_extra_state()}
        with open(os.path.join(path, "state.pkl"), "wb") as f:
            pickle.dump(state, f)
        return path

    @classmethod
    def from_checkpoint(cls, path: str, **config_changes) -> "Algorithm":
        """Build the checkpoint's algorithm and restore it; `config_changes` may move it (e.g.
        num_env_runners, output)."""
        meta_path = os.path.join(path, "checkpoint.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{path!r} is not a pyactor.rl checkpoint (no checkpoint.json)")
        with open(meta_path) as f:
            meta = json.load(f)
        version = meta.get("format_version")
        if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(f"checkpoint {path!r} has format version {version}, newer than this "
                             f"pyactor reads ({CHECKPOINT_FORMAT_VERSION}): upgrade pyactor")
        name = meta.get("algorithm")
        if cls is not Algorithm and name != cls.config_class.algo_name:
            raise ValueError(f"checkpoint {path!r} is of algorithm {name!r}, not "
                             f"{cls.config_class.algo_name!r}: use rl.Algorithm.from_checkpoint")
        get_config_class(name)  # the algorithm must still be registered
        with open(os.path.join(path, "config.pkl"), "rb") as f:
            config = cloudpickle.load(f)
        if config_changes:
            config = config.replace(**config_changes)
        algo = config.build()
        algo._restore(path, meta)
        return algo

    def _restore(self, path: str, meta: dict) -> None:
        self.learner.call("set_state", torch.load(os.path.join(path, "learner.pt"),
                                                  map_location="cpu", weights_only=False))
        with open(os.path.join(path, "state.pkl"), "rb") as f:
            state = pickle.load(f)
        counters = meta["counters"]
        self.iteration = counters["iteration"]
        self.env_steps_total = counters["env_steps_total"]
        self.episodes_total = counters["episodes_total"]
        self._time_before_s = counters["time_total_s"]
        self._build_start = time.monotonic()
        self.weights_version = counters["weights_version"]
        if state["obs_stats"] is not None:
            self.obs_stats = RunningMeanStd.from_dict(state["obs_stats"])
        self._returns.extend(state["returns"])
        self._lengths.extend(state["lengths"])
        self.set_extra_state(state["extra"])
        self.env_runner_group._pending = []  # fragments of the fresh weights only
        self.sync_weights()

    # ------------------------------------------------------------------ shutting down
    def stop(self) -> None:
        """Stop the runners and the learner actor, close the logs (and the local pyactor node if
        build() started it)."""
        group = getattr(self, "env_runner_group", None)
        if group is not None:
            group.stop()
        if getattr(self, "learner", None) is not None:
            self.learner.stop()
        if getattr(self, "logger", None) is not None:
            self.logger.close()
            self.logger = None
        if self._evaluation_runner is not None:
            self._evaluation_runner.close()
            self._evaluation_runner = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self._started_pyactor and pa.is_initialized():
            pa.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def should_stop(result: dict, stop: dict) -> bool:
    """True when any stop key's value has reached its bound; an unknown key is an error."""
    for key, bound in stop.items():
        if key not in result:
            raise ValueError(f"stop key {key!r} is not a result key; result keys: "
                             f"{', '.join(sorted(result))}")
        value = result[key]
        if isinstance(value, (int, float)) and not math.isnan(value) and value >= bound:
            return True
    return False
