"""pyactor.tune: hyperparameter search, each trial run by a trial actor; the API of Ray Tune.

    from pyactor import tune

    def trainable(config):
        for step in range(100):
            tune.report({"loss": (config["lr"] - 0.01) ** 2 / (step + 1)})

    results = tune.Tuner(trainable, param_space={"lr": tune.loguniform(1e-4, 1e-1)},
                         tune_config=tune.TuneConfig(metric="loss", mode="min",
                                                     num_samples=16)).fit()
    print(results.get_best_result().config)

Names load on first use (PEP 562), so a trial actor that imports `pyactor.tune` for
`tune.report` does not import the controller, the loggers or the searchers. Module map:
tuner.py (Tuner, tune.run) -> controller.py (the loop) -> actor_pool.py / trial_actor.py /
session.py (the trial's side) ; experiment_state.py, loggers.py, tensorboard_writer.py,
progress.py, result_grid.py, plot.py ; search/ and schedulers/ (the decisions).
"""

from __future__ import annotations

from pyactor._private.lazy_exports import lazy_exports

_EXPORTS = {
    "report": "session", "get_checkpoint": "session", "get_trial_id": "session",
    "get_trial_dir": "session",
    "Checkpoint": "checkpoint",
    "Trainable": "trainable", "with_resources": "trainable",
    "TuneConfig": "config", "RunConfig": "config", "FailureConfig": "config",
    "CheckpointConfig": "config",
    "Tuner": "tuner", "run": "tuner",
    "TuneError": "controller",
    "ResultGrid": "result_grid", "Result": "result_grid", "ExperimentAnalysis": "result_grid",
    "Stopper": "stopper", "MaximumIterationStopper": "stopper", "TimeoutStopper": "stopper",
    "Trial": "trial", "TrialStatus": "trial",
}
_SEARCH_EXPORTS = {
    "uniform", "quniform", "loguniform", "qloguniform", "randn", "qrandn", "randint",
    "qrandint", "lograndint", "qlograndint", "choice", "grid_search", "sample_from",
    "Searcher", "BasicVariantGenerator", "ConcurrencyLimiter", "Repeater", "TPESearch",
}
_SCHEDULER_EXPORTS = {
    "TrialScheduler", "FIFOScheduler", "ASHAScheduler", "AsyncHyperBandScheduler",
    "HyperBandScheduler", "MedianStoppingRule", "PopulationBasedTraining",
}

__all__ = sorted(set(_EXPORTS) | _SEARCH_EXPORTS | _SCHEDULER_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), {
    **{name: f"pyactor.tune.{module}" for name, module in _EXPORTS.items()},
    **dict.fromkeys(_SEARCH_EXPORTS, "pyactor.tune.search"),
    **dict.fromkeys(_SCHEDULER_EXPORTS, "pyactor.tune.schedulers")})
