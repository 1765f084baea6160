"""One trial of an experiment: its configuration, its state, and what it last reported.

A Trial is a plain record. The controller (the only code that does I/O) moves it between states
and fills in its results and checkpoint; schedulers and searchers read it to decide and never
change it. Its lifecycle (who moves it there, in brackets):

    PENDING --(controller starts it)--> RUNNING --(trainable returns / scheduler STOP)--> TERMINATED
                                          |  ^
              (scheduler PAUSE) ----------+  +----(controller resumes it)--- PAUSED
                                          |
                                          +--(raised or its process died, no retries left)--> ERROR
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class TrialStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(eq=False)
class Trial:
    """A trial as schedulers, searchers and results see it (compared by identity)."""

    trial_id: str
    config: dict
    status: TrialStatus = TrialStatus.PENDING
    last_result: dict = dataclasses.field(default_factory=dict)
    checkpoint: Any = None                # a tune.Checkpoint, or None before the first one
    resources: dict = dataclasses.field(default_factory=lambda: {"cpu": 1})
    experiment_tag: str = ""              # e.g. "3_lr=0.01,width=64", part of its folder name
    local_path: str = ""                  # the trial's folder (params.json, result.json, ...)
    num_failures: int = 0
    error: str | None = None              # the traceback text when status is ERROR

    @property
    def is_finished(self) -> bool:
        return self.status in (TrialStatus.TERMINATED, TrialStatus.ERROR)

    def __repr__(self) -> str:
        return f"Trial({self.trial_id}, {self.status.value})"

    def __str__(self) -> str:
        return self.trial_id
