"""The controller: one asyncio loop that starts trials, reacts to each of their reports, and
keeps the experiment's state on disk.

    searcher --suggest--> new Trial (PENDING) --scheduler.choose_trial_to_run--> start on a
    trial actor (actor_pool) --> one `_drive` task per running trial:

        await actor.next_result()  -> result: loggers, stopper, searcher, scheduler decide
            CONTINUE  -> ask for the next result (the trainable waited inside tune.report)
            STOP      -> actor.stop(); TERMINATED
            PAUSE     -> save, actor.stop(); PAUSED (the scheduler may choose it again)
            Exploit   -> restart this trial from another trial's checkpoint with a new config
        "done" -> TERMINATED;  "error" / actor died -> retry from the last checkpoint, or ERROR

Nothing polls: the main loop sleeps on an event that a `_drive` task sets when a trial ends,
and each `_drive` task sleeps on its actor's next answer. Schedulers and searchers see this
object only through get_trials() (their hooks never do I/O).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
import uuid

from pyactor._private import run_registry
from pyactor.exceptions import ActorDiedError, WorkerCrashedError
from pyactor.tune import experiment_state
from pyactor.tune.actor_pool import TrialActorPool
from pyactor.tune.checkpoint import Checkpoint
from pyactor.tune.loggers import TrialLogs
from pyactor.tune.trial import Trial, TrialStatus
from pyactor.tune.writer import FileWriter

logger = logging.getLogger("pyactor.tune")

CONTINUE, PAUSE, STOP = "CONTINUE", "PAUSE", "STOP"
_STATE_SAVE_INTERVAL_S = 1.0      # for results alone
_STATE_SAVE_DELAY_S = 0.05        # changes within this window share one write


class TuneError(RuntimeError):
    """The experiment itself cannot go on (not one trial's failure: those are recorded)."""


class TuneController:
    def __init__(self, *, trainable_spec, param_space: dict, tune_config, run_config,
                 experiment_dir: str, searcher, scheduler, stopper, state: dict | None = None,
                 progress=None):
        self.trainable_spec = trainable_spec          # tuner.TrainableSpec
        self.param_space = param_space
        self.tune_config = tune_config
        self.run_config = run_config
        self.experiment_dir = experiment_dir
        self.searcher = searcher
        self.scheduler = scheduler
        self.stopper = stopper
        self.progress = progress
        self.failure_config = run_config.failure_config
        self.checkpoint_config = run_config.checkpoint_config
        self.metric, self.mode = tune_config.metric, tune_config.mode
        self._trials: list[Trial] = []
        self._by_id: dict[str, Trial] = {}
        self._logs = TrialLogs()                      # touched only on the writer thread
        self._logging: set[str] = set()               # trials whose logs are open
        self._writer: FileWriter | None = None
        self._save_handle = None
        self._checkpoint_meta: dict[str, tuple] = {}   # trial_id -> (iteration, time_total_s)
        self._checkpoints: dict[str, list] = {}       # trial_id -> [(score, path)] kept
        self._running: dict[str, asyncio.Task] = {}
        self._run_id = uuid.uuid4().hex[:5]
        self._next_index = 0
        self._searcher_finished = False
        self._elapsed_before_s = 0.0                  # time spent before a resume
        self._stop_reason: str | None = None          # "time_budget" | "fail_fast" | "stop_all"
        self._fatal: BaseException | None = None
        self._last_save = 0.0
        self._metric_checked = False
        self.num_results = 0
        if state is not None:
            self._load(state)
        limit = getattr(searcher, "total_samples", None)
        if tune_config.num_samples == -1 or limit is None:
            limit = tune_config.num_samples   # -1: until the searcher says FINISHED
        self._sample_limit = limit

    # ------------------------------------------------------------------ the view schedulers see
    def get_trials(self) -> list[Trial]:
        return self._trials

    def get_live_trials(self) -> list[Trial]:
        return [trial for trial in self._trials if not trial.is_finished]

    # ------------------------------------------------------------------ main loop
    async def run(self) -> list[Trial]:
        import pyactor as pa
        if not pa.is_initialized():
            pa.init()
        total = {name: amount for name, amount in pa.cluster_resources().items()}
        self._pool = TrialActorPool(total, reuse=self.tune_config.reuse_actors)
        self._wake = asyncio.Event()
        self._started = time.monotonic()
        budget = self.tune_config.time_budget_s
        timer = None
        if budget is not None:
            remaining = max(0.0, budget - self._elapsed_before_s)
            timer = asyncio.get_running_loop().call_later(remaining, self._stop_all,
                                                          "time_budget")
        os.makedirs(self.experiment_dir, exist_ok=True)
        run_registry.register_run("tune", self.experiment_dir)  # the dashboard lists it
        self._writer = FileWriter(on_idle=self._logs.flush)
        self.save_state(now=True)
        if self.progress is not None:
            self.progress.start(self)
        try:
            while True:
                self._launch_trials()
                if self._fatal is not None:
                    raise self._fatal
                if not self._running:
                    if not self._can_launch_more():
                        break
                    self._check_not_stuck()
                await self._wake.wait()
                self._wake.clear()
        finally:
            if timer is not None:
                timer.cancel()
            await self._stop_running()
            self._pool.shutdown()
            for shard in range(4):
                self._writer.submit(shard, self._logs.close_all, shard, self._writer.shard_of)
            self._logging.clear()
            self.save_state(now=True)
            self._writer.close()
            if self.progress is not None:
                self.progress.stop(self)
        return self._trials

    @property
    def elapsed_s(self) -> float:
        return self._elapsed_before_s + time.monotonic() - self._started

    def _stop_all(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            logger.info("stopping the experiment: %s", reason)
        self._wake.set()

    def _can_launch_more(self) -> bool:
        if self._stop_reason is not None:
            return False
        if any(t.status in (TrialStatus.PENDING, TrialStatus.PAUSED) for t in self._trials):
            return True
        return not self._searcher_finished

    def _check_not_stuck(self) -> None:
        """Nothing runs, yet trials or samples remain: only the scheduler or searcher could
        start one, and with nothing running nothing will change their minds."""
        waiting = [t for t in self._trials if t.status in (TrialStatus.PENDING,
                                                           TrialStatus.PAUSED)]
        if waiting:
            raise TuneError(f"{type(self.scheduler).__name__}.choose_trial_to_run() chose none "
                            f"of the {len(waiting)} waiting trials while none is running")
        raise TuneError(f"{type(self.searcher).__name__}.suggest() returned None (ask later) "
                        f"while no trial is running: it would wait forever")

    def _launch_trials(self) -> None:
        limit = self.tune_config.max_concurrent_trials
        while self._stop_reason is None and (limit is None or len(self._running) < limit):
            # Keep one new trial waiting beside the paused ones, so a scheduler that resumes
            # paused trials (PBT, HyperBand) can also choose to start a new one.
            if not any(t.status == TrialStatus.PENDING for t in self._trials):
                self._new_trial()
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                return
            if trial.status not in (TrialStatus.PENDING, TrialStatus.PAUSED):
                raise TuneError(f"{type(self.scheduler).__name__}.choose_trial_to_run() returned "
                                f"{trial!r}; it must choose a PENDING or PAUSED trial")
            if not self._pool.feasible(trial.resources):
                raise TuneError(f"trial {trial.trial_id} asks for {trial.resources} but the "
                                f"cluster has only {self._pool.describe_total()}")
            if not self._pool.can_start(trial.resources):
                return
            self._start(trial)

    def _new_trial(self) -> Trial | None:
        if self._searcher_finished:
            return None
        if self._sample_limit != -1 and self._next_index >= self._sample_limit:
            self._searcher_finished = True
            return None
        trial_id = f"{self._run_id}_{self._next_index:05d}"
        config = self.searcher.suggest(trial_id)
        if config is None:
            return None           # a limiter holds it back until a trial completes
        if config == "FINISHED":
            self._searcher_finished = True
            self.save_state()
            return None
        index = self._next_index
        self._next_index += 1
        variant_tag = getattr(self.searcher, "variant_tag", None)
        described = variant_tag(trial_id) if variant_tag else _format_tag(self.param_space, config)
        tag = f"{index}_{described}".rstrip("_")
        folder = f"{self.trainable_spec.name}_{trial_id}_{_safe(tag)[:80]}".rstrip("_")
        trial = Trial(trial_id=trial_id, config=config,
                      resources=self.trainable_spec.resources_for(config), experiment_tag=tag,
                      local_path=os.path.join(self.experiment_dir, folder))
        self._trials.append(trial)
        self._by_id[trial_id] = trial
        self.scheduler.on_trial_add(self, trial)
        self.save_state()
        return trial

    # ------------------------------------------------------------------ one running trial
    def _start(self, trial: Trial) -> None:
        actor = self._pool.acquire(trial.resources, self.trainable_spec.actor_resources)
        trial.status = TrialStatus.RUNNING
        if trial.trial_id not in self._logging:
            self._open_logs(trial)
        self._running[trial.trial_id] = asyncio.ensure_future(self._drive(trial, actor))
        self.save_state()

    def _spec(self, trial: Trial) -> dict:
        iteration, time_total = self._checkpoint_meta.get(trial.trial_id, (0, 0.0))
        if trial.checkpoint is None:
            iteration, time_total = 0, 0.0
        return {"trial_id": trial.trial_id, "trial_dir": trial.local_path,
                "config": trial.config, "iteration": iteration, "time_total_s": time_total,
                "checkpoint": trial.checkpoint.path if trial.checkpoint else None,
                "checkpoint_frequency": self.checkpoint_config.checkpoint_frequency,
                "checkpoint_at_end": self.checkpoint_config.checkpoint_at_end}

    async def _drive(self, trial: Trial, actor) -> None:
        spec = self.trainable_spec
        healthy = True
        try:
            blob = spec.blob if actor not in spec.sent_to else None
            batch = await actor.start.remote(spec.key, blob, self._spec(trial))
            spec.sent_to.add(actor)
            while True:
                outcome = self._handle_batch(trial, batch)
                if outcome is None:                     # every result said CONTINUE
                    batch = await actor.next_result.remote()
                    continue
                kind, payload = outcome
                if kind == "exploit":                  # PBT: same actor, new config + state
                    actor.stop.remote()
                    self._exploit(trial, payload)
                    batch = await actor.start.remote(spec.key, None, self._spec(trial))
                    continue
                break
            if kind == "stop":
                actor.stop.remote()   # no need to wait: the actor's next call runs after it
                self._complete(trial, stopped=True)
            elif kind == "pause":
                await self._save_now(trial, actor)
                actor.stop.remote()
                trial.status = TrialStatus.PAUSED
                self.save_state()
            elif kind in ("done", "stopped"):
                self._complete(trial)
            elif kind == "error":
                self._on_failure(trial, payload)
        except (ActorDiedError, WorkerCrashedError) as error:
            healthy = False
            self._on_failure(trial, f"the trial's process died: {error!r}")
        except asyncio.CancelledError:
            healthy = False
            raise
        except BaseException as error:               # a bug or bad input: stop everything
            healthy = False
            if self._fatal is None:
                self._fatal = error
        finally:
            self._running.pop(trial.trial_id, None)
            if healthy:
                self._pool.release(actor, trial.resources)
            else:
                self._pool.discard(actor, trial.resources)
                spec.sent_to.discard(actor)
            self._wake.set()

    def _handle_batch(self, trial: Trial, batch: list):
        """Decide on each result in order; the first decision other than CONTINUE ends the
        batch (results the trial ran ahead with after it are dropped). None: go on."""
        for kind, payload, checkpoint_path in batch:
            if kind != "result":
                return kind, payload
            decision = self._on_result(trial, payload, checkpoint_path)
            if decision == CONTINUE:
                continue
            if decision == STOP:
                return "stop", None
            if decision == PAUSE:
                return "pause", None
            return "exploit", decision
        return None

    def _on_result(self, trial: Trial, result: dict, checkpoint_path: str | None):
        self.num_results += 1
        if not self._metric_checked:
            self._check_metric(result)
        trial.last_result = result
        saved = False
        if checkpoint_path is not None:
            self._add_checkpoint(trial, result, checkpoint_path)
            saved = True
        self._writer.submit(self._shard(trial), self._logs.result, trial.trial_id, result)
        stop = self.stopper is not None and self.stopper(trial.trial_id, result)
        if self.stopper is not None and self.stopper.stop_all():
            self._stop_all("stop_all")
        self.searcher.on_trial_result(trial.trial_id, result)
        decision = self.scheduler.on_trial_result(self, trial, result)
        if stop or self._stop_reason is not None:
            decision = STOP
        self._stop_paused_losers()
        if saved:          # at once: a resume must know every checkpoint that exists
            self.save_state(now=True)
        elif time.monotonic() - self._last_save > _STATE_SAVE_INTERVAL_S:
            self.save_state()
        return decision

    def _stop_paused_losers(self) -> None:
        """Trials the scheduler stopped while they were paused (HyperBand's losers) end now,
        without a restore and one more result; running ones get STOP at their next result."""
        handover = getattr(self.scheduler, "trials_to_stop", None)
        for loser in handover(self) if handover is not None else ():
            if loser.status == TrialStatus.PAUSED:
                self._complete(loser)

    def _check_metric(self, result: dict) -> None:
        if self.metric is not None and self.metric not in result:
            raise ValueError(f"the trainable's results have no metric {self.metric!r} (set in "
                             f"TuneConfig(metric=...)); the first result has only "
                             f"{sorted(result)}")
        self._metric_checked = True

    def _complete(self, trial: Trial, stopped: bool = False) -> None:
        if stopped and self._stop_reason == "fail_fast":
            trial.status = TrialStatus.PENDING     # stopped by another's error: resumable
            self.save_state()
            return
        trial.status = TrialStatus.TERMINATED
        self.scheduler.on_trial_complete(self, trial, trial.last_result)
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result)
        self._close_logger(trial)
        self.save_state()

    def _on_failure(self, trial: Trial, error_text: str) -> None:
        trial.num_failures += 1
        max_failures = self.failure_config.max_failures
        self._writer.submit(self._shard(trial), _append,
                            os.path.join(trial.local_path, "error.txt"),
                            f"failure {trial.num_failures}:\n{error_text}\n")
        if self._stop_reason is None and (max_failures == -1
                                          or trial.num_failures <= max_failures):
            logger.warning("trial %s failed (%d of %s tries); retrying from %s",
                           trial.trial_id, trial.num_failures, max_failures,
                           trial.checkpoint.path if trial.checkpoint else "the start")
            trial.status = TrialStatus.PENDING
            self.save_state()
            return
        trial.status = TrialStatus.ERROR
        trial.error = error_text
        logger.error("trial %s errored:\n%s", trial.trial_id, error_text)
        self.scheduler.on_trial_error(self, trial)
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result or None, error=True)
        self._close_logger(trial, failed=True)
        if self.failure_config.fail_fast:
            self._stop_all("fail_fast")
        self.save_state()

    def _shard(self, trial: Trial) -> int:
        return self._writer.shard_of(trial.trial_id)

    def _open_logs(self, trial: Trial) -> None:
        self._logging.add(trial.trial_id)
        self._writer.submit(self._shard(trial), self._logs.start, trial.trial_id,
                            trial.local_path, dict(trial.config))

    def _close_logger(self, trial: Trial, failed: bool = False) -> None:
        if trial.trial_id in self._logging:
            self._logging.discard(trial.trial_id)
            self._writer.submit(self._shard(trial), self._logs.close, trial.trial_id, failed)

    async def _save_now(self, trial: Trial, actor) -> None:
        """Before a pause: a class trainable saves now; a function's last report is its state."""
        path = await actor.save.remote()
        if path is not None:
            self._add_checkpoint(trial, trial.last_result, path)

    def _exploit(self, trial: Trial, exploit) -> None:
        """PBT: continue `trial` from `exploit.source`'s latest checkpoint with exploit.config."""
        source = exploit.source
        if source.checkpoint is None:
            logger.warning("PBT: %s has no checkpoint to copy; %s continues with its own",
                           source.trial_id, trial.trial_id)
        else:
            iteration, time_total = self._checkpoint_meta[source.trial_id]
            target = os.path.join(trial.local_path, f"checkpoint_{iteration:06d}_from_"
                                                    f"{source.trial_id}")
            shutil.copytree(source.checkpoint.path, target, dirs_exist_ok=True)
            trial.checkpoint = Checkpoint(target)
            self._checkpoint_meta[trial.trial_id] = (iteration, time_total)
        logger.info("PBT: %s continues from %s's checkpoint with config %s", trial.trial_id,
                    source.trial_id, exploit.config)
        trial.config = dict(exploit.config)
        self._open_logs(trial)
        self.save_state()

    def _add_checkpoint(self, trial: Trial, result: dict, path: str) -> None:
        trial.checkpoint = Checkpoint(path)
        self._checkpoint_meta[trial.trial_id] = (result.get("training_iteration", 0),
                                                 result.get("time_total_s", 0.0))
        self._prune_checkpoints(trial, result, path)

    def _prune_checkpoints(self, trial: Trial, result: dict, latest: str) -> None:
        """CheckpointConfig(num_to_keep): keep the latest (what a retry resumes from) and the
        best of the others by checkpoint_score_attribute (default: the newest)."""
        config = self.checkpoint_config
        kept = self._checkpoints.setdefault(trial.trial_id, [])
        attribute = config.checkpoint_score_attribute
        score = result.get(attribute) if attribute else result.get("training_iteration", 0)
        score = float("-inf") if score is None else score
        kept.append((-score if (attribute and config.checkpoint_score_order == "min") else score,
                     latest))
        if config.num_to_keep is None or len(kept) <= config.num_to_keep:
            return
        others = sorted((item for item in kept if item[1] != latest), reverse=True)
        survivors = others[:config.num_to_keep - 1] + [item for item in kept if item[1] == latest]
        for _, path in others[config.num_to_keep - 1:]:
            shutil.rmtree(path, ignore_errors=True)
        kept[:] = survivors

    async def _stop_running(self) -> None:
        """At the end (or on an error / interrupt): trials still running stay resumable."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for trial in self._trials:
            if trial.status == TrialStatus.RUNNING:
                trial.status = (TrialStatus.TERMINATED if self._stop_reason == "time_budget"
                                else TrialStatus.PENDING)
                if trial.status == TrialStatus.TERMINATED:
                    self._complete(trial)

    # ------------------------------------------------------------------ experiment state
    def save_state(self, now: bool = False) -> None:
        """Write the state soon (changes within _STATE_SAVE_DELAY_S share one write), or now.
        The snapshot is taken here, on the loop; the writer thread only writes the bytes."""
        if self._writer is None:
            return                      # not running yet: run() writes it first thing
        if not now:
            if self._save_handle is None:
                self._save_handle = asyncio.get_running_loop().call_later(
                    _STATE_SAVE_DELAY_S, self.save_state, True)
            return
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        self._last_save = time.monotonic()
        self._writer.submit(0, experiment_state.write, self.experiment_dir, self._snapshot())

    def _snapshot(self) -> bytes:
        return experiment_state.encode({
            "trials": [experiment_state.trial_to_record(t) for t in self._trials],
            "searcher": self.searcher.get_state(),
            "scheduler": self.scheduler.get_state(),
            "run_id": self._run_id, "next_index": self._next_index,
            "searcher_finished": self._searcher_finished,
            "checkpoint_meta": self._checkpoint_meta, "checkpoints": self._checkpoints,
            "elapsed_s": self.elapsed_s if hasattr(self, "_started") else self._elapsed_before_s,
            "stop_reason": self._stop_reason,
            "metric": self.metric, "mode": self.mode,
        })

    def _load(self, state: dict) -> None:
        self._trials = [experiment_state.trial_from_record(r) for r in state["trials"]]
        self._by_id = {t.trial_id: t for t in self._trials}
        self._run_id = state["run_id"]
        self._next_index = state["next_index"]
        self._searcher_finished = state["searcher_finished"]
        self._checkpoint_meta = dict(state["checkpoint_meta"])
        self._checkpoints = {k: list(v) for k, v in state["checkpoints"].items()}
        self._elapsed_before_s = state["elapsed_s"]
        self.searcher.set_state(state["searcher"])
        self.scheduler.set_state(state["scheduler"])
        for trial in self._trials:
            if trial.status == TrialStatus.RUNNING:
                trial.status = TrialStatus.PENDING   # it restarts from its last checkpoint

    def restart_errored(self, from_checkpoint: bool) -> None:
        """Tuner.restore(resume_errored / restart_errored): errored trials run again."""
        for trial in self._trials:
            if trial.status == TrialStatus.ERROR:
                trial.status = TrialStatus.PENDING
                trial.error = None
                trial.num_failures = 0
                if not from_checkpoint:
                    trial.checkpoint = None
                    self._checkpoint_meta.pop(trial.trial_id, None)


def _append(path: str, text: str) -> None:
    with open(path, "a") as file:
        file.write(text)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", text)


def _format_tag(space: dict, config: dict, prefix: str = "") -> str:
    """"lr=0.0012,width=64": the values that were drawn or gridded (not the constants)."""
    parts = []
    for key, value in space.items():
        if isinstance(value, dict) and "grid_search" not in value:
            inner = _format_tag(value, config.get(key, {}) if isinstance(config, dict) else {},
                                f"{prefix}{key}/")
            if inner:
                parts.append(inner)
        elif _is_search_leaf(value):
            chosen = config.get(key) if isinstance(config, dict) else None
            if isinstance(chosen, float):
                chosen = f"{chosen:.4g}"
            parts.append(f"{prefix}{key}={chosen}")
    return ",".join(parts)


def _is_search_leaf(value) -> bool:
    return (isinstance(value, dict) and "grid_search" in value) or hasattr(value, "sample")
