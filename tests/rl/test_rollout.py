"""Env runners: fragments and episodes counted exactly across autoresets, env failures surfacing
in the driver with their traceback, dead runners restarted while the iteration completes, each
runner re-requested as soon as its own fragment is in."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

import pyactor as pa
from pyactor import rl
from pyactor.rl import envs as rl_envs
from pyactor.rl.module import ActorCriticModule, ModuleSpec
from pyactor.rl.rollout import EnvRunner, EnvRunnerGroup
from rl_envs import (CountEnv, KillOnceEnv, NaNRewardEnv, RaisingEnv, RunnerGate,
                     gated_runner_class)

GUARD_S = 60


def _spec(env=CountEnv, env_config=None):
    obs_space, act_space = rl_envs.probe_spaces(env, env_config or {})
    return ModuleSpec(ActorCriticModule, obs_space, act_space, {"hidden": [8]})


class VaryingCountEnv(CountEnv):
    """Copy i of a vector env gets episodes of length 2 + (creation order % 3)."""
    created = 0

    def __init__(self):
        super().__init__(length=2 + VaryingCountEnv.created % 3)
        VaryingCountEnv.created += 1


def test_fragments_and_episodes_are_counted_exactly_across_autoresets():
    """Over many fragments each copy's episodes have its exact length and return; a fragment
    boundary inside an episode neither loses nor double-counts a step."""
    spec = _spec(VaryingCountEnv)
    VaryingCountEnv.created = 0
    runner = EnvRunner(VaryingCountEnv, {}, 3, spec, seed=0)
    total_steps, by_env = 0, {0: [], 1: [], 2: []}
    for _ in range(7):
        fragment = runner.sample(5)  # 5 is no multiple of 2, 3 or 4: episodes straddle fragments
        assert fragment["obs"].shape == (5, 3, 1) and fragment["rewards"].shape == (5, 3)
        assert fragment["env_steps"] == 15
        total_steps += fragment["env_steps"]
        for i, ret, length in zip(fragment["episode_env_indices"], fragment["episode_returns"],
                                  fragment["episode_lengths"]):
            by_env[int(i)].append((ret, length))
        ends = fragment["terminateds"] | fragment["truncateds"]
        # the transition into a terminal step is real: next_obs is the last count, obs the one before
        assert np.array_equal(fragment["next_obs"][..., 0][ends],
                              fragment["obs"][..., 0][ends] + 1)
    for i, length in enumerate([2, 3, 4]):
        assert by_env[i] == [(float(length), length)] * (35 // length)
    assert total_steps == 35 * 3


def test_fragment_carries_behaviour_outputs_and_version():
    """A fragment holds the module's exploration outputs (logp, values) and the weights version."""
    spec = _spec()
    runner = EnvRunner(CountEnv, {}, 2, spec, seed=1)
    runner.set_weights(spec.build().get_flat_weights(), 7)
    fragment = runner.sample(4)
    assert fragment["logp"].shape == (4, 2) and fragment["values"].shape == (4, 2)
    assert fragment["actions"].dtype == np.int64 and fragment["weights_version"] == 7


def test_nan_reward_names_the_env():
    """NaN rewards stop sampling with an EnvError naming the env."""
    runner = EnvRunner(NaNRewardEnv, {}, 2, _spec(NaNRewardEnv), seed=0)
    with pytest.raises(rl.EnvError, match="NaNRewardEnv.*non-finite value in rewards"):
        runner.sample(3)


def test_env_raising_in_a_runner_surfaces_with_its_traceback(pa_module, tmp_path):
    """An env raising inside a runner actor reaches train() with the env's traceback, no hang."""
    config = rl.PPOConfig(env=RaisingEnv, env_config={"length": 3}, num_env_runners=1,
                          num_envs_per_runner=1, rollout_fragment_length=8,
                          output=str(tmp_path), log_to_tensorboard=False)
    algo = config.build()
    try:
        with pytest.raises(rl.EnvError) as info:
            algo.train()
        message = str(info.value)
        assert "RaisingEnv" in message and "the env's own bug" in message
        assert "ZeroDivisionError" in message and "rl_envs.py" in message  # the env's traceback
    finally:
        algo.stop()


