"""Ape-X DQN: the per-runner epsilons of the paper's formula, the routing of fragments over the
replay shards, the runners' initial priorities against a hand computation, and a tiny run through
the CLI (train, save, evaluate, plot) that restores acting identically."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
import torch

from pyactor import rl
from pyactor.rl import cli as rl_cli
from pyactor.rl import envs as rl_envs
from pyactor.rl.apex import ApexEnvRunner, runner_epsilons
from pyactor.rl.dqn import QModule
from pyactor.rl.module import ModuleSpec
from pyactor.rl.sharded_replay import shard_for


def test_runner_epsilons_follow_the_paper_formula():
    """eps_i = eps^(1 + i/(N-1) * alpha): runner 0 gets eps, the last eps^(1 + alpha), the
    exponents evenly spaced between; one runner gets eps."""
    epsilons = runner_epsilons(8, 0.4, 7.0)
    assert epsilons[0] == pytest.approx(0.4)
    assert epsilons[-1] == pytest.approx(0.4 ** 8)
    exponents = np.log(epsilons) / np.log(0.4)
    np.testing.assert_allclose(np.diff(exponents), 1.0)
    assert runner_epsilons(1, 0.3, 7.0) == [0.3]
    assert runner_epsilons(2, 0.5, 1.0) == pytest.approx([0.5, 0.25])
    with pytest.raises(ValueError, match="num_runners"):
        runner_epsilons(0)


@pytest.mark.parametrize("num_runners,num_shards", [(2, 2), (3, 2), (2, 4), (5, 3)])
def test_shard_routing_spreads_every_runner_over_every_shard(num_runners, num_shards):
    """Over num_shards rounds each runner sends one fragment to each shard, and in one round
    runners with different indices (mod num_shards) write to different shards."""
    counts = collections.Counter()
    for round_index in range(num_shards):
        targets = [shard_for(i, round_index, num_shards) for i in range(num_runners)]
        counts.update((i, s) for i, s in enumerate(targets))
        if num_runners <= num_shards:
            assert len(set(targets)) == num_runners
    assert counts == {(i, s): 1 for i in range(num_runners) for s in range(num_shards)}


def test_runner_hands_in_transitions_with_its_td_errors_as_priorities():
    """An Ape-X runner acts with its own epsilon and returns n-step transitions whose priorities
    are |r + gamma^m (1 - done) max Q(s') - Q(s, a)| under its own Q, without the raw arrays."""
    obs_space, act_space = rl_envs.probe_spaces("CartPole-v1", {})
    spec = ModuleSpec(QModule, obs_space, act_space, {"hidden": [8], "activation": "relu"})
    runner = ApexEnvRunner("CartPole-v1", {}, 3, spec, 0, 1, False,
                           epsilons=[0.5, 0.01], n_step=3, gamma=0.9)
    try:
        fragment = runner.sample(20, epsilon=0.99)  # the driver's epsilon is not this runner's
    finally:
        runner.close()
    assert fragment["epsilon"] == 0.01 and "obs" not in fragment and "rewards" not in fragment
    t = fragment["transitions"]
    assert len(t["obs"]) == 60 and fragment["priorities"].shape == (60,)
    with torch.no_grad():
        q = runner.module.q_values(torch.from_numpy(t["obs"])).numpy()
        next_q = runner.module.q_values(torch.from_numpy(t["next_obs"])).numpy()
    expected = np.abs(t["rewards"] + t["discounts"] * (1 - t["terminateds"]) * next_q.max(1)
                      - q[np.arange(60), t["actions"]])
    np.testing.assert_allclose(fragment["priorities"], expected, rtol=1e-5, atol=1e-6)
    assert (t["discounts"] < 0.9 ** 3 + 1e-6).sum() > 0  # 3-step windows inside the fragment


def test_config_is_registered_and_checked():
    """APEX is in the registry; bad shard counts and epsilons are refused by name."""
    assert rl.get_config_class("apex") is rl.ApexDQNConfig
    with pytest.raises(ValueError, match="num_replay_shards"):
        rl.ApexDQNConfig(num_replay_shards=0)
    with pytest.raises(ValueError, match="apex_epsilon"):
        rl.ApexDQNConfig(apex_epsilon=1.5)
    with pytest.raises(ValueError, match="weights_broadcast_interval"):
        rl.ApexDQNConfig(weights_broadcast_interval=0)


def test_cli_train_save_restore_evaluate(pa_module, tmp_path, capsys):
    """`rl train --algo APEX` runs 3 iterations of 2 runners into 2 shards, saves with the
    replay; the restored algorithm acts by the saved weights and continues with the same
    counters and the periodic broadcasts; `rl evaluate` and `rl plot` read the run."""
    tiny = ('{"num_envs_per_runner": 2, "rollout_fragment_length": 8, "learning_starts": 32, '
            '"train_batch_size": 8, "model": {"hidden": [16]}, "replay_buffer_capacity": 1000, '
            '"weights_broadcast_interval": 20, "store_buffer_in_checkpoints": true, '
            '"replay_batches_per_request": 4, "log_to_tensorboard": false}')
    assert rl_cli.main(["train", "--algo", "APEX", "--env", "CartPole-v1", "--stop",
                        '{"training_iteration": 3}', "--config", tiny, "--seed", "0",
                        "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"iter +3  env steps +96 ", out)
    run_dir = re.search(r"run directory: (\S+)", out).group(1)
    checkpoint = re.search(r"final checkpoint: (\S+)", out).group(1)

    saved = torch.load(f"{checkpoint}/learner.pt", weights_only=False)["module"]
    restored = rl.Algorithm.from_checkpoint(checkpoint)
    try:
        assert isinstance(restored, rl.ApexDQN)
        module = restored.module_spec.build()
        module.load_state_dict(saved)
        observations = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
        assert [restored.compute_single_action(o.numpy()) for o in observations] == \
            module.q_values(observations).argmax(-1).tolist()
        result = restored.train()
        # 32 steps per iteration at replay_ratio 0.5: 16 updates in each iteration.
        assert result["training_iteration"] == 4 and result["env_steps_total"] == 128
        assert result["replay/size"] == 128 and result["learner/num_updates_total"] == 64
        assert result["learner/epsilon_max"] == pytest.approx(0.4)
        assert result["learner/epsilon_min"] == pytest.approx(0.4 ** 8)
        assert np.isfinite(result["learner/loss"])
        # Broadcasts every 20 updates: at build, after iteration 2 (32 updates), at restore and
        # after iteration 4 (16 + 16 since the last); DQN would have sent 6.
        assert restored.weights_version == 4
    finally:
        restored.stop()
    assert rl_cli.main(["evaluate", checkpoint, "--episodes", "2"]) == 0
    assert re.search(r"APEX CartPole-v1: mean return over 2 episodes", capsys.readouterr().out)
    assert rl_cli.main(["plot", run_dir, "-o", str(tmp_path / "curve.png")]) == 0
