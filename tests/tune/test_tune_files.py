"""What a person looks at: the TensorBoard file (read back by TensorBoard's own reader), the
plot that `pyactor tune plot` writes, the status lines, and the result grid's dataframes."""

import os
import subprocess
import sys

import pytest

from pyactor import tune
from pyactor.tune.tensorboard_writer import crc32c


@pytest.fixture(scope="module", autouse=True)
def _pa(pa_module):
    yield pa_module


def decaying(config):
    for step in range(1, 9):
        tune.report({"loss": config["lr"] * 10 / step + config["seed"] * 0.01,
                     "nested": {"a": step}})


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A grid over lr (3 values) x 2 seeds, ASHA stopping some early."""
    storage = tmp_path_factory.mktemp("files")
    grid = tune.Tuner(
        decaying,
        param_space={"lr": tune.grid_search([0.001, 0.01, 0.1]), "seed": tune.choice([0, 1])},
        tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=2,
                                    scheduler=tune.ASHAScheduler(max_t=8, grace_period=2,
                                                                 reduction_factor=2)),
        run_config=tune.RunConfig(name="exp", storage_path=str(storage), verbose=0)).fit()
    return grid


def test_crc32c_known_value():
    """CRC-32C of "123456789" is 0xE3069283 (the standard check value)."""
    assert crc32c(b"123456789") == 0xE3069283


def test_tensorboard_reads_scalars_and_hparams(experiment):
    """TensorBoard's reader finds every result's scalars and the trial's HParams session."""
    accumulator_module = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    result = experiment[0]
    accumulator = accumulator_module.EventAccumulator(result.path)
    accumulator.Reload()
    losses = accumulator.Scalars("loss")
    assert [e.step for e in losses] == list(range(1, result.metrics["training_iteration"] + 1))
    assert losses[-1].value == pytest.approx(result.metrics["loss"], rel=1e-6)
    assert "nested/a" in accumulator.Tags()["scalars"]
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(result.config["lr"])
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == 1


def test_plot_cli_writes_png(experiment, tmp_path):
    """`pyactor tune plot EXP_DIR` writes a PNG (curves + the lr sensitivity panel)."""
    pytest.importorskip("matplotlib")
    output = tmp_path / "plot.png"
    completed = subprocess.run([sys.executable, "-m", "pyactor.cli", "tune", "plot",
                                experiment.experiment_path, "-o", str(output)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from pyactor.tune.plot import load_curves
    metric, grid_path, curves = load_curves(experiment.experiment_path)
    assert metric == "loss" and grid_path == ("lr",) and len(curves) == 6
    lengths = sorted(len(points) for _, points in curves)
    assert lengths[0] < lengths[-1] == 8       # some trials stopped early: marked on the plot


def test_plot_rejects_an_unknown_metric(experiment):
    from pyactor.tune.plot import load_curves
    with pytest.raises(ValueError, match="no trial reported 'accuracy'"):
        load_curves(experiment.experiment_path, metric="accuracy")


def test_dataframes(experiment):
    """get_dataframe has a row per trial with config/ columns; metrics_dataframe the history."""
    pytest.importorskip("pandas")
    frame = experiment.get_dataframe()
    assert len(frame) == 6 and {"loss", "config/lr", "config/seed"} <= set(frame.columns)
    best = experiment.get_best_result()
    history = best.metrics_dataframe
    assert list(history["training_iteration"]) == list(range(1, len(history) + 1))
    assert experiment.get_best_result(scope="all").metrics["loss"] <= best.metrics["loss"]


def test_plain_status_lines_when_not_a_terminal(tmp_path):
    """verbose=1 without a terminal prints plain status lines ending with the best trial."""
    script = tmp_path / "driver.py"
    script.write_text(
        "from pyactor import tune\n"
        "def f(config):\n"
        "    tune.report({'loss': config['x']})\n"
        "tune.Tuner(f, param_space={'x': tune.grid_search([3, 1, 2])},\n"
        "    tune_config=tune.TuneConfig(metric='loss', mode='min'),\n"
        f"    run_config=tune.RunConfig(storage_path={str(tmp_path)!r})).fit()\n")
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                               timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert completed.returncode == 0, completed.stderr
    last = completed.stdout.strip().splitlines()[-1]
    assert "3 TERMINATED" in last and "best loss=1" in last and "(finished)" in last


def test_rich_table_shows_states_best_and_running_rows():
    """The live table: counts by state and the best in its title, a row per running trial."""
    pytest.importorskip("rich")
    from rich.console import Console
    from pyactor.tune.progress import RichReporter
    from pyactor.tune.trial import Trial, TrialStatus

    class View:
        num_results = 7

        def get_trials(self):
            return trials

    trials = [Trial("t1", {"x": 1}, TrialStatus.RUNNING, {"loss": 0.5, "training_iteration": 3},
                    experiment_tag="0_x=1"),
              Trial("t2", {"x": 2}, TrialStatus.TERMINATED, {"loss": 0.1,
                                                               "training_iteration": 9},
                    experiment_tag="1_x=2"),
              Trial("t3", {"x": 3}, TrialStatus.PENDING)]
    console = Console(width=120, record=True)
    console.print(RichReporter("loss", "min")._render(View()))
    text = console.export_text()
    assert "[tune]" in text and "1 PENDING, 1 RUNNING," in text and "1 TERMINATED" in text
    assert "best loss=0.1" in text
    assert "t1" in text and "RUNNING" in text and "BEST" in text and "t3" not in text


def test_stop_dict_with_a_key_never_reported(tmp_path):
    """stop={"accuracy": 0.9} when the trainable reports only loss: an error naming both."""
    def reports_loss(config):
        tune.report({"loss": 1.0})

    tuner = tune.Tuner(reports_loss, run_config=tune.RunConfig(
        storage_path=str(tmp_path), verbose=0, stop={"accuracy": 0.9}))
    with pytest.raises(ValueError, match=r"names \['accuracy'\].*'loss'"):
        tuner.fit()
