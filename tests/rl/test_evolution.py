"""ES and ARS on the population pipeline: centered-rank shaping, perturbations rebuilt from their
noise indices, the batched numpy policy against the torch module, top-b directions, smoke runs
(train, save, restore, evaluate, CLI) of ES, ARS V1 and V2, and (slow) that ES solves CartPole-v1."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyactor import rl
from pyactor.rl import cli as rl_cli
from pyactor.rl.ars import top_directions
from pyactor.rl.evolution import (DeterministicPolicy, EvolutionWorker,
                                  centered_ranks, make_noise_table, noise_rows)
from pyactor.rl.module import ModuleSpec
from pyactor.rl.population_worker import STATS_CHUNK_STEPS, VisitedStates

CARTPOLE_SPACES = (gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2))


def test_centered_ranks_of_a_small_population():
    """Each return becomes its rank over all returns, scaled to [-0.5, 0.5], shape kept."""
    shaped = centered_ranks(np.array([[3.0, 1.0], [2.0, 5.0]]))
    np.testing.assert_allclose(shaped, [[1 / 6, -1 / 2], [-1 / 6, 1 / 2]])
    assert centered_ranks(np.array([7.0])).tolist() == [0.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=40))
def test_centered_ranks_keep_the_order_and_span_the_range(values):
    """Shaped values are evenly spaced over [-0.5, 0.5], sum to zero, and never reorder returns."""
    returns = np.array(values)
    shaped = centered_ranks(returns)
    np.testing.assert_allclose(np.sort(shaped), np.linspace(-0.5, 0.5, len(values)), atol=1e-12)
    assert abs(shaped.sum()) < 1e-9
    order = np.argsort(returns, kind="stable")
    assert np.all(np.diff(shaped[order]) > 0)


def test_top_directions_rank_by_the_better_of_each_pair():
    """ARS keeps the b directions whose max(R+, R-) is largest (Mania et al. 2018, step 6)."""
    returns = np.array([[1.0, 9.0], [5.0, 5.0], [8.0, 0.0], [2.0, 3.0]])
    assert top_directions(returns, 2).tolist() == [0, 2]
    assert top_directions(returns, 4).tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("hidden,env", [([], "CartPole-v1"), ([8, 8], "CartPole-v1"),
                                        ([8], "Pendulum-v1")])
def test_batched_policy_matches_the_torch_module(hidden, env):
    """Row i of the numpy batch acts as the torch module does with parameter vector i."""
    probe = gym.make(env)
    spec = ModuleSpec(DeterministicPolicy, probe.observation_space, probe.action_space,
                      {"hidden": hidden, "activation": "tanh"})
    module = spec.build()
    batched = module.batched()
    rng = np.random.default_rng(0)
    params = rng.normal(size=(6, batched.dim)).astype(np.float32)
    obs = rng.normal(size=(6, *probe.observation_space.shape)).astype(np.float32)
    got = batched.act(batched.views(params), obs)
    for i in range(6):
        module.set_flat_weights(params[i])
        with torch.no_grad():
            expected = module.forward_inference(torch.from_numpy(obs[i:i + 1]))["actions"][0]
        np.testing.assert_allclose(got[i], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_worker_perturbations_are_rebuilt_from_their_noise_indices():
    """The parameters a worker evaluated equal theta +- sigma table[k : k + dim] for the indices it
    returned; every episode ran to its end and the env steps are the lengths' sum."""
    table = make_noise_table(10_000, seed=3)
    spec = ModuleSpec(DeterministicPolicy, *CARTPOLE_SPACES, {"hidden": [4], "activation": "tanh"})
    worker = EvolutionWorker("CartPole-v1", {}, 3, spec.build().batched(), seed=1, runner_index=0,
                             normalize_observations=False, noise_table=table)
    try:
        theta = np.random.default_rng(0).normal(size=worker.policy.dim).astype(np.float32)
        worker.set_weights(theta, 5)
        out = worker.sample(4, 0.3, record_params=True)
    finally:
        worker.close()
    eps = noise_rows(table, out["noise_indices"], worker.policy.dim)
    np.testing.assert_array_equal(out["params"][0::2], theta + np.float32(0.3) * eps)
    np.testing.assert_array_equal(out["params"][1::2], theta - np.float32(0.3) * eps)
    assert out["pair_returns"].shape == (4, 2) and out["weights_version"] == 5
    assert out["env_steps"] == out["pair_lengths"].sum() and (out["pair_lengths"] >= 8).all()
    np.testing.assert_array_equal(out["pair_returns"], out["pair_lengths"])  # CartPole: +1/step


