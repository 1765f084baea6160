"""Env specs become vector envs with same-step autoreset; bad envs are refused by name."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pyactor import rl
from pyactor.rl import envs as rl_envs
from rl_envs import CountEnv, NaNRewardEnv


def test_unknown_env_id_is_named():
    """An id neither registered nor known to gymnasium raises ValueError naming it."""
    with pytest.raises(ValueError, match="unknown env 'NoSuchEnv-v9'"):
        rl_envs.make_vector_env("NoSuchEnv-v9", {}, 2)


def test_unsupported_spaces_are_named():
    """Dict observations and MultiDiscrete actions are refused with the env and space named."""
    class DictObs(CountEnv):
        def __init__(self):
            super().__init__()
            self.observation_space = gym.spaces.Dict({"a": gym.spaces.Discrete(2)})

    class MultiAction(CountEnv):
        def __init__(self):
            super().__init__()
            self.action_space = gym.spaces.MultiDiscrete([2, 3])

    with pytest.raises(ValueError, match="DictObs.*observation space"):
        rl_envs.probe_spaces(DictObs, {})
    with pytest.raises(ValueError, match="MultiAction.*action space"):
        rl_envs.probe_spaces(MultiAction, {})


def test_registered_name_gets_env_config():
    """A creator registered by name receives the env_config dict."""
    rl.register_env("count-7", lambda cfg: CountEnv(**cfg))
    envs = rl_envs.make_vector_env("count-7", {"length": 7}, 2)
    assert envs.num_envs == 2 and envs.envs[0].length == 7
    with pytest.raises(TypeError, match="creator"):
        rl.register_env("bad", 3)


def test_cartpole_uses_the_native_vector_env():
    """CartPole-v1 is stepped by gymnasium's vectorised implementation, not N Python envs."""
    envs = rl_envs.make_vector_env("CartPole-v1", {}, 4)
    assert not isinstance(envs, gym.vector.SyncVectorEnv)
    obs = rl_envs.reset_vector_env(envs, 0, "CartPole-v1")
    assert obs.shape == (4, 4)


@pytest.mark.parametrize("truncate", [False, True])
def test_same_step_autoreset_keeps_the_final_observation(truncate):
    """At an episode's end next_obs is the true last observation and the next obs the reset one."""
    envs = rl_envs.make_vector_env(CountEnv, {"length": 3, "truncate": truncate}, 2)
    rl_envs.reset_vector_env(envs, 0, "count")
    for t in range(1, 4):
        obs, next_obs, rewards, terminateds, truncateds = rl_envs.step_vector_env(
            envs, np.zeros(2, np.int64), "count")
        assert next_obs[:, 0].tolist() == [t, t]
    assert (terminateds if not truncate else truncateds).all()
    assert not (truncateds if not truncate else terminateds).any()
    assert obs[:, 0].tolist() == [0, 0]


def test_nan_is_named():
    """A non-finite value names the env and what held it."""
    with pytest.raises(rl.EnvError, match="'nan-env' returned a non-finite value in rewards"):
        rl_envs.check_finite("nan-env", "rewards", np.array([1.0, np.nan]))
    envs = rl_envs.make_vector_env(NaNRewardEnv, {}, 1)
    rl_envs.reset_vector_env(envs, 0, "x")
    _, _, rewards, _, _ = rl_envs.step_vector_env(envs, np.zeros(1, np.int64), "x")
    assert np.isnan(rewards).all()



def test_native_cartpole_resets_ended_copies_in_the_same_step():
    """An ended CartPole copy reports its out-of-bounds last state in next_obs and starts its
    next episode from a fresh state (within +-0.05) in the same step; the others carry on."""
    envs = rl_envs.make_vector_env("CartPole-v1", {}, 3)
    obs = rl_envs.reset_vector_env(envs, 0, "CartPole-v1")
    actions = np.array([1, 1, 0])  # copy 2 pushes the other way: its episode ends at another time
    for _ in range(200):
        previous = obs
        obs, next_obs, _, terminateds, _ = rl_envs.step_vector_env(envs, actions, "CartPole-v1")
        if terminateds.any():
            break
    ended = np.flatnonzero(terminateds)
    assert ended.size and (np.abs(next_obs[ended][:, 2]) > 0.2094).all()  # the pole fell
    assert (np.abs(obs[ended]) <= 0.05).all()
    running = np.flatnonzero(~terminateds)
    assert np.array_equal(obs[running], next_obs[running])
    assert not np.array_equal(obs[running], previous[running])


def test_native_cartpole_steps_like_gymnasium():
    """Between episode ends, the same-step CartPole gives gymnasium's vectorised CartPole's
    observations, rewards and terminations for the same seed and actions."""
    ours = rl_envs.make_vector_env("CartPole-v1", {}, 8)
    theirs = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="vector_entry_point")
    rl_envs.reset_vector_env(ours, 3, "CartPole-v1")
    theirs.reset(seed=3)
    actions = np.random.default_rng(0).integers(0, 2, (8, 8))
    for step_actions in actions:  # 8 steps: no CartPole episode ends before step 9
        _, next_obs, rewards, terminateds, _ = rl_envs.step_vector_env(ours, step_actions, "c")
        obs, their_rewards, their_terminateds, _, _ = theirs.step(step_actions)
        assert np.array_equal(next_obs, obs) and np.array_equal(rewards, their_rewards)
        assert np.array_equal(terminateds, their_terminateds)
    theirs.close()
