"""A2C: its losses against k-step returns written as a plain loop, a smoke run (train, save,
restore, evaluate, CLI) on a tiny budget, and (slow) that it learns CartPole-v1."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from pyactor import rl
from pyactor.rl import cli as rl_cli
from pyactor.rl.a2c import A2CLearner
from pyactor.rl.module import ActorCriticModule, ModuleSpec


def k_step_returns(rewards, next_values, terminateds, truncateds, gamma):
    """R_t = r_t + gamma R_{t+1}, bootstrapped with V(s') at the fragment's end and at
    truncations, 0 after a termination (Mnih et al. 2016, Algorithm S3), per env."""
    T, N = rewards.shape
    out = np.zeros((T, N))
    for n in range(N):
        following = next_values[T - 1, n]
        for t in reversed(range(T)):
            if terminateds[t, n]:
                following = 0.0
            elif truncateds[t, n] or t == T - 1:
                following = next_values[t, n]
            following = rewards[t, n] + gamma * following
            out[t, n] = following
    return out


@pytest.mark.parametrize("seed", range(3))
def test_a2c_losses_match_k_step_returns(seed):
    """The learner's policy and value losses equal those built from a plain loop's returns."""
    probe = gym.make("CartPole-v1")
    spec = ModuleSpec(ActorCriticModule, probe.observation_space, probe.action_space, {})
    config = rl.A2CConfig(gamma=0.9).to_dict()
    learner = A2CLearner(spec, config, seed=seed)
    rng = np.random.default_rng(seed)
    T, N = 6, 3
    terminateds = rng.random((T, N)) < 0.2
    truncateds = (rng.random((T, N)) < 0.2) & ~terminateds
    states = rng.normal(size=(T + 1, N, 4)).astype(np.float32)
    next_obs = states[1:].copy()  # s_{t+1}, except the final observation where an episode ended
    ended = terminateds | truncateds
    next_obs[ended] = rng.normal(size=(int(ended.sum()), 4)).astype(np.float32)
    fragment = {"obs": states[:-1], "next_obs": next_obs,
                "rewards": rng.normal(size=(T, N)).astype(np.float32),
                "actions": rng.integers(0, 2, (T, N)),
                "terminateds": terminateds,
                "truncateds": truncateds}
    with torch.no_grad():
        values = learner.module.value(torch.from_numpy(fragment["obs"])).numpy()
        next_values = learner.module.value(torch.from_numpy(fragment["next_obs"])).numpy()
        logp = learner.module.distribution(torch.from_numpy(fragment["obs"])).log_prob(
            torch.from_numpy(fragment["actions"])).numpy()
    returns = k_step_returns(fragment["rewards"], next_values, fragment["terminateds"],
                             fragment["truncateds"], 0.9)
    metrics = learner.update([fragment], lr=1e-3)
    np.testing.assert_allclose(metrics["policy_loss"], -(logp * (returns - values)).mean(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["vf_loss"], 0.5 * ((values - returns) ** 2).mean(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a2c_smoke_train_save_restore_evaluate_cli(pa_module, tmp_path, capsys):
    """The CLI trains two iterations and saves; the checkpoint restores the same actions and
    counters, trains on and evaluates; results carry the keys of every algorithm."""
    config = '{"num_env_runners": 1, "num_envs_per_runner": 4, "log_to_tensorboard": false}'
    assert rl_cli.main(["train", "--algo", "A2C", "--env", "CartPole-v1", "--stop",
                        '{"training_iteration": 2}', "--config", config, "--seed", "0",
                        "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^iter +\d", out, re.M)) == 2
    checkpoint = re.search(r"final checkpoint: (\S+)", out).group(1)
    algo = rl.Algorithm.from_checkpoint(checkpoint)
    try:
        assert isinstance(algo, rl.A2C) and algo.env_steps_total == 2 * 8 * 4
        observations = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
        actions = [algo.compute_single_action(o) for o in observations]
        result = algo.train()
        for key in ("training_iteration", "env_steps_total", "episode_return_mean",
                    "time_total_s", "num_env_runner_restarts", "learner/policy_loss",
                    "learner/vf_loss", "learner/entropy"):
            assert key in result, key
        assert result["training_iteration"] == 3
    finally:
        algo.stop()
    again = rl.A2C.from_checkpoint(checkpoint)
    try:
        assert [again.compute_single_action(o) for o in observations] == actions
        assert again.evaluate(episodes=2)["episodes"] == 2
    finally:
        again.stop()


@pytest.mark.slow
def test_a2c_learns_cartpole(pa_module, tmp_path):
    """Default A2C reaches a 100-episode mean return of 475 on CartPole-v1 within 400k steps."""
    algo = rl.A2CConfig(env="CartPole-v1", seed=0, output=str(tmp_path),
                        log_to_tensorboard=False).build()
    try:
        result = algo.train()
        # `not >=`: the first results' mean is nan (no episode finished yet)
        while not result["episode_return_mean"] >= 475 and result["env_steps_total"] < 400_000:
            result = algo.train()
    finally:
        algo.stop()
    assert result["episode_return_mean"] >= 475, result
