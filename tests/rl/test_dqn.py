"""DQN: the TD targets (plain and double Q), the loss, target updates, epsilon-greedy and the
dueling head against hand computations; configs refused by name; a tiny run that trains, saves
(with its replay buffer), restores acting identically, evaluates and is reproducible; and (slow)
that the defaults learn CartPole-v1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pyactor import rl
from pyactor.rl import cli as rl_cli
from pyactor.rl.dqn import QModule, epsilon_greedy, q_targets, td_loss, update_target

TIME_KEYS = {"time_total_s", "time_this_iter_s", "env_steps_per_s"}


def tiny(tmp_path, **kw):
    # Prioritized replay on (DQN's default is uniform), so the tests below exercise every piece.
    base = dict(env="CartPole-v1", num_env_runners=1, num_envs_per_runner=4,
                rollout_fragment_length=8, learning_starts=64, train_batch_size=16,
                prioritized_replay=True, replay_ratio=0.25, replay_buffer_capacity=1000,
                model={"hidden": [16]}, seed=0, output=str(tmp_path), log_to_tensorboard=False)
    return rl.DQNConfig(**{**base, **kw})


# ---------------------------------------------------------------------- loss math
def test_q_targets_plain_and_double():
    """Plain DQN bootstraps from max_a Q_target(s', a); double Q from Q_target at the online
    network's argmax; termination removes the bootstrap and the n-step discount scales it."""
    rewards = torch.tensor([1.0, 2.0, 0.5])
    terminateds = torch.tensor([0.0, 1.0, 0.0])
    discounts = torch.tensor([0.9, 0.9, 0.81])
    next_q_target = torch.tensor([[1.0, 5.0], [3.0, 4.0], [10.0, 2.0]])
    next_q_online = torch.tensor([[9.0, 0.0], [0.0, 9.0], [0.0, 1.0]])
    plain = q_targets(rewards, terminateds, discounts, next_q_target, None)
    double = q_targets(rewards, terminateds, discounts, next_q_target, next_q_online)
    torch.testing.assert_close(plain, torch.tensor([1 + 0.9 * 5, 2.0, 0.5 + 0.81 * 10]))
    torch.testing.assert_close(double, torch.tensor([1 + 0.9 * 1, 2.0, 0.5 + 0.81 * 2]))


def test_td_loss_is_weighted_huber_or_mse():
    """Huber is quadratic inside |delta| <= 1 and linear outside; weights scale each term; the
    TD errors are target - Q."""
    q_taken = torch.tensor([0.0, 0.0, 0.0])
    targets = torch.tensor([0.5, 3.0, -2.0])
    weights = torch.tensor([1.0, 0.5, 2.0])
    loss, errors = td_loss(q_taken, targets, weights, "huber")
    expected = (1.0 * 0.125 + 0.5 * 2.5 + 2.0 * 1.5) / 3
    assert float(loss) == pytest.approx(expected)
    torch.testing.assert_close(errors, targets)
    loss, _ = td_loss(q_taken, targets, weights, "mse")
    assert float(loss) == pytest.approx((0.125 + 0.5 * 4.5 + 2.0 * 2.0) / 3)


def test_target_update_hard_and_soft():
    """tau=1 copies the online weights; tau<1 moves the target that fraction of the way."""
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
    update_target(target, online, 0.25)
    torch.testing.assert_close(target.weight, torch.full((1, 2), 0.25))
    update_target(target, online, 1.0)
    torch.testing.assert_close(target.weight, online.weight)


def _learner(activation="relu", dueling=True, double_q=True, loss_fn="huber", **config):
    import gymnasium as gym
    from pyactor.rl.dqn import DQNLearner
    from pyactor.rl.module import ModuleSpec
    config = rl.DQNConfig(dueling=dueling, double_q=double_q, td_error_loss_fn=loss_fn,
                          model={"hidden": [16, 8], "activation": activation},
                          **config).to_dict()
    spec = ModuleSpec(QModule, gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3),
                      {**config["model"], "dueling": dueling})
    return DQNLearner(spec, config, seed=0)


def _replay_batch(rng: np.random.Generator, *shape: int) -> dict:
    """A batch as the replay actor sends it: [*shape] transitions of numpy arrays."""
    return {"obs": (2 * rng.normal(size=(*shape, 4))).astype(np.float32),
            "next_obs": (2 * rng.normal(size=(*shape, 4))).astype(np.float32),
            "actions": rng.integers(0, 3, shape), "rewards": (3 * rng.normal(size=shape)
                                                             ).astype(np.float32),
            "terminateds": rng.random(shape) < 0.3, "discounts": np.full(shape, 0.97, np.float32),
            "weights": rng.random(shape).astype(np.float32),
            "ids": np.arange(int(np.prod(shape))).reshape(shape)}


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
@pytest.mark.parametrize("dueling,double_q,loss_fn", [
    (True, True, "huber"), (True, False, "mse"), (False, True, "mse"), (False, False, "huber")])
