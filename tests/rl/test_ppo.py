"""PPO: GAE against a plain loop, configs refused by name, reproducible runs, checkpoints that
restore the same policy and counters, the learner as an actor, Box actions, and (slow) that it
learns CartPole-v1."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import pyactor as pa
from pyactor import rl
from pyactor.rl.ppo import compute_gae

TIME_KEYS = {"time_total_s", "time_this_iter_s", "env_steps_per_s"}


def tiny(tmp_path, **kw):
    base = dict(env="CartPole-v1", num_env_runners=1, num_envs_per_runner=4,
                rollout_fragment_length=16, num_epochs=2, minibatch_size=32, seed=0,
                output=str(tmp_path), log_to_tensorboard=False)
    return rl.PPOConfig(**{**base, **kw})


def gae_loop(rewards, values, next_values, terminateds, truncateds, gamma, lam):
    """GAE written the plain way: per env, walking back in time."""
    T, N = rewards.shape
    out = np.zeros((T, N))
    for n in range(N):
        following = 0.0
        for t in reversed(range(T)):
            done = terminateds[t, n] or truncateds[t, n]
            bootstrap = 0.0 if terminateds[t, n] else next_values[t, n]
            delta = rewards[t, n] + gamma * bootstrap - values[t, n]
            following = delta + (0.0 if done else gamma * lam * following)
            out[t, n] = following
    return out


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_a_plain_loop(seed):
    """compute_gae equals the per-env loop, with terminations and truncations anywhere."""
    rng = np.random.default_rng(seed)
    T, N = 13, 5
    arrays = [rng.normal(size=(T, N)) for _ in range(3)]
    terminateds = rng.random((T, N)) < 0.15
    truncateds = (rng.random((T, N)) < 0.1) & ~terminateds
    expected = gae_loop(*arrays, terminateds, truncateds, 0.97, 0.9)
    got = compute_gae(*(torch.tensor(a) for a in arrays), torch.tensor(terminateds).double(),
                      torch.tensor(truncateds).double(), 0.97, 0.9)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_config_refuses_unknown_keys_and_wrong_types():
    """Unknown keys and wrong-typed values raise errors naming the key; builders return copies."""
    with pytest.raises(ValueError, match="unknown config key 'lrr'.*did you mean lr"):
        rl.PPOConfig().training(lrr=1e-3)
    with pytest.raises(TypeError, match="PPOConfig.num_epochs must be int, got str"):
        rl.PPOConfig(num_epochs="3")
    with pytest.raises(TypeError, match="async_sampling must be bool"):
        rl.PPOConfig().env_runners(async_sampling=1)
    with pytest.raises(ValueError, match="lambda_ must be in"):
        rl.PPOConfig(lambda_=1.5)
    base = rl.PPOConfig()
    config = base.environment("CartPole-v1").env_runners(num_env_runners=3).training(lr=0.01) \
        .resources(num_gpus_per_learner=0).debugging(seed=4)
    assert (config.env, config.num_env_runners, config.lr, config.seed) == ("CartPole-v1", 3, 0.01, 4)
    assert base.env is None  # frozen: builders made new configs
    assert rl.get_config_class("ppo") is rl.PPOConfig
    with pytest.raises(ValueError, match="unknown algorithm 'A2X'"):
        rl.get_config_class("A2X")


def _comparable(result):
    return {k: v for k, v in result.items() if k not in TIME_KEYS}


@pytest.mark.slow
def test_same_seed_gives_identical_runs(pa_module, tmp_path):
    """With async_sampling=False and a seed, two runs agree iteration by iteration."""
    runs = []
    for _ in range(2):
        algo = tiny(tmp_path, num_env_runners=2, async_sampling=False).build()
        try:
            runs.append([_comparable(algo.train()) for _ in range(3)])
            runs[-1].append(algo.learner.call("get_flat_weights").tolist())
        finally:
            algo.stop()
    assert runs[0] == runs[1]
    assert runs[0][0]["policy_lag"] == 0.0


def test_async_sampling_reports_policy_lag_and_writes_the_run_dir(pa_module, tmp_path):
    """Double-buffered sampling acts with the previous weights (lag 1); the run directory holds
    params.json, progress.csv and result.json with one row per iteration."""
    algo = tiny(tmp_path).build()
    try:
        results = [algo.train() for _ in range(3)]
    finally:
        algo.stop()
    assert results[0]["policy_lag"] == 0.0 and results[2]["policy_lag"] == 1.0
    keys = {"training_iteration", "env_steps_total", "episodes_total", "episode_return_mean",
            "episode_return_min", "episode_return_max", "episode_len_mean", "time_total_s",
            "time_this_iter_s", "env_steps_per_s", "num_env_runner_restarts",
            "learner/policy_loss", "learner/vf_loss", "learner/entropy"}
    assert keys <= set(results[-1])
    assert results[-1]["env_steps_total"] == 3 * 64
    run_dir = algo.run_dir
    assert os.path.dirname(run_dir) == str(tmp_path) and "PPO_CartPole-v1_" in run_dir
    assert json.load(open(os.path.join(run_dir, "params.json")))["lr"] == algo.config.lr
    assert len(open(os.path.join(run_dir, "result.json")).read().splitlines()) == 3
    assert len(open(os.path.join(run_dir, "progress.csv")).read().splitlines()) == 4


async def test_results_is_an_async_iterator_with_stop(pa_module, tmp_path):
    """`async for` yields results until a stop key reaches its value; unknown keys are refused."""
    algo = tiny(tmp_path).build()
    try:
        seen = [r["training_iteration"] async for r in algo.results(stop={"training_iteration": 2})]
        assert seen == [1, 2]
        with pytest.raises(ValueError, match="stop key 'nope' is not a result key"):
            async for _ in algo.results(stop={"nope": 1}):
                pass
    finally:
        algo.stop()


@pytest.mark.slow
def test_checkpoint_round_trip_restores_policy_and_counters(pa_module, tmp_path):
    """A restored algorithm acts identically and continues with the saved counters."""
    algo = tiny(tmp_path, normalize_observations=True).build()
    try:
        for _ in range(2):
            algo.train()
        path = algo.save(str(tmp_path / "ckpt"))
        observations = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
        actions = [algo.compute_single_action(o) for o in observations]
        stats = algo.obs_stats.to_dict()
        steps = algo.env_steps_total
        learner_state = algo.learner.call("get_state")
    finally:
        algo.stop()
    assert stats["count"] == steps  # every runner's observations were merged
    restored = rl.Algorithm.from_checkpoint(path)
    try:
        assert isinstance(restored, rl.PPO)
        assert [restored.compute_single_action(o) for o in observations] == actions
        assert restored.obs_stats.to_dict() == stats
        restored_state = restored.learner.call("get_state")
        for key, value in learner_state["optimizer"]["state"].items():  # Adam's moments
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(restored_state["optimizer"]["state"][key][name], value[name])
        result = restored.train()
        assert result["training_iteration"] == 3 and result["env_steps_total"] == steps + 64
    finally:
        restored.stop()


def test_foreign_or_newer_checkpoints_are_refused(tmp_path):
    """Another algorithm's checkpoint, or a newer format version, gives a clear error."""
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "checkpoint.json").write_text(json.dumps({"format_version": 1, "algorithm": "DQN"}))
    with pytest.raises(ValueError, match="of algorithm 'DQN', not 'PPO'"):
        rl.PPO.from_checkpoint(str(path))
    (path / "checkpoint.json").write_text(json.dumps({"format_version": 99, "algorithm": "PPO"}))
    with pytest.raises(ValueError, match="format version 99, newer"):
        rl.Algorithm.from_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match="not a pyactor.rl checkpoint"):
        rl.Algorithm.from_checkpoint(str(tmp_path))


