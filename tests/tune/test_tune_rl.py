"""tune.Tuner("PPO", ...): an rl algorithm by name, on a tiny budget."""

import pytest

from pyactor import tune
from pyactor.tune.trial import TrialStatus

pytest.importorskip("torch")
pytest.importorskip("gymnasium")


def test_unknown_algorithm_name_fails_at_the_tuner_line():
    with pytest.raises(ValueError, match="unknown algorithm 'NOPE'"):
        tune.Tuner("NOPE")


@pytest.mark.slow
def test_ppo_by_name_two_trials(pa_fresh, tmp_path):
    """Two PPO trials (a grid over lr) run two iterations each and save a final checkpoint."""
    pa_fresh.init(num_cpus=2)
    space = {"env": "CartPole-v1", "lr": tune.grid_search([1e-3, 3e-4]), "seed": 0,
             "num_env_runners": 0, "num_envs_per_runner": 2, "rollout_fragment_length": 16,
             "minibatch_size": 32, "num_epochs": 1}
    grid = tune.Tuner(
        "PPO", param_space=space,
        tune_config=tune.TuneConfig(metric="episode_return_mean", mode="max"),
        run_config=tune.RunConfig(name="ppo", storage_path=str(tmp_path), verbose=0,
                                  stop={"training_iteration": 2},
                                  checkpoint_config=tune.CheckpointConfig(
                                      checkpoint_frequency=2))).fit()
    assert grid.num_errors == 0, grid.errors
    assert len(grid) == 2
    for result in grid:
        assert result.status == TrialStatus.TERMINATED
        assert result.metrics["training_iteration"] == 2
        assert result.checkpoint is not None
    assert {r.config["lr"] for r in grid} == {1e-3, 3e-4}
