"""A3C, IMPALA and APPO on the asynchronous pipelines (rl/async_learning.py): a smoke run each on
a tiny budget (train, policy lag reported, save, restore with the same actions, evaluate), the
command line once for the family (train, evaluate, plot), and InFlight's no-barrier and
dead-runner behaviour without processes."""

from __future__ import annotations

import asyncio
import re
import types

import numpy as np
import pytest

from pyactor import rl
from pyactor.exceptions import ActorDiedError
from pyactor.rl import cli as rl_cli
from pyactor.rl.async_learning import InFlight

TINY = dict(num_envs_per_runner=4, rollout_fragment_length=8, log_to_tensorboard=False, seed=0)
RESULT_KEYS = ("training_iteration", "env_steps_total", "episodes_total", "episode_return_mean",
               "time_total_s", "env_steps_per_s", "num_env_runner_restarts", "policy_lag",
               "policy_lag_max", "learner/policy_loss", "learner/vf_loss", "learner/entropy",
               "learner/num_updates")


def save_stop_restore(algo, checkpoint, algo_class):
    """Save and stop `algo` (its runners free their CPUs), restore with the runner in the driver
    (no process to start): same counters and actions; it trains on and evaluates."""
    observations = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    actions = [algo.compute_single_action(o) for o in observations]
    algo.save(checkpoint)
    algo.stop()
    again = algo_class.from_checkpoint(checkpoint, num_env_runners=0)
    try:
        assert isinstance(again, algo_class)
        assert again.env_steps_total == algo.env_steps_total
        assert [again.compute_single_action(o) for o in observations] == actions
        assert again.train()["training_iteration"] == algo.iteration + 1
        assert again.evaluate(episodes=2)["episodes"] == 2
    finally:
        again.stop()


@pytest.mark.slow
def test_a3c_applies_gradients_as_they_arrive_with_the_lag_reported(pa_module, tmp_path):
    """Two runners send gradients computed on their own weights copy; each is applied on arrival
    (one update per gradient), the lag of the other runner's gradient shows, and a checkpoint
    restores the same policy."""
    algo = rl.A3CConfig(env="CartPole-v1", num_env_runners=2, output=str(tmp_path), **TINY).build()
    try:
        results = [algo.train()]
        # until both runners delivered: the later one's gradient waited behind an update
        while max(r["policy_lag_max"] for r in results) < 1 and len(results) < 30:
            results.append(algo.train())
        for key in RESULT_KEYS:
            assert key in results[-1], key
        gradients = sum(r["learner/num_updates"] for r in results)
        assert gradients == results[-1]["env_steps_total"] // (4 * 8)  # one step per fragment
        assert algo.weights_version == 1 + gradients
        assert all(0 <= r["policy_lag"] <= r["policy_lag_max"] <= gradients for r in results)
        assert max(r["policy_lag_max"] for r in results) >= 1
        save_stop_restore(algo, str(tmp_path / "ckpt"), rl.A3C)
    finally:
        algo.stop()


@pytest.mark.slow
def test_appo_consumes_fragments_while_the_runner_samples_on(pa_module, tmp_path):
    """One runner keeps sampling while the learner updates, so every fragment after the first
    was acted by weights exactly one update old; a checkpoint (with the target network)
    restores the same policy."""
    algo = rl.APPOConfig(env="CartPole-v1", num_env_runners=1, minibatch_size=16,
                         use_kl_loss=True, output=str(tmp_path), **TINY).build()
    try:
        first, second = algo.train(), algo.train()
        for key in RESULT_KEYS + ("learner/kl", "learner/kl_coeff", "learner/mean_rho"):
            assert key in second, key
        assert first["policy_lag"] == 0.0 and second["policy_lag"] == 1.0
        assert second["learner/num_sgd_steps"] == 2 * 2  # 2 epochs x (4 envs / 2 per minibatch)
        save_stop_restore(algo, str(tmp_path / "ckpt"), rl.APPO)
    finally:
        algo.stop()


@pytest.mark.slow
def test_impala_cli_train_evaluate_plot(pa_module, tmp_path, capsys):
    """`pyactor rl train --algo IMPALA` prints its progress lines and checkpoint; the checkpoint
    restores and evaluates; `rl plot` draws the run."""
    config = '{"num_env_runners": 1, "num_envs_per_runner": 4, "rollout_fragment_length": 8}'
    assert rl_cli.main(["train", "--algo", "IMPALA", "--env", "CartPole-v1", "--stop",
                        '{"training_iteration": 2}', "--config", config, "--seed", "0",
                        "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^iter +\d", out, re.M)) == 2
    checkpoint = re.search(r"final checkpoint: (\S+)", out).group(1)
    run_dir = re.search(r"run directory: (\S+)", out).group(1)
    assert rl_cli.main(["evaluate", checkpoint, "--episodes", "2"]) == 0
    assert re.search(r"IMPALA CartPole-v1: mean return over 2 episodes", capsys.readouterr().out)
    algo = rl.Algorithm.from_checkpoint(checkpoint, num_env_runners=0)
    try:
        assert isinstance(algo, rl.IMPALA) and algo.env_steps_total == 2 * 4 * 8
        result = algo.train()
        for key in RESULT_KEYS:
            assert key in result, key
    finally:
        algo.stop()
    png = tmp_path / "curve.png"
    assert rl_cli.main(["plot", run_dir, "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeRunnerGroup:
    """Two runners whose work finishes when the test says so (no processes)."""

    def __init__(self):
        self.local = None
        ready = asyncio.get_running_loop().create_future()
        ready.set_result(0)
        self.runners = [types.SimpleNamespace(pid=types.SimpleNamespace(remote=lambda: ready))
                        for _ in range(2)]
        self.deaths, self.delivered = [], []

    def runner_died(self, index, error):
        self.deaths.append(index)

    def runner_delivered(self, index):
        self.delivered.append(index)


async def test_in_flight_returns_work_as_it_arrives_and_asks_a_dead_runner_again():
    """The runner that finishes first is returned without waiting for the other; a runner that
    died is counted, gets on_restart, and is asked again while the other goes on."""
    group = FakeRunnerGroup()
    release = {0: asyncio.Event(), 1: asyncio.Event()}
    calls = {0: 0, 1: 0}

    async def work(index, n):
        if (index, n) == (1, 0):
            raise ActorDiedError("runner 1 was killed")
        await release[index].wait()
        return index, n

    def submit(index):
        calls[index] += 1
        return work(index, calls[index] - 1)

    restarted = []
    in_flight = InFlight(group, submit, on_restart=restarted.append)
    release[0].set()
    assert await in_flight.ready() == [(0, (0, 0))]
    assert group.deaths == [1] and restarted == [1] and calls[1] == 2
    release[0].clear()
    in_flight.start(0)
    release[1].set()
    assert await in_flight.ready() == [(1, (1, 1))]  # runner 0's second request still runs
    assert group.delivered == [0, 1] and set(in_flight.tasks) == {0}
    in_flight.close()