def test_numpy_step_gradients_match_autograd(activation, dueling, double_q, loss_fn):
    """rl/q_step.py's flat gradient, loss, Q(s, a) and TD errors equal autograd's through
    q_values, q_targets and td_loss, for every activation, head, target and loss; after a
    target refresh too."""
    learner = _learner(activation, dueling, double_q, loss_fn)
    step = learner.numpy_step
    assert step is not None
    size = 32
    rng = np.random.default_rng(1)
    batch = _replay_batch(rng, size)
    prepared = step.prepare(batch)
    tensors = {key: torch.as_tensor(value) for key, value in batch.items()}
    for _ in range(2):  # the second round with a changed target network
        loss, q_taken, errors = step.gradients(prepared)
        hand = step.grad.copy()
        for p in learner.parameters:
            p.grad = None
        both = learner.module.q_values(torch.cat([tensors["obs"], tensors["next_obs"]]))
        with torch.no_grad():
            targets = q_targets(tensors["rewards"], tensors["terminateds"].float(),
                                tensors["discounts"],
                                learner.target.q_values(tensors["next_obs"]),
                                both[size:] if double_q else None)
        expected_q = both[:size].gather(-1, tensors["actions"].unsqueeze(-1)).squeeze(-1)
        expected_loss, expected_errors = td_loss(expected_q, targets, tensors["weights"], loss_fn)
        expected_loss.backward()
        expected_grad = torch.cat([p.grad.reshape(-1) for p in learner.parameters]).numpy()
        np.testing.assert_allclose(hand, expected_grad, rtol=1e-4, atol=1e-6)
        assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
        np.testing.assert_allclose(q_taken, expected_q.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(errors, expected_errors.abs().detach().numpy(), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            for param in learner.target.parameters():
                param.add_(torch.as_tensor(0.5 * rng.normal(size=param.shape), dtype=torch.float32))
        step.target_changed()


@pytest.mark.parametrize("options", [
    dict(grad_clip=0.1, target_network_update_freq=3),
    dict(dueling=False, double_q=False, loss_fn="mse", grad_clip=None, tau=0.3,
         target_network_update_freq=2, activation="tanh"),
])
def test_numpy_update_matches_autograd_update(options):
    """Updates on stacked chunks through the numpy step (clipping, Adam on the flat vector,
    target refreshes on the flat target) leave the same weights, target, Adam moments, metrics
    and priorities as the same updates through autograd."""
    fast, reference = _learner(**options), _learner(**options)
    reference.numpy_step = None  # the autograd path
    rng = np.random.default_rng(2)
    for _ in range(3):
        chunk = _replay_batch(rng, 4, 32)
        got, want = fast.update([chunk]), reference.update([chunk])
    np.testing.assert_allclose(fast.get_flat_weights(), reference.get_flat_weights(),
                               rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(fast.target.parameters(), reference.target.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(fast.optimizer.exp_avg_sq, reference.optimizer.exp_avg_sq):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-8)
    assert fast.num_updates == reference.num_updates == 12
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_allclose(got["priorities"], want["priorities"], rtol=1e-4, atol=1e-5)
    for key in ("loss", "q_mean", "td_error_abs", "grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-4), key
    assert got["num_updates"] == 4
    if options["grad_clip"]:
        assert got["grad_norm"] / 4 > options["grad_clip"]  # clipping was exercised


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
@pytest.mark.parametrize("dueling", [True, False])
def test_numpy_copy_acts_like_the_module(activation, dueling):
    """QModule's numpy copy (what runners and evaluate() act with) gives the module's Q-values
    and greedy actions, follows set_flat_weights, and explores at rate epsilon."""
    import gymnasium as gym
    module = QModule(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3),
                     {"hidden": [16, 8], "activation": activation, "dueling": dueling,
                      "explore_epsilon": 0.5})
    policy = module.numpy_policy()
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape))
    policy.set_flat_weights(module.get_flat_weights())
    obs = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    with torch.no_grad():
        expected = module.q_values(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(policy.q_values(obs), expected, rtol=1e-5, atol=1e-5)
    assert policy.greedy(obs)["actions"].tolist() == expected.argmax(1).tolist()
    many = np.repeat(obs, 50, axis=0)
    changed = policy.explore(many, np.random.default_rng(0))["actions"] != expected.argmax(1).repeat(50)
    assert float(changed.mean()) == pytest.approx(0.5 * 2 / 3, abs=0.02)
    with pytest.raises(ValueError, match="weights vector has 3 values"):
        policy.set_flat_weights(np.zeros(3, np.float32))


def test_epsilon_greedy_explores_at_rate_epsilon():
    """With epsilon 0 every action is greedy; with epsilon e a fraction of about e(1 - 1/A) of
    actions differ from the greedy one."""
    q_values = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(20_000, 1)
    assert (epsilon_greedy(q_values, 0.0) == 1).all()
    generator = torch.Generator().manual_seed(0)
    actions = epsilon_greedy(q_values, 0.4, generator)
    assert float((actions != 1).float().mean()) == pytest.approx(0.4 * 0.75, abs=0.015)


def test_dueling_head_combines_value_and_centred_advantage():
    """Q(s, a) = V(s) + A(s, a) - mean_a A(s, a) (Wang et al. 2016, eq. 9)."""
    import gymnasium as gym
    module = QModule(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4),
                     {"hidden": [8], "activation": "relu", "dueling": True})
    obs = torch.randn(5, 3)
    features = module.trunk(obs)
    advantage = module.advantage(features)
    expected = module.value(features) + advantage - advantage.mean(-1, keepdim=True)
    torch.testing.assert_close(module.q_values(obs), expected)
    assert module.forward_inference(obs)["actions"].tolist() == expected.argmax(-1).tolist()
    with pytest.raises(ValueError, match="Discrete action space"):
        QModule(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (1,)), {})