@pytest.mark.slow
def test_es_workers_read_the_stored_table_and_send_indices(pa_module, tmp_path):
    """Across processes: the driver rebuilds from the shared table exactly what a worker actor
    evaluated, and the noise table the driver reads is the store's read-only copy."""
    algo = rl.ESConfig(env="CartPole-v1", seed=0, output=str(tmp_path), log_to_tensorboard=False,
                       noise_table_size=50_000, num_envs_per_runner=4).build()
    try:
        theta = algo.learner.call("get_flat_weights")
        out = pa_module.get(algo.env_runner_group.runners[1].sample.remote(3, 0.1, True))
        eps = noise_rows(algo.noise, out["noise_indices"], theta.size)
        np.testing.assert_array_equal(out["params"][0::2], theta + np.float32(0.1) * eps)
        assert not algo.noise.flags.writeable
        for pid in algo.env_runner_group.runner_pids():  # torch's import would cost seconds
            with open(f"/proc/{pid}/maps") as maps:
                assert "libtorch" not in maps.read()
    finally:
        algo.stop()


TINY = {"ES": dict(num_perturbations=4, num_envs_per_runner=4, noise_table_size=100_000),
        "ARS": dict(num_perturbations=4, num_top_directions=2, num_envs_per_runner=4,
                    noise_table_size=100_000)}


@pytest.mark.slow
@pytest.mark.parametrize("algo_name,extra", [("ES", {}), ("ARS", {"normalize_observations": True}),
                                             ("ARS", {"normalize_observations": False})])
def test_smoke_train_save_restore_evaluate(pa_module, tmp_path, algo_name, extra):
    """Two iterations, a checkpoint that restores the same actions, counters and state
    statistics, greedy evaluation, and the result keys of every algorithm."""
    config_class = rl.get_config_class(algo_name)
    algo = config_class(env="CartPole-v1", seed=0, output=str(tmp_path), log_to_tensorboard=False,
                        **TINY[algo_name], **extra).build()
    try:
        results = [algo.train() for _ in range(2)]
        path = algo.save(str(tmp_path / "ckpt"))
        observations = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
        actions = [algo.compute_single_action(o) for o in observations]
        weights = algo.learner.call("get_flat_weights")
        stats = algo.obs_stats.to_dict() if algo.obs_stats is not None else None
    finally:
        algo.stop()
    last = results[-1]
    for key in ("training_iteration", "env_steps_total", "episodes_total", "episode_return_mean",
                "episode_len_mean", "time_total_s", "env_steps_per_s", "num_env_runner_restarts",
                "learner/population_return_mean"):
        assert key in last, key
    assert last["episodes_total"] == 2 * 2 * 4  # 2 iterations of 4 antithetic pairs
    assert not np.array_equal(weights, np.zeros_like(weights))  # the updates moved theta
    if extra.get("normalize_observations"):
        assert stats["count"] == last["env_steps_total"]  # every visited state was counted
    restored = rl.Algorithm.from_checkpoint(path)
    try:
        assert type(restored).__name__ == algo_name
        assert [restored.compute_single_action(o) for o in observations] == actions
        np.testing.assert_array_equal(restored.learner.call("get_flat_weights"), weights)
        result = restored.train()
        assert result["training_iteration"] == 3
        evaluation = restored.evaluate(episodes=2)
        assert evaluation["episodes"] == 2 and evaluation["episode_return_mean"] >= 8
    finally:
        restored.stop()


@pytest.mark.slow
def test_cli_trains_and_evaluates_es(pa_module, tmp_path, capsys):
    """`pyactor rl train --algo ES` prints progress lines and a checkpoint that evaluate reads."""
    config = '{"num_perturbations": 4, "num_envs_per_runner": 4, "noise_table_size": 100000, ' \
             '"log_to_tensorboard": false}'
    assert rl_cli.main(["train", "--algo", "ES", "--env", "CartPole-v1", "--stop",
                        '{"training_iteration": 2}', "--config", config, "--seed", "0",
                        "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^iter +\d", out, re.M)) == 2
    checkpoint = re.search(r"final checkpoint: (\S+)", out).group(1)
    assert rl_cli.main(["evaluate", checkpoint, "--episodes", "2"]) == 0
    assert re.search(r"ES CartPole-v1: mean return over 2 episodes", capsys.readouterr().out)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 2 * STATS_CHUNK_STEPS + 5), st.integers(0, 2 ** 31))