@pytest.mark.slow
def test_runner_killed_mid_iteration_is_restarted(pa_module, tmp_path):
    """A runner SIGKILLed inside sample() is restarted; the iteration completes from the other
    runner, the result counts the restart, and the next iteration uses both again."""
    marker = str(tmp_path / "killed")
    rl.register_env("kill-once", lambda cfg: KillOnceEnv(**cfg))
    config = rl.PPOConfig(env="kill-once", env_config={"marker": marker, "kill_at": 5},
                          num_env_runners=2, num_envs_per_runner=1, rollout_fragment_length=16,
                          async_sampling=False, seed=0, output=str(tmp_path),
                          log_to_tensorboard=False)
    algo = config.build()
    try:
        first = algo.train()
        assert first["num_env_runner_restarts"] == 1
        assert first["env_steps_this_iter"] == 16  # the survivor's fragment only
        second = algo.train()
        assert second["env_steps_this_iter"] == 32 and second["num_env_runner_restarts"] == 1
        assert len(set(algo.env_runner_group.runner_pids())) == 2
    finally:
        algo.stop()


async def test_collect_asks_each_runner_again_as_soon_as_its_fragment_is_in(pa_module):
    """collect(next_steps) re-requests runner 0 while runner 1 is still on its first fragment
    (runner 1 is held until runner 0 starts its second: a collect that waited for every
    fragment before asking again would never return); fragments come back in runner order and
    the next ones have the new length."""
    gate = pa.remote(RunnerGate).options(num_cpus=0).remote()
    group = EnvRunnerGroup(env=CountEnv, env_config={}, num_env_runners=2, num_envs_per_runner=2,
                           module_spec=_spec(), seed=0, normalize_observations=False,
                           runner_class=gated_runner_class(), runner_kwargs={"gate": gate})
    try:
        group.request(4)
        first = await asyncio.wait_for(group.collect(3), GUARD_S)
        assert [f["runner_index"] for f in first] == [0, 1]
        assert [f["env_steps"] for f in first] == [8, 8]
        second = await asyncio.wait_for(group.collect(), GUARD_S)
        assert [f["runner_index"] for f in second] == [0, 1]
        assert [f["env_steps"] for f in second] == [6, 6]
        assert not group._pending
    finally:
        group.stop()
        pa.kill(gate)


def test_actor_critic_runner_acts_without_importing_torch(pa_module):
    """A runner of the stock actor-critic steps with its numpy policy built from the spec and
    never imports torch (seconds of CPU at every runner start); the weights it acts with are the
    ones sent (its greedy actions are the driver module's)."""
    spec = _spec(CountEnv)
    module = spec.build()
    gate = pa.remote(RunnerGate).options(num_cpus=0).remote()
    group = EnvRunnerGroup(env=CountEnv, env_config={}, num_env_runners=1, num_envs_per_runner=2,
                           module_spec=spec, seed=0, normalize_observations=False,
                           runner_class=gated_runner_class(), runner_kwargs={"gate": gate})
    try:
        group.sync_weights(module.get_flat_weights(), 3, None)
        runner = group.runners[0]
        fragment = pa.get(runner.sample.remote(4, explore=False), timeout=GUARD_S)
        assert fragment["weights_version"] == 3
        expected = module.forward_inference(torch.tensor(fragment["obs"].reshape(-1, 1)))
        assert np.array_equal(fragment["actions"].reshape(-1), expected["actions"].numpy())
        assert pa.get(runner.modules_loaded.remote(["torch", "numpy"]),
                      timeout=GUARD_S) == [False, True]
    finally:
        group.stop()
        pa.kill(gate)