def test_config_refuses_bad_values_by_name():
    """Unknown keys, wrong types and out-of-range values name the key; DQN is registered."""
    with pytest.raises(ValueError, match="unknown config key 'taus'.*did you mean tau"):
        rl.DQNConfig().training(taus=0.5)
    with pytest.raises(TypeError, match="DQNConfig.double_q must be bool"):
        rl.DQNConfig(double_q=1)
    with pytest.raises(ValueError, match="tau must be in"):
        rl.DQNConfig(tau=0.0)
    with pytest.raises(ValueError, match="td_error_loss_fn"):
        rl.DQNConfig(td_error_loss_fn="l1")
    with pytest.raises(ValueError, match="epsilon needs"):
        rl.DQNConfig(epsilon=[[10, 1.0], [5, 0.1]])
    assert rl.get_config_class("dqn") is rl.DQNConfig
    config = rl.DQNConfig().environment("CartPole-v1").training(n_step=1, dueling=False)
    assert (config.env, config.n_step, config.dueling) == ("CartPole-v1", 1, False)


def test_box_action_env_is_refused(pa_module, tmp_path):
    """DQN on an env with Box actions fails at build with a message naming the space."""
    with pytest.raises(ValueError, match="Discrete action space"):
        tiny(tmp_path, env="Pendulum-v1").build()


# ---------------------------------------------------------------------- the algorithm
def _comparable(result):
    return {k: v for k, v in result.items() if k not in TIME_KEYS}


def test_train_save_restore_evaluate(pa_module, tmp_path):
    """A tiny run learns from replay (updates at replay_ratio once learning_starts transitions
    are in), reports the replay buffer's size and bytes, saves with its buffer, and the restored
    algorithm acts identically, keeps its counters and buffer, and evaluates greedily."""
    algo = tiny(tmp_path, store_buffer_in_checkpoints=True).build()
    try:
        results = [algo.train() for _ in range(3)]
        path = algo.save(str(tmp_path / "ckpt"))
        observations = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
        actions = [algo.compute_single_action(o) for o in observations]
        evaluation = algo.evaluate(episodes=3)
    finally:
        algo.stop()
    assert [r["env_steps_total"] for r in results] == [32, 64, 96]
    assert [r["learner/num_updates"] for r in results] == [0, 8, 8]
    assert results[-1]["learner/num_updates_total"] == 16
    assert results[-1]["replay/size"] == 96
    # obs and next_obs (2 x 4 float32), action, reward, terminated, discount, id + 2 trees.
    per_transition = 32 + 8 + 4 + 1 + 4 + 8
    assert results[-1]["replay/size_bytes"] == 1000 * per_transition + 2 * 2 * 1024 * 8
    assert np.isfinite(results[-1]["learner/loss"]) and results[-1]["learner/epsilon"] < 1.0
    assert results[-1]["learner/lr"] == pytest.approx(1.5e-3 - 1.4e-3 * 96 / 30_000)  # lr_schedule
    assert evaluation["episodes"] == 3 and evaluation["episode_return_mean"] > 0

    restored = rl.Algorithm.from_checkpoint(path)
    try:
        assert isinstance(restored, rl.DQN)
        assert [restored.compute_single_action(o) for o in observations] == actions
        result = restored.train()
        assert result["training_iteration"] == 4 and result["env_steps_total"] == 128
        assert result["replay/size"] == 128 and result["learner/num_updates"] == 8
    finally:
        restored.stop()


