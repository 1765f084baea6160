"""Custom resources decide how many trials run at once; a request no node can meet is an
error at once."""

import pytest

from pyactor import tune


def reports_pid(config):
    import os
    tune.report({"pid": os.getpid()})


def test_custom_resources_limit_concurrency(pa_fresh, tmp_path):
    """Trials asking for one unit of a custom resource the node has two of: two processes."""
    pa_fresh.init(num_cpus=2, resources={"slot": 2})
    trainable = tune.with_resources(reports_pid, {"cpu": 0, "slot": 1})
    grid = tune.Tuner(trainable, param_space={"x": tune.grid_search(list(range(6)))},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert len({r.metrics["pid"] for r in grid}) == 2
    too_big = tune.with_resources(reports_pid, {"cpu": 0, "slot": 3})
    with pytest.raises(tune.TuneError, match="asks for"):
        tune.Tuner(too_big, run_config=tune.RunConfig(storage_path=str(tmp_path / "b"),
                                                      verbose=0)).fit()


def test_resources_must_be_numbers():
    with pytest.raises(ValueError, match="resource 'gpu' must be a non-negative number"):
        tune.with_resources(reports_pid, {"gpu": -1})
