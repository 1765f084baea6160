"""SAC, DDPG and TD3: the squashed-Gaussian log-prob against a direct computation, TD3's target
smoothing, clipped double Q and delayed actor updates, configs refused by name, a discrete env
refused; per algorithm a tiny run that trains, saves, restores acting identically and evaluates
(the CLI once for the family); and (slow) that default SAC learns Pendulum-v1."""

from __future__ import annotations

import math
import os
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from pyactor import rl
from pyactor.rl import cli as rl_cli
from pyactor.rl.continuous_modules import (ActionScaling, DeterministicModule, QEnsemble,
                                           SquashedGaussianModule, squashed_gaussian_log_prob)
from pyactor.rl.module import ModuleSpec
from pyactor.rl.td3 import TD3Config, TD3Learner, clipped_double_q_targets, smoothed_target_actions

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACTION_SPACE = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
CONFIGS = {"SAC": rl.SACConfig, "DDPG": rl.DDPGConfig, "TD3": rl.TD3Config}


def tiny(config_class, tmp_path, **kw):
    base = dict(env="Pendulum-v1", num_env_runners=1, num_envs_per_runner=2,
                rollout_fragment_length=16, learning_starts=64, train_batch_size=16,
                replay_ratio=0.25, replay_buffer_capacity=1000,
                model={"hidden": [16, 16], "activation": "relu"}, seed=0, output=str(tmp_path),
                log_to_tensorboard=False)
    return config_class(**{**base, **kw})


# ---------------------------------------------------------------------- the maths
def test_squashed_gaussian_log_prob_matches_a_direct_computation():
    """log pi(tanh(u)) equals torch's Normal log-density of u minus sum log(1 - tanh(u)^2),
    computed naively, and torch's TanhTransform distribution; it stays finite where tanh(u)
    rounds to 1."""
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 3), torch.randn(64, 3) * 0.5
    u = mean + torch.randn(64, 3) * log_std.exp()
    normal = torch.distributions.Normal(mean.double(), log_std.double().exp())
    u64 = u.double()  # the naive form in float64: in float32 log(1 - tanh^2) loses digits
    naive = normal.log_prob(u64).sum(-1) - torch.log(1 - torch.tanh(u64) ** 2).sum(-1)
    ours = squashed_gaussian_log_prob(mean, log_std, u)
    torch.testing.assert_close(ours.double(), naive, rtol=1e-5, atol=1e-4)
    squashed = torch.distributions.TransformedDistribution(
        normal, [torch.distributions.TanhTransform(cache_size=1)])
    torch.testing.assert_close(ours.double(), squashed.log_prob(torch.tanh(u64)).sum(-1),
                               rtol=1e-5, atol=1e-4)
    far = squashed_gaussian_log_prob(torch.zeros(1, 1), torch.zeros(1, 1), torch.full((1, 1), 30.))
    assert torch.isfinite(far).all()


def test_squashed_gaussian_density_integrates_to_one():
    """The density of a = tanh(u) over (-1, 1), from the log-prob, integrates to 1 (the
    Jacobian term is what makes it a density of a, not of u)."""
    mean, log_std = torch.tensor([[0.7]]), torch.tensor([[-0.3]])
    a = torch.linspace(-1 + 1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)[:, None]
    density = squashed_gaussian_log_prob(mean.double(), log_std.double(), torch.atanh(a)).exp()
    assert float(torch.trapezoid(density, a[:, 0])) == pytest.approx(1.0, abs=1e-3)


def test_sac_actor_samples_in_bounds_with_their_log_prob():
    """SAC's module acts inside the Box; the actor's sample returns the log-prob of that very
    action; greedy actions are tanh of the mean, scaled to the bounds."""
    module = SquashedGaussianModule(OBS_SPACE, ACTION_SPACE, {"hidden": [8]})
    obs = torch.randn(500, 3)
    actions = module.forward_exploration(obs, torch.Generator().manual_seed(1))["actions"]
    assert (actions >= torch.tensor([-2.0, 0.0])).all() and (actions <= torch.tensor([2.0, 1.0])).all()
    generator = torch.Generator().manual_seed(2)
    a, logp = module.actor.sample(obs, generator)
    mean, log_std = module.actor.distribution(obs)
    torch.testing.assert_close(logp, squashed_gaussian_log_prob(mean, log_std, torch.atanh(a)),
                               rtol=1e-3, atol=1e-3)
    greedy = module.forward_inference(obs)["actions"]
    torch.testing.assert_close(greedy, module.scaling.to_env(torch.tanh(mean)))


