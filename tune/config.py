"""The experiment's settings: what to search (TuneConfig), where and how long to run (RunConfig),
how to survive failures (FailureConfig) and which checkpoints to keep (CheckpointConfig).

All are frozen dataclasses, validated when built so a mistake fails at the line that made it, not
after an hour of trials. Change one with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

_MODES = (None, "min", "max")


def check_mode(mode) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


@dataclasses.dataclass(frozen=True)
class FailureConfig:
    """max_failures: retries of a trial that raised or whose process died (each from its last
    checkpoint); -1 retries forever. fail_fast: stop the whole experiment at the first error
    (it can still be resumed)."""

    max_failures: int = 0
    fail_fast: bool | str = False        # "raise": fit() raises the trial's error

    def __post_init__(self):
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(f"max_failures must be an int >= -1, got {self.max_failures!r}")
        if self.fail_fast not in (True, False, "raise"):
            raise ValueError(f"fail_fast must be True, False or 'raise', got {self.fail_fast!r}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """num_to_keep: newest (or best by checkpoint_score_attribute) checkpoints kept per trial;
    checkpoint_frequency / checkpoint_at_end: when class trainables are asked to save."""

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool = False

    def __post_init__(self):
        if self.num_to_keep is not None and (not isinstance(self.num_to_keep, int)
                                             or self.num_to_keep < 1):
            raise ValueError(f"num_to_keep must be None or an int >= 1, got {self.num_to_keep!r}")
        if self.checkpoint_score_order not in ("min", "max"):
            raise ValueError(f"checkpoint_score_order must be 'min' or 'max', "
                             f"got {self.checkpoint_score_order!r}")
        if not isinstance(self.checkpoint_frequency, int) or self.checkpoint_frequency < 0:
            raise ValueError(f"checkpoint_frequency must be an int >= 0, "
                             f"got {self.checkpoint_frequency!r}")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    metric: str | None = None
    mode: str | None = None
    search_alg: Any = None                 # a Searcher; None: BasicVariantGenerator
    scheduler: Any = None                  # a TrialScheduler; None: FIFOScheduler
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    reuse_actors: bool = True
    trial_name_creator: Callable | None = None
    trial_dirname_creator: Callable | None = None

    def __post_init__(self):
        check_mode(self.mode)
        if self.metric is not None and not isinstance(self.metric, str):
            raise TypeError(f"metric must be a str, got {type(self.metric).__name__}")
        if (self.metric is None) != (self.mode is None):
            raise ValueError("set metric and mode together (e.g. metric='loss', mode='min')")
        if not isinstance(self.num_samples, int) or self.num_samples == 0 or self.num_samples < -1:
            raise ValueError(f"num_samples must be a positive int (or -1: until the searcher "
                             f"is finished or time_budget_s runs out), got {self.num_samples!r}")
        if self.max_concurrent_trials is not None and (
                not isinstance(self.max_concurrent_trials, int) or self.max_concurrent_trials < 1):
            raise ValueError(f"max_concurrent_trials must be None or an int >= 1, "
                             f"got {self.max_concurrent_trials!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """name: the experiment's folder under storage_path. stop: a dict of result thresholds, a
    callable (trial_id, result) -> bool, or a tune.Stopper. resume: None, "auto" (continue the
    experiment found at storage_path/name, else start it) or False."""

    name: str | None = None
    storage_path: str | None = None
    stop: Any = None
    failure_config: FailureConfig | None = None
    checkpoint_config: CheckpointConfig | None = None
    verbose: int = 1
    resume: Any = None
    callbacks: list | None = None

    def __post_init__(self):
        if self.resume not in (None, False, "auto"):
            raise ValueError(f"resume must be None, False or 'auto', got {self.resume!r}")
        if self.stop is not None and not (isinstance(self.stop, dict) or callable(self.stop)):
            raise TypeError(f"stop must be a dict, a callable or a tune.Stopper, "
                            f"got {type(self.stop).__name__}")
        if self.verbose not in (0, 1, 2, 3):
            raise ValueError(f"verbose must be 0, 1, 2 or 3, got {self.verbose!r}")

    def storage_root(self) -> str:
        root = self.storage_path or os.environ.get("PYACTOR_RESULTS_DIR", "~/pyactor_results")
        return os.path.abspath(os.path.expanduser(root))
