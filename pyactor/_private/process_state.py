"""One process's answer to its node's StateQuery('process'): its tasks and its references.

Runs on the process's IO thread, only when asked. It reads what the process keeps anyway: the
task history (task_events.py), the owner's queues (task_submitter.py, actor_submitter.py,
direct.py), and the reference table (references.py), and says for every object why it is kept:

    local_refs     ObjectRef instances alive here; those held by a pending task's arguments or
                   by lineage are told apart, the rest are the program's own (at file:line when
                   call sites are recorded: object_ref.py)
    borrowers      other processes holding refs to an object this process owns
    task_pins      the task making it has not finished
    contained      refs kept alive by a stored value that contains them

The node adds what only it knows (which pids pin store objects, memory from /proc) and the
client (state.py) joins every answer of the cluster.
"""

from __future__ import annotations

import os
import pickle

from pyactor._private import object_ref as object_ref_module
from pyactor._private import task_events
from pyactor._private.references import FAILED, PENDING, READY

_STATE_NAMES = {PENDING: "PENDING", READY: "READY", FAILED: "FAILED"}
ERROR_TEXT_LIMIT = 400


def snapshot(runtime, options: dict) -> dict:
    sections = set(options.get("sections") or ())
    out = {"pid": os.getpid(), "kind": runtime.kind, "address": runtime.address,
           "worker_id": runtime.worker_id.hex(), "node_id": runtime.node_id.hex(),
           "label": runtime.worker_label}
    if "tasks" in sections:
        out["tasks"] = task_rows(runtime, float(options.get("since") or 0.0))
    if "objects" in sections:
        out["objects"] = object_rows(runtime)
    return out


# ---------------------------------------------------------------------- tasks
def task_rows(runtime, since: float = 0.0) -> list[dict]:
    """Owner rows (what this process submitted: live ones and the finished history) and worker
    rows (what ran here); state.py merges the two sides of each task by id."""
    rows = []
    for spec, state in _live_specs(runtime):
        rows.append({"side": "owner", "task_id": spec.task_id.hex(), "name": spec.name,
                     "actor_id": spec.actor.hex() if spec.actor else "", "state": state,
                     "submitted_at": spec.submitted_at, "args_ready_at": spec.args_ready_at,
                     "ended_at": 0.0, "error": "", "attempt": spec.attempt,
                     "owner_pid": os.getpid(), "resources": spec.demand or {}})
    for (task_id, name, actor_id, submitted, args_ready, ended, state, error, attempt,
         resources) in task_events.snapshot(task_events.FINISHED, since):
        rows.append({"side": "owner", "task_id": task_id.hex(), "name": name,
                     "actor_id": actor_id.hex() if actor_id else "",
                     "state": task_events.FINAL_STATES[state], "submitted_at": submitted,
                     "args_ready_at": args_ready, "ended_at": ended,
                     "error": error_text(error) if error is not None else "",
                     "attempt": attempt, "owner_pid": os.getpid(),
                     "resources": dict(resources) if resources else {}})
    for task_id, (name, actor_id, started) in list(task_events.RUNNING.items()):
        rows.append({"side": "worker", "task_id": task_id.hex(), "name": name,
                     "actor_id": actor_id.hex() if actor_id else "", "state": "RUNNING",
                     "started_at": started, "args_decoded_at": 0.0, "ended_at": 0.0,
                     "thread": 0, "pid": os.getpid(), "worker_id": runtime.worker_id.hex(),
                     "node_id": runtime.node_id.hex()})
    for (task_id, name, actor_id, started, decoded, ended, failed,
         thread) in task_events.snapshot(task_events.RAN, since):
        rows.append({"side": "worker", "task_id": task_id.hex(), "name": name,
                     "actor_id": actor_id.hex() if actor_id else "",
                     "state": "FAILED" if failed else "FINISHED", "started_at": started,
                     "args_decoded_at": decoded, "ended_at": ended, "thread": thread,
                     "pid": os.getpid(), "worker_id": runtime.worker_id.hex(),
                     "node_id": runtime.node_id.hex()})
    for (task_id, object_id, started, ended, size) in task_events.snapshot(
            task_events.TRANSFERS, since):
        rows.append({"side": "transfer", "task_id": task_id.hex(),
                     "object_id": object_id.hex(), "started_at": started, "ended_at": ended,
                     "size": size, "pid": os.getpid(), "node_id": runtime.node_id.hex()})
    return rows


