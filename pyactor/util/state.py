"""The state API: what runs, what waits, what holds memory, anywhere in the cluster.

    from pyactor.util import state
    state.list_actors(filters=["state=ALIVE"])        # [ActorState(...), ...]
    state.list_tasks(filters=[("state", "=", "RUNNING")], limit=20)
    state.summarize_tasks()                           # {"Counter.add": {"FINISHED": 3}, ...}
    print(state.memory_summary())                     # every object, who keeps it and why

Each list_* call asks every alive node of the cluster (state_client.py): a node answers for its
workers and store, and asks each of its processes for their tasks and references
(state_service.py, process_state.py); the head answers for actors and placement groups. The
answers are joined here into one small dataclass per row. `address` names the cluster
("host:port" or "auto"); by default the one this process is connected to, else the one
`pyactor start` recorded on this host. The calls block; from async code run them in an executor.

Filters: "key=value" / "key!=value" strings, or (key, "=" | "!=", value) tuples, over the row's
fields (state names compare case-insensitively). `limit` keeps that many rows (tasks: the most
recent ones). Task history is bounded: see pyactor/_private/task_events.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pyactor._private import state_client

DEFAULT_LIMIT = 100


# ---------------------------------------------------------------------- rows
@dataclass
class NodeState:
    node_id: str
    state: str  # ALIVE, DEAD
    is_head: bool
    address: str
    resources_total: dict
    resources_available: dict
    num_workers: int
    num_actors: int
    store_used_bytes: int
    store_capacity_bytes: int
    store_objects: int


@dataclass
class ActorState:
    actor_id: str
    state: str  # PENDING, ALIVE, RESTARTING, DEAD
    name: str
    class_name: str
    namespace: str
    node_id: str
    pid: int  # of the worker process hosting it (0 when not running)
    worker_id: str
    resources: dict
    restarts: int
    max_restarts: int
    detached: bool
    placement_group_id: str
    created_at: float  # time.time() values; 0 when it has not happened
    started_at: float
    ended_at: float
    error: str  # why it died


@dataclass
class TaskState:
    task_id: str
    state: str  # PENDING_ARGS, PENDING_WORKER, SUBMITTED, RUNNING, FINISHED, FAILED, CANCELLED
    name: str
    func_or_class_name: str  # the function, or "Class.method" for an actor call
    type: str  # NORMAL_TASK, ACTOR_TASK
    actor_id: str
    node_id: str  # where it ran (empty until it starts)
    worker_id: str
    pid: int  # the worker process that ran it (0 until it starts)
    owner_pid: int  # the process that submitted it
    attempt: int  # 0 for the first run; retries count up
    submitted_at: float
    args_ready_at: float  # when it had to wait for ref arguments, when they were ready
    started_at: float
    ended_at: float
    duration_s: float  # running time (start to end), 0 until it ends
    error: str
    events: list = field(default_factory=list)  # [(state, time)], its transitions in order
    args_decoded_at: float = 0.0  # its worker had its arguments (fetched, unpickled)
    thread: int = 0  # the worker thread that ran it (0: the main thread)
    resources: dict = field(default_factory=dict)  # a task's demand ({} for actor calls)


@dataclass
class ObjectState:
    object_id: str
    state: str  # PENDING, READY, FAILED (as its owner sees it); when no owner knows it, the
    #             store's: DELETED (freed by its owner, kept by views), SEALED, CREATED
    size_bytes: int
    location: str  # INLINE (in its owner's memory), STORE, PENDING
    node_id: str  # the node whose store holds it (empty when inline)
    copies_on: list  # other nodes whose stores hold a copy
    owner_pid: int
    owner_address: list
    task_id: str  # the task that makes it (empty for put)
    holders: list = field(default_factory=list)  # who keeps it alive and why: see Holder
    pinned_by: dict = field(default_factory=dict)  # pid -> zero-copy views into the store copy
    call_sites: list = field(default_factory=list)  # ["file:line (pid P) xN"], if recorded


@dataclass
class Holder:
    """One reason an object is kept: a `kind`, the process, and what it is there."""
    kind: str  # LOCAL_REFERENCE, PENDING_TASK_ARGUMENT, LINEAGE, BORROWER, TASK_RUNNING,
    #            CONTAINED_IN, ZERO_COPY_VIEW
    pid: int
    count: int
    detail: str


@dataclass
class WorkerState:
    worker_id: str  # empty for a driver
    kind: str  # worker, driver
    state: str  # STARTING, IDLE, LEASED, ACTOR, ALIVE (drivers)
    pid: int
    node_id: str
    actor_id: str
    address: list
    started_at: float
    log_files: list
    uss_bytes: int = 0  # filled by memory_summary / list_workers(detail=True)
    pss_bytes: int = 0
    rss_bytes: int = 0
    store_rss_bytes: int = 0
    store_pss_bytes: int = 0


@dataclass
class PlacementGroupState:
    placement_group_id: str
    name: str
    namespace: str
    strategy: str
    state: str  # PENDING, CREATED, RESCHEDULING, REMOVED
    bundles: dict
    bundles_to_node_id: dict
    detached: bool


@dataclass
class ProcessMemory:
    """One process in memory_summary(): what it owns, and its memory as the kernel counts it
    (USS: pages only it maps; PSS: shared pages split among their mappers; the store's pages
    it touched are shown apart, so shared memory is not counted once per process)."""
    pid: int
    kind: str  # driver, worker
    node_id: str
    label: str  # the actor it hosts, if any
    owned_objects: int
    owned_inline_bytes: int  # values small enough to live in its own memory
    owned_store_bytes: int  # values it owns that live in a store
    refs_held: int  # ObjectRef instances alive in it
    uss_bytes: int
    pss_bytes: int
    rss_bytes: int
    store_rss_bytes: int  # store pages it has touched (its mapping's RSS)
    store_pss_bytes: int  # its share of them


@dataclass
class NodeMemory:
    node_id: str
    store_used_bytes: int
    store_capacity_bytes: int
    store_objects: int
    pinned_objects: int
    processes: int
    uss_bytes: int  # sum over its processes: no page counted twice
    pss_bytes: int  # sum over its processes: shared pages (the store's too) counted once


@dataclass
class MemorySummary:
    objects: list  # ObjectState rows
    processes: list  # ProcessMemory rows
    nodes: list  # NodeMemory rows

    def __str__(self) -> str:
        from pyactor._private.memory_report import format_summary
        return format_summary(self)


# ---------------------------------------------------------------------- filters and limits
_OPS = ("!=", "=")


def _parse_filters(filters, row_type) -> list[tuple[str, str, str]]:
    if filters is None:
        return []
    if isinstance(filters, (str, tuple)):
        filters = [filters]
    if not isinstance(filters, (list,)):
        raise TypeError(f"filters must be a list of 'key=value' strings or (key, op, value) "
                        f"tuples, got {type(filters).__name__}")
    names = [f.name for f in dataclasses.fields(row_type)]
    parsed = []
    for item in filters:
        if isinstance(item, str):
            for op in _OPS:
                key, found, value = item.partition(op)
                if found:
                    break
            else:
                raise ValueError(f"filter {item!r} must look like 'key=value' or 'key!=value'")
            key, value = key.strip(), value.strip()
        elif isinstance(item, tuple) and len(item) == 3:
            key, op, value = item
            if op not in _OPS:
                raise ValueError(f"filter {item!r}: the operator must be '=' or '!=', got {op!r}")
        else:
            raise TypeError(f"filter {item!r} must be 'key=value' or (key, op, value)")
        if key not in names:
            raise ValueError(f"filter {item!r}: {row_type.__name__} has no field {key!r} "
                             f"(fields: {', '.join(names)})")
        parsed.append((key, op, str(value)))
    return parsed


def _matches(row, parsed) -> bool:
    for key, op, value in parsed:
        have = getattr(row, key)
        if isinstance(have, bool):
            equal = str(have).lower() == value.lower()
        elif isinstance(have, (int, float)):
            try:
                equal = float(have) == float(value)
            except ValueError:
                equal = False
        else:
            equal = str(have).lower() == value.lower()
        if equal != (op == "="):
            return False
    return True


def _select(rows: list, filters, limit, row_type) -> list:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    parsed = _parse_filters(filters, row_type)
    rows = [row for row in rows if _matches(row, parsed)]
    return rows if limit is None else rows[-limit:] if row_type is TaskState else rows[:limit]


# ---------------------------------------------------------------------- nodes, actors, groups
def list_nodes(filters=None, limit: int | None = DEFAULT_LIMIT, address: str | None = None
               ) -> list[NodeState]:
    """Every node of the cluster (dead ones stay a while: see docs/cluster.md)."""
    return _list("nodes", filters, limit, address)


def _node_rows(answer: dict) -> list[NodeState]:
    rows = []
    for node in answer["nodes"]:
        store = node.get("ObjectStore") or {}
        rows.append(NodeState(
            node_id=node["NodeID"], state="ALIVE" if node["Alive"] else "DEAD",
            is_head=bool(node.get("IsHead")),
            address=f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}",
            resources_total=node.get("Resources") or {},
            resources_available=node.get("Available") or {},
            num_workers=node.get("Workers", 0), num_actors=node.get("Actors", 0),
            store_used_bytes=store.get("used_bytes", 0),
            store_capacity_bytes=store.get("capacity_bytes", 0),
            store_objects=store.get("object_count", 0)))
    return rows


def list_actors(filters=None, limit: int | None = DEFAULT_LIMIT, address: str | None = None
                ) -> list[ActorState]:
    """Every actor the head knows: alive, pending, restarting, and dead ones."""
    return _list("actors", filters, limit, address)


def _actor_rows(answer: dict) -> list[ActorState]:
    hosts = {}  # actor id -> (pid, worker id) of the worker running it now
    for snapshot in answer["snapshots"]:
        for worker in snapshot.get("workers", ()):
            if worker["actor_id"] and worker["state"] == "ACTOR":
                hosts[worker["actor_id"]] = (worker["pid"], worker["worker_id"])
    rows = []
    for actor in answer["actors"] or ():
        pid, worker_id = hosts.get(actor["actor_id"], (0, ""))
        if actor["state"] == "DEAD":
            pid, worker_id = 0, ""
        rows.append(ActorState(
            actor_id=actor["actor_id"], state=actor["state"], name=actor["name"],
            class_name=actor["class_name"], namespace=actor["namespace"],
            node_id=actor["node_id"], pid=pid, worker_id=worker_id,
            resources=actor["resources"], restarts=actor["restarts"],
            max_restarts=actor["max_restarts"], detached=actor["detached"],
            placement_group_id=actor["placement_group_id"], created_at=actor["created_at"],
            started_at=actor["started_at"], ended_at=actor["ended_at"],
            error=actor["death_cause"]))
    rows.sort(key=lambda row: row.created_at)
    return rows


def list_placement_groups(filters=None, limit: int | None = DEFAULT_LIMIT,
                          address: str | None = None) -> list[PlacementGroupState]:
    return _list("placement-groups", filters, limit, address)


def _group_rows(answer: dict) -> list[PlacementGroupState]:
    return [PlacementGroupState(
        placement_group_id=g["placement_group_id"], name=g["name"], namespace=g["namespace"],
        strategy=g["strategy"], state=g["state"], bundles=dict(g["bundles"]),
        bundles_to_node_id=dict(g["bundles_to_node_id"]), detached=g["is_detached"])
        for g in (answer["groups"] or {}).values()]


# ---------------------------------------------------------------------- workers
def list_workers(filters=None, limit: int | None = DEFAULT_LIMIT, address: str | None = None
                 ) -> list[WorkerState]:
    """Every worker and driver process of every node, with its memory (USS/PSS from /proc)."""
    return _list("workers", filters, limit, address)


def _worker_rows(answer: dict) -> list[WorkerState]:
    rows = []
    for snapshot in answer["snapshots"]:
        memory = snapshot.get("process_memory") or {}
        for worker in snapshot.get("workers", ()):
            used = memory.get(str(worker["pid"]), {})
            rows.append(WorkerState(
                worker_id=worker["worker_id"], kind=worker["kind"], state=worker["state"],
                pid=worker["pid"], node_id=snapshot["node_id"], actor_id=worker["actor_id"],
                address=worker["address"], started_at=worker["started_at"],
                log_files=worker["log_files"], uss_bytes=used.get("uss", 0),
                pss_bytes=used.get("pss", 0), rss_bytes=used.get("rss", 0),
                store_rss_bytes=used.get("store_rss", 0),
                store_pss_bytes=used.get("store_pss", 0)))
    return rows


# ---------------------------------------------------------------------- tasks
def list_tasks(filters=None, limit: int | None = DEFAULT_LIMIT, address: str | None = None
               ) -> list[TaskState]:
    """Tasks and actor calls: those not finished, and the recent history of finished ones
    (bounded per process: task_events.py), oldest first; `limit` keeps the most recent."""
    return _list("tasks", filters, limit, address)


def _task_rows(snapshots: list[dict]) -> list[TaskState]:
    owners: dict[str, dict] = {}
    runs: dict[str, dict] = {}
    for snapshot in snapshots:
        for process in snapshot.get("processes", ()):
            for row in process.get("tasks", ()):
                task_id = row["task_id"]
                if row["side"] == "owner":
                    known = owners.get(task_id)
                    # The live row of a call that has just finished may sit beside its record.
                    if known is None or (known["state"] not in _FINAL
                                         and row["state"] in _FINAL):
                        owners[task_id] = row
                elif row["side"] == "worker":
                    known = runs.get(task_id)
                    if known is None or row["started_at"] >= known["started_at"]:
                        runs[task_id] = row  # the latest attempt
    rows = []
    for task_id in set(owners) | set(runs):
        owner, run = owners.get(task_id), runs.get(task_id)
        if owner is not None and owner["state"] in _FINAL:
            state = owner["state"]
        elif run is not None and run["state"] == "RUNNING":
            state = "RUNNING"
        elif owner is not None:
            state = owner["state"]
        else:
            state = run["state"]
        name = owner["name"] if owner is not None else run["name"]
        actor_id = (owner or run)["actor_id"]
        submitted = owner["submitted_at"] if owner is not None else 0.0
        args_ready = owner["args_ready_at"] if owner is not None else 0.0
        started = run["started_at"] if run is not None else 0.0
        ended = (owner["ended_at"] if owner is not None and owner["ended_at"] else
                 run["ended_at"] if run is not None else 0.0)
        run_ended = run["ended_at"] if run is not None else 0.0
        events = []
        if submitted:
            if args_ready:
                events.append(("PENDING_ARGS", submitted))
            events.append(("PENDING_WORKER", args_ready or submitted))
        if started:
            events.append(("RUNNING", started))
        if ended and state in _FINAL:
            events.append((state, ended))
        rows.append(TaskState(
            task_id=task_id, state=state, name=name, func_or_class_name=name,
            type="ACTOR_TASK" if actor_id else "NORMAL_TASK", actor_id=actor_id,
            node_id=run["node_id"] if run is not None else "",
            worker_id=run["worker_id"] if run is not None else "",
            pid=run["pid"] if run is not None else 0,
            owner_pid=owner["owner_pid"] if owner is not None else 0,
            attempt=owner["attempt"] if owner is not None else 0,
            submitted_at=submitted, args_ready_at=args_ready, started_at=started,
            ended_at=ended, duration_s=max(0.0, run_ended - started) if run_ended else 0.0,
            error=owner["error"] if owner is not None else "", events=events,
            args_decoded_at=run["args_decoded_at"] if run is not None else 0.0,
            thread=run["thread"] if run is not None else 0,
            resources=owner["resources"] if owner is not None else {}))
    rows.sort(key=lambda row: (row.submitted_at or row.started_at, row.task_id))
    return rows


_FINAL = ("FINISHED", "FAILED", "CANCELLED")


def summarize_tasks(address: str | None = None) -> dict[str, dict[str, int]]:
    """Per function (or Class.method): how many tasks are in each state."""
    return _count_states(list_tasks(limit=None, address=address), "func_or_class_name")


def summarize_actors(address: str | None = None) -> dict[str, dict[str, int]]:
    """Per actor class: how many actors are in each state."""
    return _count_states(list_actors(limit=None, address=address), "class_name")


def _count_states(rows: list, key: str) -> dict[str, dict[str, int]]:
    summary: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = summary.setdefault(getattr(row, key), {})
        counts[row.state] = counts.get(row.state, 0) + 1
    return dict(sorted(summary.items()))


# ---------------------------------------------------------------------- objects and memory
def list_objects(filters=None, limit: int | None = DEFAULT_LIMIT, address: str | None = None
                 ) -> list[ObjectState]:
    """Every object of the cluster: its size, where it lives, its owner, who keeps it."""
    return _list("objects", filters, limit, address)


def summarize_objects(address: str | None = None) -> dict[str, dict]:
    """Per location (INLINE, STORE, ...): how many objects and how many bytes."""
    summary: dict[str, dict] = {}
    for row in list_objects(limit=None, address=address):
        totals = summary.setdefault(row.location, {"objects": 0, "bytes": 0})
        totals["objects"] += 1
        totals["bytes"] += row.size_bytes
    return dict(sorted(summary.items()))


def memory_summary(address: str | None = None) -> MemorySummary:
    """Every object with who keeps it alive and why, totals per process and per node, and
    each process's USS/PSS beside the store bytes it maps. `print()` it for a report."""
    return _memory_rows(state_client.gather(_MEMORY_SECTIONS, address=address))