def test_action_scaling_maps_the_unit_box_onto_the_bounds():
    """-1 and 1 map to low and high, and to_policy inverts to_env."""
    scaling = ActionScaling(ACTION_SPACE)
    torch.testing.assert_close(scaling.to_env(torch.tensor([[-1.0, -1.0], [1.0, 1.0]])),
                               torch.tensor([[-2.0, 0.0], [2.0, 1.0]]))
    a = torch.rand(10, 2) * 2 - 1
    torch.testing.assert_close(scaling.to_policy(scaling.to_env(a)), a)


def test_q_ensemble_members_are_independent_mlps():
    """Critic k of the ensemble equals a plain MLP with its slice of the stacked weights."""
    critics = QEnsemble(3, 2, [8, 8], "relu", num_critics=2)
    obs, actions = torch.randn(5, 3), torch.rand(5, 2)
    out = critics(obs, actions)
    assert out.shape == (2, 5) and not torch.allclose(out[0], out[1])
    for k in range(2):
        x = torch.cat([obs, actions], -1)
        for i, (w, b) in enumerate(zip(critics.weights, critics.biases)):
            x = x @ w[k] + b[k]
            x = torch.relu(x) if i < 2 else x
        torch.testing.assert_close(out[k], x.squeeze(-1))


def test_td3_target_smoothing_clips_the_noise_and_the_action():
    """eq. 15: the noise added to mu'(s') is clipped to [-c, c] and the noised action to
    [-1, 1]; with sigma 0 the target action is mu'(s')."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.rand(10_000, 2) * 2 - 1
    smoothed = smoothed_target_actions(mu, 10.0, 0.5, generator)  # noise way past the clip
    assert ((smoothed - mu).abs() <= 0.5 + 1e-6).all()
    assert (smoothed.abs() <= 1.0).all()
    inside = (mu.abs() < 0.5).all(-1)  # here only the noise clip binds: mostly at +-c exactly
    assert ((smoothed[inside] - mu[inside]).abs() > 0.499).float().mean() > 0.9
    near_edge = smoothed_target_actions(torch.full((1000, 1), 0.9), 10.0, 0.5, generator)
    assert (near_edge >= 0.4 - 1e-6).all() and (near_edge == 1.0).float().mean() > 0.4
    torch.testing.assert_close(smoothed_target_actions(mu, 0.0, 0.5, generator), mu)
    small = smoothed_target_actions(torch.zeros(100_000, 1), 0.2, 0.5, generator)
    assert float(small.std()) == pytest.approx(0.2, rel=0.05)  # sigma inside a wide clip


def test_td3_clipped_double_q_takes_the_smaller_target():
    """eq. 10: y = r + gamma^n (1 - done) min_k Q'_k; done removes the bootstrap."""
    next_q = torch.tensor([[1.0, 5.0, 3.0], [2.0, 4.0, -1.0]])
    y = clipped_double_q_targets(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.9, 0.9, 0.81]),
                                 torch.tensor([1.0, 0.0, 1.0]), next_q)
    torch.testing.assert_close(y, torch.tensor([1.9, 1.0, 1.0 - 0.81]))


