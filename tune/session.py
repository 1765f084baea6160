"""The trial's side of a report: `tune.report`, `tune.get_checkpoint`, and the hand-off between
the trainable's thread and the trial actor's event loop.

A trainable runs in its own thread inside the trial actor, in lockstep with the controller:

    controller --next_result()--> [actor loop] --resume--> [trainable thread] ... tune.report(m)
    controller <--("result", m)-- [actor loop] <--future-- [trainable thread waits for resume]

So the controller's decision (continue, stop, pause, exploit) is taken while the trainable waits
inside `report`, and a STOP ends it right there (report raises StopTrial, which unwinds it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from typing import Any

from pyactor.tune.checkpoint import Checkpoint

_current: "TrialSession | None" = None   # the session of the trial running in this process


class StopTrial(BaseException):
    """Raised inside `tune.report` when the controller stopped the trial: unwinds the trainable
    (a BaseException, so a trainable's `except Exception` does not swallow it)."""


def report(metrics: dict, *, checkpoint: Checkpoint | None = None) -> None:
    """Send one result (and optionally a checkpoint) to the controller; returns when the
    controller lets the trial continue."""
    session = _current
    if session is None or session.thread is not threading.current_thread():
        raise RuntimeError("tune.report() was called outside a Tune trial: call it from the "
                           "trainable that Tuner/tune.run runs")
    if not isinstance(metrics, dict):
        raise TypeError(f"tune.report() takes a dict of metrics, got {type(metrics).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"checkpoint must be a tune.Checkpoint, got {type(checkpoint).__name__}")
    session.report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint this trial should resume from (after a failure, a pause or a PBT exploit),
    or None on a fresh start."""
    session = _current
    return None if session is None else session.start_checkpoint


def get_trial_id() -> str | None:
    return None if _current is None else _current.trial_id


def get_trial_dir() -> str | None:
    return None if _current is None else _current.trial_dir


# A trainable whose iterations are this fast does not wait for the controller's decision on
# each report: it runs ahead, and its reports travel in batches (one actor round trip for many
# results). It still waits once it is AHEAD_S or MAX_AHEAD results ahead, so a stopped trial
# runs at most ~AHEAD_S of compute past the decision point. Slower iterations are in lockstep.
FAST_ITERATION_S = 0.005
AHEAD_S = 0.02
MAX_AHEAD = 100


class TrialSession:
    """One run of one trial inside a trial actor (a retry or restart is a new session)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, trial_id: str, trial_dir: str,
                 start_checkpoint: Checkpoint | None, iteration: int, time_total_s: float,
                 lockstep: bool = False):
        self.loop = loop
        self.trial_id = trial_id
        self.trial_dir = trial_dir
        self.start_checkpoint = start_checkpoint
        self.iteration = iteration              # continues across restores, as in Ray
        self.time_total_s = time_total_s
        self.lockstep = lockstep                # class trainables: save() needs the exact state
        self.thread: threading.Thread | None = None
        self.reported = False
        self.stopping = False
        self.finished = loop.create_future()    # settled when the thread has ended
        self._target = None                     # what the thread runs, until started
        self._lock = threading.Lock()
        self._decided = threading.Condition(self._lock)
        self._outbox: list = []                 # messages the loop has not taken yet
        self._waiter: asyncio.Future | None = None
        self._sent = 0                          # results put in the outbox
        self._taken = 0                         # results handed to the controller
        self._acked = 0                         # results the controller has decided on
        self._first_unacked_at = 0.0
        self._last_time = time.time()
        self._pid = os.getpid()

    # -------------------------------------------------------------- trainable thread
    def report(self, metrics: dict, checkpoint: Checkpoint | None) -> None:
        now = time.time()
        self.iteration += 1
        this_iter = now - self._last_time
        self.time_total_s += this_iter
        result = dict(metrics)
        result["training_iteration"] = self.iteration
        result["time_this_iter_s"] = this_iter
        result["time_total_s"] = self.time_total_s
        result["timestamp"] = now
        result["trial_id"] = self.trial_id
        result["pid"] = self._pid
        path = self._persist(checkpoint) if checkpoint is not None else None
        self.reported = True
        self.deliver(("result", result, path))
        fast = not self.lockstep and this_iter < FAST_ITERATION_S
        with self._lock:
            while not self.stopping and self._acked < self._sent:
                ahead = self._sent - self._acked
                if fast and ahead <= MAX_AHEAD and now - self._first_unacked_at < AHEAD_S:
                    break
                self._decided.wait()
        self._last_time = time.time()
        if self.stopping:
            raise StopTrial

    def _persist(self, checkpoint: Checkpoint) -> str:
        """Copy the checkpoint into the trial's folder (unless it is already there)."""
        target = os.path.join(self.trial_dir, f"checkpoint_{self.iteration:06d}")
        if os.path.abspath(checkpoint.path) != target:
            shutil.copytree(checkpoint.path, target, dirs_exist_ok=True)
        return target

    def deliver(self, message: tuple) -> None:
        with self._lock:
            self._outbox.append(message)
            if message[0] == "result":
                self._sent += 1
                if self._sent - self._acked == 1:
                    self._first_unacked_at = time.time()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self.loop.call_soon_threadsafe(_settle, waiter, True)

    def mark_finished(self) -> None:
        global _current
        if _current is self:
            _current = None
        self.loop.call_soon_threadsafe(_settle, self.finished, True)

    # -------------------------------------------------------------- actor loop
    def prepare(self, target) -> None:
        """target(session) runs the trainable and delivers its last message ("done"/"error")."""
        self._target = target

    async def next_messages(self) -> list:
        """Everything reported since the last call (waiting for at least one message); calling
        again means the controller has decided on all of it."""
        with self._lock:
            self._acked = self._taken
            self._decided.notify_all()
            if not self._outbox:
                waiter = self._waiter = self.loop.create_future()
            else:
                waiter = None
        if self.thread is None:      # the first call starts the trainable
            self.thread = threading.Thread(target=self._target, args=(self,),
                                           name=f"trial-{self.trial_id}", daemon=True)
            self.thread.start()
        if waiter is not None:
            await waiter
        with self._lock:
            batch, self._outbox = self._outbox, []
            self._taken += sum(1 for message in batch if message[0] == "result")
        return batch

    def stop(self) -> None:
        """Make the trainable's pending (or next) `report` raise StopTrial."""
        with self._lock:
            self.stopping = True
            self._decided.notify_all()


def _settle(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def install(session: TrialSession | None) -> None:
    global _current
    _current = session