_MEMORY_SECTIONS = ["objects", "store_objects", "process_memory"]


def _memory_rows(answer: dict) -> MemorySummary:
    from pyactor._private.memory_report import build_summary
    return build_summary(answer["snapshots"])


# ---------------------------------------------------------------------- one query per kind
@dataclass(frozen=True)
class _Query:
    sections: list | None  # what each node is asked for (None: only the list of nodes)
    build: Any  # answer -> rows
    row_type: type
    actors: bool = False  # ask the head for its actor table
    groups: bool = False  # and for its placement groups


_QUERIES = {
    "nodes": _Query(None, _node_rows, NodeState),
    "actors": _Query([], _actor_rows, ActorState, actors=True),
    "placement-groups": _Query(None, _group_rows, PlacementGroupState, groups=True),
    "workers": _Query(["process_memory"], _worker_rows, WorkerState),
    "tasks": _Query(["tasks"], lambda answer: _task_rows(answer["snapshots"]), TaskState),
    "objects": _Query(_MEMORY_SECTIONS, lambda answer: _memory_rows(answer).objects,
                      ObjectState),
}
LIST_KINDS = tuple(_QUERIES)


def _list(kind: str, filters, limit, address) -> list:
    query = _QUERIES[kind]
    _parse_filters(filters, query.row_type)  # bad input fails before anything is sent
    answer = state_client.gather(query.sections, address=address, actors=query.actors,
                                 groups=query.groups)
    return _select(query.build(answer), filters, limit, query.row_type)


async def list_async(kind: str, filters=None, limit: int | None = DEFAULT_LIMIT,
                     address: str | None = None) -> list:
    """`list_<kind>` for code running on an event loop (a web server): `kind` is one of
    LIST_KINDS ("nodes", "actors", "tasks", "objects", "workers", "placement-groups"). The
    query runs on the caller's loop, which must not be a pyactor node's own."""
    query = _QUERIES.get(kind)
    if query is None:
        raise ValueError(f"kind must be one of {', '.join(LIST_KINDS)}, got {kind!r}")
    _parse_filters(filters, query.row_type)
    answer = await state_client.gather_async(query.sections, address=address,
                                             actors=query.actors, groups=query.groups)
    return _select(query.build(answer), filters, limit, query.row_type)


async def memory_summary_async(address: str | None = None) -> MemorySummary:
    """memory_summary() for code running on an event loop."""
    return _memory_rows(await state_client.gather_async(_MEMORY_SECTIONS, address=address))
