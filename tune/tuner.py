"""Tuner (and tune.run): check the inputs, set up the experiment folder, run the controller,
hand back a ResultGrid; Tuner.restore / RunConfig(resume="auto") continue a stopped one.

Every argument is checked here, before any trial starts: a space that is not a dict, a mode that
is not min/max, a trainable that cannot be pickled are errors at the Tuner(...) line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time

import cloudpickle

from pyactor.tune import experiment_state
from pyactor.tune.config import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from pyactor.tune.controller import TuneController, TuneError
from pyactor.tune.result_grid import ExperimentAnalysis, ResultGrid
from pyactor.tune.stopper import make_stopper
from pyactor.tune.trainable import (_WithResources, check_function_trainable, normalize_resources,
                                    trainable_name)
from pyactor.tune.trial import TrialStatus

DEFAULT_RESOURCES = {"CPU": 1}


class TrainableSpec:
    """The trainable as the controller ships it: pickled once, keyed by its content."""

    def __init__(self, trainable):
        resources = None
        if isinstance(trainable, _WithResources):
            trainable, resources = trainable.trainable, trainable.resources
        if isinstance(trainable, str):
            from pyactor.tune.rl_trainable import algorithm_trainable
            trainable = algorithm_trainable(trainable)
        check_function_trainable(trainable)
        self.trainable = trainable
        self.name = trainable_name(trainable)
        self._resources = resources if resources is not None else getattr(
            trainable, "default_resource_request", None) or DEFAULT_RESOURCES
        # What the trial actor itself asks the node for, when not the trial's whole request
        # (an rl algorithm's env runners ask for their own CPUs).
        self.actor_resources = getattr(trainable, "actor_resources", None)
        try:
            self.blob = cloudpickle.dumps(trainable)
        except Exception as error:
            raise TypeError(f"trainable {self.name!r} cannot be pickled, so it cannot be sent "
                            f"to a trial actor: {error}. Move what it captures (locks, open "
                            f"files, clients) into the function body") from error
        self.key = hashlib.sha1(self.blob).hexdigest()[:16]
        self.sent_to: set = set()          # actors that already hold the blob

    def resources_for(self, config: dict) -> dict:
        resources = self._resources
        if callable(resources):
            resources = resources(config)
        return normalize_resources(resources)


class Tuner:
    def __init__(self, trainable=None, *, param_space: dict | None = None,
                 tune_config: TuneConfig | None = None, run_config: RunConfig | None = None,
                 _restore_state: dict | None = None, _experiment_dir: str | None = None):
        if trainable is None:
            raise TypeError("Tuner() needs a trainable: a function of config, a tune.Trainable "
                            "subclass or an rl algorithm's name")
        param_space = {} if param_space is None else param_space
        if not isinstance(param_space, dict):
            raise TypeError(f"param_space must be a dict of parameter names to values or "
                            f"search-space domains, got {type(param_space).__name__}")
        if tune_config is not None and not isinstance(tune_config, TuneConfig):
            raise TypeError(f"tune_config must be a tune.TuneConfig, "
                            f"got {type(tune_config).__name__}")
        if run_config is not None and not isinstance(run_config, RunConfig):
            raise TypeError(f"run_config must be a tune.RunConfig, "
                            f"got {type(run_config).__name__}")
        self._spec = TrainableSpec(trainable)
        self._param_space = param_space
        self._tune_config = tune_config or TuneConfig()
        run_config = run_config or RunConfig()
        run_config = dataclasses.replace(
            run_config, failure_config=run_config.failure_config or FailureConfig(),
            checkpoint_config=run_config.checkpoint_config or CheckpointConfig())
        self._run_config = run_config
        self._stopper = make_stopper(run_config.stop)
        name = run_config.name or f"{self._spec.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        self._experiment_dir = _experiment_dir or os.path.join(run_config.storage_root(), name)
        self._state = _restore_state
        if self._state is None and run_config.resume == "auto" and \
                experiment_state.exists(self._experiment_dir):
            self._state = experiment_state.load(self._experiment_dir)
        self._restart_errored: bool | None = None
        self._searcher, self._scheduler = self._search_pieces()

    def _search_pieces(self):
        from pyactor.tune.schedulers import FIFOScheduler
        from pyactor.tune.search import BasicVariantGenerator
        config = self._tune_config
        searcher = config.search_alg or BasicVariantGenerator()
        scheduler = config.scheduler or FIFOScheduler()
        searcher.set_search_properties(config.metric, config.mode, config=self._param_space,
                                       num_samples=config.num_samples)
        scheduler.set_search_properties(config.metric, config.mode)
        return searcher, scheduler

    @classmethod
    def restore(cls, path: str, trainable, *, resume_unfinished: bool = True,
                resume_errored: bool = False, restart_errored: bool = False,
                param_space: dict | None = None) -> "Tuner":
        """Continue the experiment in `path` where it stopped: finished trials stay finished,
        the searcher and scheduler keep their history, the total number of samples stays."""
        path = os.path.abspath(os.path.expanduser(path))
        state = experiment_state.load(path)
        setup = experiment_state.load_setup(path)
        run_config = dataclasses.replace(setup["run_config"], resume=None)
        tuner = cls(trainable, param_space=param_space if param_space is not None
                    else setup["param_space"], tune_config=setup["tune_config"],
                    run_config=run_config, _restore_state=state, _experiment_dir=path)
        if resume_errored or restart_errored:
            tuner._restart_errored = resume_errored
        return tuner

    @classmethod
    def can_restore(cls, path: str) -> bool:
        return experiment_state.exists(os.path.abspath(os.path.expanduser(path)))

    def fit(self) -> ResultGrid:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.fit_async())
        raise RuntimeError("Tuner.fit() was called inside a running event loop: "
                           "use `await tuner.fit_async()` there")

    async def fit_async(self) -> ResultGrid:
        from pyactor.tune.progress import make_reporter
        if self._state is None:
            experiment_state.save_setup(self._experiment_dir, {
                "param_space": self._param_space, "tune_config": self._tune_config,
                "run_config": self._run_config, "trainable_name": self._spec.name})
        controller = TuneController(
            trainable_spec=self._spec, param_space=self._param_space,
            tune_config=self._tune_config, run_config=self._run_config,
            experiment_dir=self._experiment_dir, searcher=self._searcher,
            scheduler=self._scheduler, stopper=self._stopper, state=self._state,
            progress=make_reporter(self._run_config.verbose, self._tune_config.metric,
                                   self._tune_config.mode))
        if self._restart_errored is not None:
            controller.restart_errored(from_checkpoint=self._restart_errored)
        trials = await controller.run()
        self.controller = controller
        if self._run_config.failure_config.fail_fast == "raise":
            errored = [t for t in trials if t.status == TrialStatus.ERROR]
            if errored:
                raise TuneError(f"trial {errored[0].trial_id} failed (fail_fast='raise'):\n"
                                f"{errored[0].error}")
        return ResultGrid(trials, self._experiment_dir, self._tune_config.metric,
                          self._tune_config.mode)

    def get_results(self) -> ResultGrid:
        state = experiment_state.load(self._experiment_dir)
        trials = [experiment_state.trial_from_record(r) for r in state["trials"]]
        return ResultGrid(trials, self._experiment_dir, state["metric"], state["mode"])


def run(run_or_experiment, *, config: dict | None = None, num_samples: int = 1,
        metric: str | None = None, mode: str | None = None, scheduler=None, search_alg=None,
        stop=None, resources_per_trial: dict | None = None, name: str | None = None,
        storage_path: str | None = None, max_failures: int = 0, fail_fast: bool = False,
        resume=None, verbose: int = 1, time_budget_s: float | None = None,
        max_concurrent_trials: int | None = None, reuse_actors: bool = True,
        checkpoint_config: CheckpointConfig | None = None, callbacks=None,
        **unsupported) -> ExperimentAnalysis:
    """The older one-call form: `tune.run(trainable, config={...}, num_samples=100)`."""
    if unsupported:
        raise TypeError(f"tune.run() got unexpected argument(s) {sorted(unsupported)}")
    trainable = run_or_experiment
    if resources_per_trial is not None:
        from pyactor.tune.trainable import with_resources
        trainable = with_resources(trainable, resources_per_trial)
    run_config = RunConfig(name=name, storage_path=storage_path, stop=stop,
                           failure_config=FailureConfig(max_failures, fail_fast),
                           checkpoint_config=checkpoint_config, verbose=verbose,
                           resume="auto" if resume in (True, "auto", "AUTO") else None,
                           callbacks=callbacks)
    tune_config = TuneConfig(metric=metric, mode=mode, search_alg=search_alg,
                             scheduler=scheduler, num_samples=num_samples,
                             max_concurrent_trials=max_concurrent_trials,
                             time_budget_s=time_budget_s, reuse_actors=reuse_actors)
    grid = Tuner(trainable, param_space=config or {}, tune_config=tune_config,
                 run_config=run_config).fit()
    return ExperimentAnalysis(grid, metric, mode)