def test_visited_states_are_the_statistics_of_the_live_rows(steps, seed):
    """Mean and variance of every state of a live copy, across chunk flushes; idle copies'
    states are left out."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(3.0, 2.0, size=(steps, 5, 4)).astype(np.float32)
    live = rng.random((steps, 5)) < 0.7
    live[0] = True
    visited = VisitedStates(5, (4,))
    for raw, mask in zip(obs, live):
        visited.add(raw, mask)
    visited.flush()
    seen = obs[live].astype(np.float64)
    assert visited.delta.count == len(seen)
    np.testing.assert_allclose(visited.delta.mean, seen.mean(0), rtol=1e-6)
    np.testing.assert_allclose(visited.delta.var, seen.var(0), rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_es_update_follows_its_optimizer(pa_module, tmp_path, optimizer):
    """SGD: theta += lr (g - l2 theta) with g Algorithm 1's estimate from the returns and the
    rebuilt noise; Adam's first step moves each parameter by lr along the sign of g."""
    algo = rl.ESConfig(env="CartPole-v1", seed=0, output=str(tmp_path), log_to_tensorboard=False,
                       num_env_runners=0, num_perturbations=6, num_envs_per_runner=4,
                       noise_table_size=10_000, optimizer=optimizer, lr=0.3).build()
    seen = {}
    sample_population = algo.sample_population

    async def recorded(noise_stdev):
        seen["population"] = await sample_population(noise_stdev)
        return seen["population"]

    algo.sample_population = recorded
    try:
        theta = algo.learner.call("get_flat_weights").astype(np.float64)
        algo.train()
        updated = algo.learner.call("get_flat_weights")
    finally:
        algo.stop()
    _, returns, eps = seen["population"]
    shaped = centered_ranks(returns)
    sigma = algo.config.noise_stdev
    ascent = (shaped[:, 0] - shaped[:, 1]) @ eps / (returns.size * sigma) - 0.005 * theta
    if optimizer == "sgd":
        np.testing.assert_allclose(updated, theta + 0.3 * ascent, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(updated, theta + 0.3 * np.sign(ascent), rtol=1e-3, atol=1e-4)


def test_bad_evolution_configs_are_refused():
    """Too few perturbations for the workers, a noise table smaller than the policy, b > N."""
    with pytest.raises(ValueError, match="num_perturbations .1. must be >= num_env_runners .2."):
        rl.ESConfig(num_perturbations=1)
    with pytest.raises(ValueError, match="num_top_directions must be in"):
        rl.ARSConfig(num_perturbations=4, num_top_directions=5)
    with pytest.raises(ValueError, match="noise_stdev must be > 0"):
        rl.ESConfig(noise_stdev=0.0)
    with pytest.raises(ValueError, match="optimizer must be one of .'sgd', 'adam'., got 'rmsprop'"):
        rl.ESConfig(optimizer="rmsprop")


def test_noise_table_smaller_than_the_policy_is_refused(pa_module, tmp_path):
    """The error names noise_table_size and the policy's parameter count."""
    with pytest.raises(ValueError, match=r"noise_table_size \(5\) must be >= the policy's 10"):
        rl.ESConfig(env="CartPole-v1", noise_table_size=5, output=str(tmp_path)).build()


@pytest.mark.slow
def test_es_solves_cartpole(pa_module, tmp_path):
    """Default ES reaches a 100-episode mean return of 475 on CartPole-v1, and its greedy policy
    holds 475 over 10 evaluation episodes."""
    algo = rl.ESConfig(env="CartPole-v1", seed=0, output=str(tmp_path),
                       log_to_tensorboard=False).build()
    try:
        result = algo.train()
        while result["episode_return_mean"] < 475 and result["training_iteration"] < 60:
            result = algo.train()
        assert result["episode_return_mean"] >= 475, result
        assert algo.evaluate(episodes=10)["episode_return_mean"] >= 475
    finally:
        algo.stop()