def _live_specs(runtime) -> list[tuple]:
    """(spec, state) of every call this process submitted that has not finished."""
    out = []
    for spec in list(runtime._waiting_deps.values()):
        out.append((spec, "PENDING_ARGS"))
    for queue in list(runtime.tasks.queues.values()):
        out.extend((spec, "PENDING_WORKER") for spec in list(queue.tasks))
    out.extend((spec, "SUBMITTED") for spec in list(runtime.tasks.running.values()))
    waiting = {spec.task_id for spec, _ in out}
    if runtime.actors is not None:
        for view in list(runtime.actors.actors.values()):
            for spec in list(view.queue):
                if spec.task_id not in waiting:
                    out.append((spec, "PENDING_WORKER"))
            out.extend((spec, "SUBMITTED") for spec in list(view.in_flight.values()))
            if view.direct_spec is not None:
                out.append((view.direct_spec, "SUBMITTED"))
    sent_directly = {spec.task_id for spec, _ in out}
    for _channel, spec in list(runtime.direct._calls.values()):
        if spec.task_id not in sent_directly:
            out.append((spec, "SUBMITTED"))
    return out


def error_text(blob) -> str:
    """A short text for a recorded error (a pickled exception), made only when asked."""
    try:
        error = pickle.loads(blob)
    except Exception as failure:  # noqa: BLE001 - the class may not load here
        return f"(error not readable here: {type(failure).__name__})"
    cause = getattr(error, "cause", None)
    shown = cause if isinstance(cause, BaseException) else error
    text = f"{type(shown).__name__}: {shown}".strip()
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT - 3] + "..."


# ---------------------------------------------------------------------- objects
def object_rows(runtime) -> list[dict]:
    """Every object this process knows (owned or borrowed) and why it is kept."""
    held_by = _refs_held_by_tasks(runtime)
    with runtime.refs.lock:
        entries = list(runtime.refs.entries.values())
        rows = [_entry_row(entry) for entry in entries]
    contained_in: dict[bytes, list[str]] = {}
    for entry in entries:
        for ref in entry.contained or ():
            contained_in.setdefault(ref.id, []).append(entry.object_id.hex())
    sites = object_ref_module.call_sites_by_object()
    for entry, row in zip(entries, rows):
        tasks = held_by.get(entry.object_id, [])
        row["pending_task_args"] = [t for t in tasks if t["why"] == "argument"]
        row["lineage_of"] = [t for t in tasks if t["why"] == "lineage"]
        row["program_refs"] = max(0, row["local_refs"] - sum(t["count"] for t in tasks))
        row["contained_in"] = contained_in.get(entry.object_id, [])
        row["call_sites"] = [[site, count] for site, count in
                             sorted(sites.get(entry.object_id, {}).items())]
    return rows


def _entry_row(entry) -> dict:
    return {"object_id": entry.object_id.hex(), "owned": entry.owned,
            "owner": list(entry.owner) if entry.owner else None,
            "state": _STATE_NAMES.get(entry.state, str(entry.state)),
            "inline_bytes": len(entry.inline) if entry.state == READY and
            entry.inline is not None else 0,
            "node_id": entry.node_id.hex() if entry.node_id else "",
            "local_refs": entry.local_refs,
            "borrowers": [list(b) for b in entry.borrowers or ()],
            "task_pins": entry.task_pins,
            "task_id": entry.task_id.hex() if entry.task_id else "",
            "actor_handle": entry.kill_actor is not None}


def _refs_held_by_tasks(runtime) -> dict[bytes, list[dict]]:
    """object id -> the tasks whose held_refs keep ObjectRefs to it: pending tasks (their
    arguments) and finished ones kept as lineage."""
    held: dict[bytes, list[dict]] = {}

    def note(spec, why):
        counts: dict[bytes, int] = {}
        for ref in spec.held_refs or ():
            counts[ref.id] = counts.get(ref.id, 0) + 1
        for object_id, count in counts.items():
            held.setdefault(object_id, []).append({
                "task_id": spec.task_id.hex(), "name": spec.name, "why": why, "count": count})
    for spec, _state in _live_specs(runtime):
        note(spec, "argument")
    for spec in list(runtime.tasks.lineage.values()):
        note(spec, "lineage")
    return held
