"""Bad input to an algorithm is refused with an error naming the thing, before or while
training, and nothing is left running."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pyactor import rl
from rl_envs import CountEnv, NaNObsEnv


def _config(tmp_path, **kw):
    return rl.PPOConfig(**{"num_env_runners": 0, "num_envs_per_runner": 2,
                           "rollout_fragment_length": 4, "minibatch_size": 8,
                           "output": str(tmp_path), "log_to_tensorboard": False, **kw})


def test_build_refuses_unknown_env_and_missing_env(pa_module, tmp_path):
    """An unknown id or no env at all fails at build(), naming the problem."""
    with pytest.raises(ValueError, match="unknown env 'CartPoel-v1'"):
        _config(tmp_path, env="CartPoel-v1").build()
    with pytest.raises(ValueError, match="config.env is not set"):
        _config(tmp_path).build()
    with pytest.raises(TypeError, match="env must be a gymnasium id"):
        _config(tmp_path, env=42).build()


def test_build_refuses_unsupported_spaces(pa_module, tmp_path):
    """A Discrete observation space is refused at build() with the env named."""
    class DiscreteObs(CountEnv):
        def __init__(self):
            super().__init__()
            self.observation_space = gym.spaces.Discrete(3)

    with pytest.raises(ValueError, match="'DiscreteObs': observation space Discrete"):
        _config(tmp_path, env=DiscreteObs).build()


def test_nan_observation_stops_training_with_the_env_named(pa_module, tmp_path):
    """A NaN observation raises rl.EnvError naming the env and where the NaN was."""
    algo = _config(tmp_path, env=NaNObsEnv).build()
    try:
        with pytest.raises(rl.EnvError, match="NaNObsEnv.*non-finite value in observations"):
            algo.train()
    finally:
        algo.stop()


def test_wrong_values_are_named(pa_module, tmp_path):
    """Wrong-type config values, stop values and observation shapes are refused by name."""
    with pytest.raises(TypeError, match="PPOConfig.env_config must be dict, got list"):
        _config(tmp_path, env_config=[1])
    with pytest.raises(TypeError, match="PPOConfig.lr must be float, got str"):
        _config(tmp_path).training(lr="fast")
    with pytest.raises(ValueError, match="lr_schedule must be a list of"):
        _config(tmp_path, lr_schedule=[1, 2])
    algo = _config(tmp_path, env=CountEnv).build()
    try:
        with pytest.raises(ValueError, match=r"observation shape \(3,\) does not match"):
            algo.compute_single_action(np.zeros(3))

        async def drain():
            async for _ in algo.results(stop={"training_iteration": "2"}):
                pass
        import asyncio
        with pytest.raises(TypeError, match="stop\\['training_iteration'\\] must be a number"):
            asyncio.run(drain())
    finally:
        algo.stop()


@pytest.mark.slow
def test_runner_that_cannot_build_its_env_stops_training(pa_module, tmp_path):
    """An env that fails to build inside the runners fails train() with the env's error instead
    of restarting the runner forever."""
    import os
    from rl_envs import FailsAwayFromDriver
    algo = _config(tmp_path, env=FailsAwayFromDriver, env_config={"driver_pid": os.getpid()},
                   num_env_runners=1).build()
    try:
        with pytest.raises(RuntimeError, match="(?s)env runner 0 could not start.*no licence server"):
            algo.train()
        assert algo.env_runner_group.num_restarts == 0
    finally:
        algo.stop()
