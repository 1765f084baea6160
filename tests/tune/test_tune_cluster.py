"""Trials spread over the nodes of a cluster that `pa.init(address=...)` joined: each trial
actor goes where its resources are, and results come back from every node."""

from __future__ import annotations

import pytest

import pyactor as pa
from pyactor import tune
from test_cluster import CliCluster


def reports_its_node(config):
    tune.report({"node": pa.get_runtime_context().get_node_id(), "x": config["x"]})


@pytest.mark.slow
def test_trials_run_on_every_node_that_has_their_resource(tmp_path):
    """Two nodes with one 'slot' each, trials asking for a slot: both nodes run trials, and
    every trial's result arrives."""
    cluster = CliCluster()
    try:
        cluster.start_head(1, {"slot": 1})
        cluster.add_node(1, {"slot": 1})
        cluster.connect()
        node_ids = set(cluster.node_ids().values())
        trainable = tune.with_resources(reports_its_node, {"cpu": 0, "slot": 1})
        grid = tune.Tuner(trainable, param_space={"x": tune.grid_search(list(range(6)))},
                          run_config=tune.RunConfig(storage_path=str(tmp_path),
                                                    verbose=0)).fit()
        assert sorted(result.metrics["x"] for result in grid) == list(range(6))
        assert not [result.error for result in grid if result.error]
        assert {result.metrics["node"] for result in grid} == node_ids
    finally:
        cluster.stop()
