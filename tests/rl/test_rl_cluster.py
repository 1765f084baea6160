"""Env runners on another node: a custom resource places them there, and training works the
same as on one host (fragments cross stores, weights reach the other node's runners)."""

from __future__ import annotations

import pytest

import pyactor as pa
from pyactor import rl
from test_cluster import CliCluster, _session_of


@pytest.mark.slow
def test_runners_placed_on_a_second_node_by_custom_resource(tmp_path):
    """Runners asking for a resource only node B has run there; two iterations train."""
    cluster = CliCluster()
    try:
        cluster.start_head(1, {"head": 1})
        node_b = cluster.add_node(2, {"rl_runners": 2})
        cluster.connect()
        config = rl.PPOConfig(env="CartPole-v1", num_env_runners=2, num_envs_per_runner=2,
                              rollout_fragment_length=8, num_epochs=1, minibatch_size=16,
                              custom_resources_per_env_runner={"rl_runners": 1}, seed=0,
                              output=str(tmp_path), log_to_tensorboard=False)
        algo = config.build()
        try:
            assert {_session_of(pid) for pid in algo.env_runner_group.runner_pids()} == {node_b}
            results = [algo.train() for _ in range(2)]
        finally:
            algo.stop()
        assert results[-1]["env_steps_total"] == 2 * 2 * 2 * 8
        assert results[-1]["num_env_runner_restarts"] == 0
    finally:
        cluster.stop()
