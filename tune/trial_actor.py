"""The trial actor: a process that runs one trial at a time, and then the next one (reuse).

The controller drives it with four calls, all answered on the actor's event loop while the
trainable itself runs in a thread (session.py draws the hand-off):

    start(key, blob, spec)   begin a trial (the trainable's pickle is sent once per actor) and
                             return its first messages, as next_result does
    next_result()            the messages since the last call, at least one: ("result", metrics,
                             checkpoint_path), then maybe ("done"|"stopped", None, None) or
                             ("error", traceback, None)
    stop()                   end the current trial at its pending report (sent without waiting:
                             calls to an actor run in order, so the next start() comes after it)
    save()                   a class trainable saves a checkpoint now (PBT, pause)

The actor runs one call at a time (max_concurrency=1), so a start() never overlaps the stop()
of the trial before it.
"""

from __future__ import annotations

import asyncio
import os

import cloudpickle

from pyactor.tune import session as _session
from pyactor.tune.checkpoint import Checkpoint
from pyactor.tune.trainable import is_class_trainable, run_trainable


class TrialActor:
    def __init__(self):
        self._trainables: dict[str, object] = {}   # key -> unpickled trainable
        self._keep: dict = {}                      # a class trainable's instance, for reuse
        self._session: _session.TrialSession | None = None
        self._trainable = None

    async def start(self, key: str, blob: bytes | None, spec: dict) -> list:
        await self._finish_session()
        trainable = self._trainables.get(key)
        if trainable is None:
            if blob is None:
                raise RuntimeError(f"trial actor has no trainable {key!r} (the controller "
                                   f"must send it with the first trial)")
            trainable = self._trainables[key] = cloudpickle.loads(blob)
        self._trainable = trainable
        os.makedirs(spec["trial_dir"], exist_ok=True)
        checkpoint = Checkpoint(spec["checkpoint"]) if spec["checkpoint"] else None
        session = _session.TrialSession(asyncio.get_running_loop(), spec["trial_id"],
                                        spec["trial_dir"], checkpoint, spec["iteration"],
                                        spec["time_total_s"],
                                        lockstep=is_class_trainable(trainable))
        config = spec["config"]
        keep = self._keep
        every, at_end = spec["checkpoint_frequency"], spec["checkpoint_at_end"]
        session.prepare(lambda s: run_trainable(s, trainable, config, keep, every, at_end))
        self._session = session
        return await self.next_result()

    async def next_result(self) -> list:
        batch = await self._session.next_messages()
        if batch[-1][0] == "error":
            self._drop_instance()
        return batch

    async def stop(self) -> None:
        await self._finish_session()

    async def save(self) -> str | None:
        """Save the running class trainable now (it waits inside report); None for functions,
        whose only checkpoints are the ones they report."""
        instance = self._keep.get("instance")
        session = self._session
        if instance is None or session is None or not is_class_trainable(self._trainable):
            return None
        path = os.path.join(session.trial_dir, f"checkpoint_{session.iteration:06d}")
        instance.save(path)
        return path

    async def shutdown(self) -> None:
        await self._finish_session()
        self._drop_instance()

    async def _finish_session(self) -> None:
        """End the current trial: a trainable waiting in report() unwinds with StopTrial."""
        session, self._session = self._session, None
        if session is None or session.thread is None:
            return
        session.stop()
        await session.finished

    def _drop_instance(self) -> None:
        instance = self._keep.pop("instance", None)
        if instance is not None:
            try:
                instance.cleanup()
            except Exception:
                pass
