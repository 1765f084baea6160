"""`pa.timeline()`: every task and actor call of the cluster as Chrome trace events.

The task history every process keeps (task_events.py) is gathered from the whole cluster
(state.list_tasks' query) and drawn per worker process (pid) as complete events ('X'):

    pid = the worker's pid     tid 1, 2...      "run" lanes: the call, from start to end, with
                                                a nested "args" slice (fetching and unpickling
                                                its arguments)
                               tid 1001, ...    "queue" lanes: from .remote() to its start
                               tid 2001, ...    "transfer" lanes: arguments copied from another
                                                node's store
Calls that overlap on one process (pipelined queues, async or threaded actors) get lanes of
their own, so slices on a track never overlap. Times are microseconds since the epoch. The
file is a JSON array of events: open it in https://ui.perfetto.dev or chrome://tracing.
"""

from __future__ import annotations

import json

from pyactor._private import state_client

RUN_LANE, QUEUE_LANE, TRANSFER_LANE = 1, 1001, 2001
_LANE_NAMES = {RUN_LANE: "run", QUEUE_LANE: "queue", TRANSFER_LANE: "transfer"}


def timeline(filename: str | None = None, *, address: str | None = None) -> list | None:
    """Chrome trace events of the recent tasks and actor calls (those still in the bounded
    history: docs/observability.md). Writes them to `filename` as a JSON array and returns
    None, or returns the list when no filename is given."""
    if filename is not None and not isinstance(filename, (str, bytes)) and \
            not hasattr(filename, "__fspath__"):
        raise TypeError(f"filename must be a path or None, got {type(filename).__name__}")
    snapshots = state_client.gather(["tasks"], address=address)["snapshots"]
    events = trace_events(snapshots)
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None


def trace_events(snapshots: list[dict]) -> list[dict]:
    from pyactor.util.state import _task_rows
    tasks = _task_rows(snapshots)
    transfers = [row for snapshot in snapshots for process in snapshot.get("processes", ())
                 for row in process.get("tasks", ()) if row["side"] == "transfer"]
    names = _process_names(snapshots)
    slices: list[tuple] = []  # (pid, lane kind, start, end, event without pid/tid/ts/dur)
    for task in tasks:
        if not task.started_at or not task.pid:
            continue  # not started yet: nothing ran anywhere
        end = task.ended_at or task.started_at
        args = {"task_id": task.task_id, "state": task.state, "attempt": task.attempt,
                "owner_pid": task.owner_pid, "node_id": task.node_id,
                "actor_id": task.actor_id}
        if task.error:
            args["error"] = task.error
        cat = "actor_task" if task.type == "ACTOR_TASK" else "task"
        run = {"name": task.name, "cat": cat, "args": args}
        children = []
        if task.args_decoded_at > task.started_at:
            children.append((task.started_at, task.args_decoded_at,
                             {"name": "args", "cat": "args", "args": {"task_id": task.task_id}}))
        slices.append((task.pid, RUN_LANE, task.started_at, max(end, task.started_at),
                       run, children))
        if task.submitted_at and task.submitted_at < task.started_at:
            slices.append((task.pid, QUEUE_LANE, task.submitted_at, task.started_at,
                           {"name": f"{task.name} (queued)", "cat": "queue",
                            "args": {"task_id": task.task_id, "owner_pid": task.owner_pid}},
                           []))
    for row in transfers:
        slices.append((row["pid"], TRANSFER_LANE, row["started_at"], row["ended_at"],
                       {"name": "fetch " + row["object_id"][:12], "cat": "transfer",
                        "args": {"task_id": row["task_id"], "object_id": row["object_id"],
                                 "bytes": row["size"]}}, []))
    events: list[dict] = []
    lanes_used: set[tuple] = set()
    for (pid, kind), group in _by_track(slices).items():
        lane_ends: list[float] = []
        for _pid, _kind, start, end, event, children in sorted(group, key=lambda s: s[2]):
            lane = next((i for i, last in enumerate(lane_ends) if last <= start), None)
            if lane is None:
                lane = len(lane_ends)
                lane_ends.append(end)
            lane_ends[lane] = end
            tid = kind + lane
            lanes_used.add((pid, kind, tid))
            events.append({**event, "ph": "X", "pid": pid, "tid": tid,
                           "ts": start * 1e6, "dur": max(0.0, end - start) * 1e6})
            for child_start, child_end, child in children:
                events.append({**child, "ph": "X", "pid": pid, "tid": tid,
                               "ts": child_start * 1e6,
                               "dur": max(0.0, child_end - child_start) * 1e6})
    metadata = []
    for pid in sorted({pid for pid, _kind, _tid in lanes_used}):
        metadata.append({"name": "process_name", "ph": "M", "pid": pid,
                         "args": {"name": names.get(pid, f"pid {pid}")}})
    for pid, kind, tid in sorted(lanes_used):
        lane = tid - kind + 1
        metadata.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                         "args": {"name": _LANE_NAMES[kind] + (f" {lane}" if lane > 1 else "")}})
        metadata.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                         "args": {"sort_index": tid}})
    return metadata + events


def _by_track(slices: list[tuple]) -> dict[tuple, list]:
    tracks: dict[tuple, list] = {}
    for item in slices:
        tracks.setdefault((item[0], item[1]), []).append(item)
    return tracks


def _process_names(snapshots: list[dict]) -> dict[int, str]:
    names = {}
    for snapshot in snapshots:
        node = snapshot.get("node_id", "")[:8]
        for worker in snapshot.get("workers", ()):
            what = f"actor {worker['actor_id'][:8]}" if worker["actor_id"] else worker["kind"]
            names[worker["pid"]] = f"{what} pid {worker['pid']} (node {node})"
        for process in snapshot.get("processes", ()):
            if process.get("label") and "pid" in process:
                names[process["pid"]] = f"{process['label']} (node {node})"
    return names