def test_restore_without_buffer_refills_before_learning(pa_module, tmp_path):
    """Without store_buffer_in_checkpoints the restored buffer is empty, so learning waits for
    learning_starts new transitions again."""
    algo = tiny(tmp_path).build()
    try:
        for _ in range(3):
            algo.train()
        path = algo.save(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    restored = rl.Algorithm.from_checkpoint(path)
    try:
        result = restored.train()
        assert result["replay/size"] == 32 and result["learner/num_updates"] == 0
    finally:
        restored.stop()


@pytest.mark.parametrize("options", [
    dict(async_sampling=False),
    dict(async_sampling=False, prioritized_replay=False, double_q=False, dueling=False,
         n_step=1, tau=0.1, target_network_update_freq=1, td_error_loss_fn="mse"),
])
def test_same_seed_gives_identical_runs(pa_module, tmp_path, options):
    """With a seed and synchronous sampling two runs agree iteration by iteration, with every
    option on (prioritized, double, dueling, n-step) and with all of them off."""
    runs = []
    for _ in range(2):
        algo = tiny(tmp_path, **options).build()
        try:
            runs.append([_comparable(algo.train()) for _ in range(4)])
            runs[-1].append(algo.learner.call("get_flat_weights").tolist())
        finally:
            algo.stop()
    assert runs[0] == runs[1]
    assert runs[0][-2]["learner/num_updates_total"] == 24


def test_learner_as_an_actor_reads_batches_from_the_replay(pa_module, tmp_path):
    """num_learners=1: the learner actor gets each batch by ref from the replay actor."""
    algo = tiny(tmp_path, num_learners=1).build()
    try:
        results = [algo.train() for _ in range(3)]
        assert algo.learner.remote
    finally:
        algo.stop()
    assert results[-1]["learner/num_updates"] == 8 and np.isfinite(results[-1]["learner/loss"])


@pytest.mark.slow
def test_cli_trains_and_evaluates_dqn(tmp_path, pa_module, capsys):
    """`pyactor rl train --algo DQN` runs to its stop condition and writes a checkpoint that
    `pyactor rl evaluate` loads."""
    env = {**os.environ}
    env.pop("PYACTOR_ADDRESS", None)
    config = json.dumps({"num_envs_per_runner": 2, "rollout_fragment_length": 8,
                         "learning_starts": 16, "train_batch_size": 8, "model": {"hidden": [16]}})
    out = subprocess.run([sys.executable, "-m", "pyactor.cli", "rl", "train", "--algo", "DQN",
                          "--env", "CartPole-v1", "--stop", '{"training_iteration": 3}',
                          "--config", config, "--seed", "0", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("iter ")]
    assert len(lines) == 3 and re.match(r"iter +3  env steps +48 ", lines[-1])
    checkpoint = re.search(r"final checkpoint: (\S+)", out.stdout).group(1)
    assert "DQN_CartPole-v1_" in checkpoint
    assert rl_cli.main(["evaluate", checkpoint, "--episodes", "2"]) == 0
    assert re.search(r"DQN CartPole-v1: mean return over 2 episodes: [\d.]+",
                     capsys.readouterr().out)


@pytest.mark.slow
def test_dqn_learns_cartpole(pa_module, tmp_path):
    """Default DQN's greedy policy reaches a mean return of 475 over 20 evaluation episodes on
    CartPole-v1 within 60k env steps."""
    algo = rl.DQNConfig(env="CartPole-v1", seed=0, output=str(tmp_path),
                        log_to_tensorboard=False).build()
    try:
        best, steps_at_last_eval = 0.0, 0
        while best < 475 and algo.env_steps_total < 60_000:
            result = algo.train()
            if result["env_steps_total"] - steps_at_last_eval >= 2_000:
                steps_at_last_eval = result["env_steps_total"]
                best = max(best, algo.evaluate(episodes=20)["episode_return_mean"])
    finally:
        algo.stop()
    assert best >= 475, (best, algo.env_steps_total)