def test_td3_moves_the_actor_every_policy_delay_updates():
    """With policy_delay 3 the actor and the targets change on updates 3 and 6 only; the
    critics change on every update."""
    config = TD3Config(policy_delay=3, train_batch_size=8).to_dict()
    spec = ModuleSpec(DeterministicModule, OBS_SPACE, ACTION_SPACE,
                      {"hidden": [8], "num_critics": 2})
    learner = TD3Learner(spec, config, seed=0)
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(8, 3)).astype(np.float32),
             "actions": rng.uniform(-1, 1, size=(8, 2)).astype(np.float32),
             "rewards": rng.normal(size=8).astype(np.float32),
             "next_obs": rng.normal(size=(8, 3)).astype(np.float32),
             "terminateds": np.zeros(8, bool), "discounts": np.full(8, 0.99, np.float32)}
    actor_moved, critic_moved, metrics = [], [], []
    for _ in range(6):
        actor_before = learner.module.get_flat_weights()
        target_before = learner.target.get_flat_weights()
        critic_before = torch.nn.utils.parameters_to_vector(learner.module.critics.parameters())
        metrics.append(learner.update([batch])[0])
        actor_moved.append(not np.array_equal(actor_before, learner.module.get_flat_weights()))
        assert actor_moved[-1] == (not np.array_equal(target_before,
                                                      learner.target.get_flat_weights()))
        critic_after = torch.nn.utils.parameters_to_vector(learner.module.critics.parameters())
        critic_moved.append(not torch.equal(critic_before, critic_after))
    assert actor_moved == [False, False, True, False, False, True]
    assert all(critic_moved)
    assert ["actor_loss" in m for m in metrics] == actor_moved


def test_configs_refuse_bad_values_by_name():
    """Unknown keys, wrong types and out-of-range values name the key; the three are
    registered by name."""
    with pytest.raises(ValueError, match="unknown config key 'taus'.*did you mean tau"):
        rl.SACConfig().training(taus=0.5)
    with pytest.raises(TypeError, match="SACConfig.autotune_alpha must be bool"):
        rl.SACConfig(autotune_alpha=1)
    with pytest.raises(ValueError, match="tau must be in"):
        rl.TD3Config(tau=0.0)
    with pytest.raises(ValueError, match="policy_delay must be >= 1"):
        rl.TD3Config(policy_delay=0)
    with pytest.raises(ValueError, match="exploration_noise must be >= 0"):
        rl.DDPGConfig(exploration_noise=-0.1)
    with pytest.raises(ValueError, match="initial_alpha"):
        rl.SACConfig(initial_alpha=0.0)
    for name, config_class in CONFIGS.items():
        assert rl.get_config_class(name.lower()) is config_class


def test_modules_refuse_unbounded_or_discrete_actions():
    """A Discrete or unbounded Box action space is refused with the algorithm named."""
    with pytest.raises(ValueError, match="SAC needs a Box"):
        SquashedGaussianModule(OBS_SPACE, gym.spaces.Discrete(2), {"algorithm": "SAC"})
    with pytest.raises(ValueError, match="TD3 needs finite action bounds"):
        DeterministicModule(OBS_SPACE, gym.spaces.Box(-np.inf, np.inf, (2,)), {"algorithm": "TD3"})


# ---------------------------------------------------------------------- the algorithms
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_discrete_env_is_refused(pa_module, tmp_path, name):
    """SAC, DDPG and TD3 on CartPole (Discrete actions) fail at build, naming the algorithm."""
    with pytest.raises(ValueError, match=f"{name} needs a Box \\(continuous\\) action space"):
        tiny(CONFIGS[name], tmp_path, env="CartPole-v1").build()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_save_restore_evaluate(pa_module, tmp_path, name):
    """A tiny run acts randomly until learning_starts, then learns at replay_ratio; it reports
    the learner's losses (and alpha for SAC) and the replay's size; the restored algorithm acts
    identically, keeps its counters and buffer, trains on and evaluates."""
    algo = tiny(CONFIGS[name], tmp_path, store_buffer_in_checkpoints=True).build()
    try:
        results = [algo.train() for _ in range(3)]
        path = algo.save(str(tmp_path / "ckpt"))
        observations = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
        actions = [algo.compute_single_action(o) for o in observations]
        evaluation = algo.evaluate(episodes=2)
    finally:
        algo.stop()
    assert [r["env_steps_total"] for r in results] == [32, 64, 96]
    assert [r["learner/num_updates"] for r in results] == [0, 8, 8]
    last = results[-1]
    assert last["learner/num_updates_total"] == 16 and last["replay/size"] == 96
    keys = ["learner/critic_loss", "learner/actor_loss", "learner/q_mean"]
    keys += ["learner/alpha", "learner/alpha_loss", "learner/entropy"] if name == "SAC" else []
    for key in keys:
        assert np.isfinite(last[key]), key
    if name == "SAC":
        assert last["learner/alpha"] < 1.0  # tuned down from initial_alpha 1
    assert all(-2.0 <= float(a[0]) <= 2.0 for a in actions)
    assert evaluation["episodes"] == 2 and evaluation["episode_len_mean"] == 200

    restored = rl.Algorithm.from_checkpoint(path)
    try:
        assert type(restored).__name__ == name
        assert [restored.compute_single_action(o).tolist() for o in observations] == \
            [a.tolist() for a in actions]
        result = restored.train()
        assert result["training_iteration"] == 4 and result["replay/size"] == 128
        assert result["learner/num_updates_total"] == 24
    finally:
        restored.stop()


