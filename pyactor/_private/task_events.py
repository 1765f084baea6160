"""A bounded history of the tasks and actor calls this process submitted or ran.

Recording sits on the hot paths, so it is one tuple appended to a deque and nothing else: no
formatting, no locks, no messages. The tuples are read, filtered and turned into rows only when
someone asks (process_state.py answers its node's StateQuery; state.py and the CLI merge the
answers of every process of the cluster).

    owner (runtime.py)    TaskSpec() at .remote()      submitted_at = time()
                          the call resolves (_finish)  FINISHED.append(task id, name, actor,
                                                         submitted, args ready, ended (failures
                                                         only), state, error, attempt,
                                                         resources)
    worker (worker.py)    a call starts                RUNNING[task id] = (name, actor, start)
                          it ends                      RAN.append(task id, name, actor, start,
                                                         args decoded, ended, failed, thread)
    worker, rare          an argument is fetched       TRANSFERS.append(task id, object id,
                          from another node              start, end, bytes)

Limits (per process): the last MAX_EVENTS finished calls of each kind, and none older than
MAX_AGE_S (dropped when read; a call's age counts from its end, or from its submission when
only its owner's record is left); set with PYACTOR_TASK_EVENTS_MAX (0 turns recording off) and
PYACTOR_TASK_EVENTS_MAX_AGE_S.
"""

from __future__ import annotations

import os
import time
from collections import deque

MAX_EVENTS = int(os.environ.get("PYACTOR_TASK_EVENTS_MAX", "10000"))
MAX_AGE_S = float(os.environ.get("PYACTOR_TASK_EVENTS_MAX_AGE_S", "3600"))

# The final states an owner records (the live ones are read from its queues: process_state.py).
FINISHED_OK = 0
FAILED = 1
CANCELLED = 2
FINAL_STATES = ("FINISHED", "FAILED", "CANCELLED")

# Owner side: (task_id, name, actor_id, submitted_at, args_ready_at, ended_at, state,
# error blob or None, attempt, resources (a task's demand as (name, amount) pairs, None for
# actor calls: no dict, so that the garbage collector stops tracking the record)).
FINISHED: deque = deque(maxlen=MAX_EVENTS)
# Worker side: (task_id, name, actor_id, started_at, args_decoded_at, ended_at, failed,
# thread ident or 0 for the main thread).
RAN: deque = deque(maxlen=MAX_EVENTS)
# Worker side, calls running now: task_id -> (name, actor_id, started_at).
RUNNING: dict = {}
# Worker side: arguments copied from another node's store: (task_id, object_id, started_at,
# ended_at, size in bytes).
TRANSFERS: deque = deque(maxlen=MAX_EVENTS)

# Bound once: the hot paths call these without an attribute lookup.
now = time.time
record_finished = FINISHED.append if MAX_EVENTS > 0 else (lambda _event: None)
record_ran = RAN.append if MAX_EVENTS > 0 else (lambda _event: None)
record_transfer = TRANSFERS.append if MAX_EVENTS > 0 else (lambda _event: None)


def snapshot(events: deque, since: float = 0.0) -> list[tuple]:
    """The events still within the age limit (and at or after `since`), oldest first. Old ones
    are dropped here, on read, not on the hot path."""
    cutoff = max(now() - MAX_AGE_S, since)
    copied = events.copy()  # one C call: safe while other threads append
    while events and _end_of(events[0]) < now() - MAX_AGE_S:
        events.popleft()
    return [event for event in copied if _end_of(event) >= cutoff]


def _end_of(event: tuple) -> float:
    """The time an event ended (its newest timestamp)."""
    if len(event) == 10:  # FINISHED: its end, or (a call that ran: see runtime._finish) its
        return max(event[3], event[5])  # submission
    if len(event) == 8:  # RAN
        return event[5]
    return event[3]  # TRANSFERS


def clear() -> None:
    """Forget everything (tests; a forked worker starts with what its fork server had)."""
    FINISHED.clear()
    RAN.clear()
    RUNNING.clear()
    TRANSFERS.clear()