@pytest.mark.slow
def test_learner_as_an_actor_trains(pa_module, tmp_path):
    """num_learners=1 runs the learner in an actor (CPU here) and the loop is unchanged."""
    algo = tiny(tmp_path, num_learners=1).build()
    try:
        result = algo.train()
        assert algo.learner.remote and algo.learner.call("device_name") == "cpu"
        assert result["learner/num_sgd_steps"] == 4
    finally:
        algo.stop()


def test_box_actions_use_a_gaussian_within_bounds(pa_module, tmp_path):
    """Pendulum-v1 trains with a diagonal Gaussian; greedy actions stay within the bounds."""
    algo = tiny(tmp_path, env="Pendulum-v1").build()
    try:
        result = algo.train()
        assert np.isfinite(result["learner/policy_loss"])
        action = algo.compute_single_action(np.zeros(3, np.float32), explore=True)
        assert action.shape == (1,) and -2.0 <= action[0] <= 2.0
    finally:
        algo.stop()


@pytest.mark.slow
def test_ppo_learns_cartpole(pa_module, tmp_path):
    """Default PPO reaches a 100-episode mean return of 475 on CartPole-v1 within 150k steps."""
    algo = rl.PPOConfig(env="CartPole-v1", seed=0, output=str(tmp_path),
                        log_to_tensorboard=False).build()
    try:
        result = algo.train()
        while result["episode_return_mean"] < 475 and result["env_steps_total"] < 150_000:
            result = algo.train()
    finally:
        algo.stop()
    assert result["episode_return_mean"] >= 475, result