def test_same_seed_gives_identical_td3_runs(pa_module, tmp_path):
    """With a seed and synchronous sampling two TD3 runs agree iteration by iteration."""
    runs = []
    for _ in range(2):
        algo = tiny(rl.TD3Config, tmp_path, async_sampling=False).build()
        try:
            runs.append([{k: v for k, v in algo.train().items()
                          if k not in ("time_total_s", "time_this_iter_s", "env_steps_per_s")}
                         for _ in range(3)])
            runs[-1].append(algo.learner.call("get_flat_weights").tolist())
        finally:
            algo.stop()
    assert runs[0] == runs[1]


def test_cli_trains_sac_evaluates_and_plots(pa_module, tmp_path, capsys):
    """`pyactor rl train --algo SAC --env Pendulum-v1` runs to its stop condition, logs
    TensorBoard scalars (alpha among them) and saves a checkpoint that `pyactor rl evaluate`
    loads; `pyactor rl plot` draws the run."""
    config = ('{"num_envs_per_runner": 2, "rollout_fragment_length": 16, "learning_starts": 32,'
              ' "train_batch_size": 16, "model": {"hidden": [16]}}')
    assert rl_cli.main(["train", "--algo", "SAC", "--env", "Pendulum-v1", "--stop",
                        '{"training_iteration": 2}', "--config", config, "--seed", "0",
                        "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^iter +\d", out, re.M)) == 2
    checkpoint = re.search(r"final checkpoint: (\S+)", out).group(1)
    assert "SAC_Pendulum-v1_" in checkpoint
    run_dir = re.search(r"run directory: (\S+)", out).group(1)
    events = [name for name in os.listdir(run_dir) if name.startswith("events.out.tfevents")]
    assert events and b"learner/alpha" in open(os.path.join(run_dir, events[0]), "rb").read()
    assert rl_cli.main(["evaluate", checkpoint, "--episodes", "2"]) == 0
    assert re.search(r"SAC Pendulum-v1: mean return over 2 episodes: -[\d.]+",
                     capsys.readouterr().out)
    png = tmp_path / "curve.png"
    assert rl_cli.main(["plot", run_dir, "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sac_learns_pendulum(pa_module, tmp_path):
    """Default SAC's greedy policy reaches a mean return >= -200 over 10 evaluation episodes on
    Pendulum-v1 within 20k env steps (rl-zoo's budget)."""
    algo = rl.SACConfig(env="Pendulum-v1", seed=0, output=str(tmp_path),
                        log_to_tensorboard=False).build()
    try:
        best, steps_at_last_eval = -math.inf, 0
        while best < -200 and algo.env_steps_total < 20_000:
            result = algo.train()
            if result["env_steps_total"] - steps_at_last_eval >= 1_000:
                steps_at_last_eval = result["env_steps_total"]
                best = max(best, algo.evaluate(episodes=10)["episode_return_mean"])
    finally:
        algo.stop()
    assert best >= -200, (best, algo.env_steps_total)
