"""Metrics inside one process, and their merge across the processes of a node.

    user code ---- Counter.inc / Gauge.set / Histogram.observe ---> REGISTRY (this process)
    worker executor ---- TaskStats (integer counts; durations from task_events.RAN) ----^
                                                                                         |
    node --CollectMetrics--> each worker and driver runtime --Reply(snapshot())----------+
    node: NodeMetrics.merge(its processes' snapshots, those of processes that exited)
          --> metrics_export.py turns the merged snapshot into Prometheus families

Nothing is sent until the node asks (a scrape of its endpoint): between scrapes a metric costs
its update, a dict lookup and an addition under a lock (user metrics) or one list increment per
call (the runtime's own counts). A snapshot is plain msgpack data, one row per metric:

    [name, kind, description, tag_keys, boundaries, [[tag_values, value], ...]]

where value is a number (counter), [number, time set] (gauge: the latest write wins across
processes) or [bucket counts (one per boundary, then +Inf), sum] (histogram).
"""

from __future__ import annotations

import bisect
import threading
import time

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
# Seconds; a task on this runtime takes from tens of microseconds to hours.
DURATION_BOUNDARIES_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0)


class MetricState:
    """One metric's values in this process, keyed by the tuple of its tag values."""

    __slots__ = ("name", "kind", "description", "tag_keys", "boundaries", "values")

    def __init__(self, name: str, kind: str, description: str, tag_keys: tuple,
                 boundaries: tuple = ()):
        self.name, self.kind, self.description = name, kind, description
        self.tag_keys, self.boundaries = tag_keys, boundaries
        self.values: dict[tuple, object] = {}

    def row(self) -> list:
        if self.kind == HISTOGRAM:
            values = [[list(tags), [list(v[0]), v[1]]] for tags, v in self.values.items()]
        else:
            values = [[list(tags), v] for tags, v in self.values.items()]
        return [self.name, self.kind, self.description, list(self.tag_keys),
                list(self.boundaries), values]


class Registry:
    """The metrics of this process. Updates come from any thread (threaded actors)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: dict[str, MetricState] = {}

    def register(self, name: str, kind: str, description: str, tag_keys: tuple,
                 boundaries: tuple = ()) -> MetricState:
        """The state of `name`; a second metric object of the same name shares it (a task
        that makes its Counter on every call counts into one series), unless the two disagree
        on what the metric is."""
        with self._lock:
            state = self._metrics.get(name)
            if state is None:
                state = self._metrics[name] = MetricState(name, kind, description, tag_keys,
                                                          boundaries)
            elif (state.kind, state.tag_keys, state.boundaries) != (kind, tag_keys, boundaries):
                raise ValueError(
                    f"metric {name!r} is already registered in this process as a {state.kind} "
                    f"with tag_keys {state.tag_keys}"
                    + (f" and boundaries {list(state.boundaries)}" if state.boundaries else "")
                    + f"; a {kind} with tag_keys {tag_keys} cannot share its name")
            return state

    def add(self, state: MetricState, tags: tuple, amount: float) -> None:
        with self._lock:
            state.values[tags] = state.values.get(tags, 0.0) + amount

    def set(self, state: MetricState, tags: tuple, value: float) -> None:
        with self._lock:
            state.values[tags] = [value, time.time()]

    def observe(self, state: MetricState, tags: tuple, value: float) -> None:
        with self._lock:
            entry = state.values.get(tags)
            if entry is None:
                entry = state.values[tags] = [[0] * (len(state.boundaries) + 1), 0.0]
            entry[0][bisect.bisect_left(state.boundaries, value)] += 1
            entry[1] += value

    def snapshot(self) -> list:
        with self._lock:
            return [state.row() for state in self._metrics.values() if state.values]


REGISTRY = Registry()


class TaskStats:
    """What a worker counts about the calls it runs. The hot path pays one integer increment
    (finished or failed, indexed by kind: 0 task, 1 actor call; no lock: a threaded actor may
    lose an increment to a race, never more). How long calls ran and what runs now are read when
    the node asks, from the records task_events.py keeps anyway (RAN, RUNNING); a call's
    duration joins the histogram at the first snapshot after it ended."""

    KINDS = ("task", "actor_call")

    def __init__(self):
        self.finished = [0, 0]
        self.failed = [0, 0]
        self.buckets = [[0] * (len(DURATION_BOUNDARIES_S) + 1) for _ in self.KINDS]
        self.duration_sum_s = [0.0 for _ in self.KINDS]
        self._newest_folded = None  # the newest RAN record already in the histograms

    def _fold_durations(self) -> None:
        from pyactor._private import task_events
        records = task_events.RAN.copy()  # one C call: safe while the main thread appends
        first_new = 0
        if self._newest_folded is not None:
            # Records are in the order they ended; when the newest folded one has left the
            # bounded deque, every record still in it is newer.
            for i in range(len(records) - 1, -1, -1):
                if records[i] is self._newest_folded:
                    first_new = i + 1
                    break
        for i in range(first_new, len(records)):
            record = records[i]  # (task id, name, actor id, started, decoded, ended, ...)
            kind = record[2] is not None
            duration_s = record[5] - record[3]
            self.buckets[kind][bisect.bisect_left(DURATION_BOUNDARIES_S, duration_s)] += 1
            self.duration_sum_s[kind] += duration_s
        if records:
            self._newest_folded = records[-1]

    def snapshot(self) -> list:
        from pyactor._private import task_events
        self._fold_durations()
        running = [0, 0]
        for _name, actor_id, _started in task_events.RUNNING.copy().values():
            running[actor_id is not None] += 1
        tasks, durations = [], []
        for i, kind in enumerate(self.KINDS):
            if not (running[i] or self.finished[i] or self.failed[i]):
                continue
            tasks += [[[kind, "RUNNING"], [running[i], 0.0]],
                      [[kind, "FINISHED"], [self.finished[i], 0.0]],
                      [[kind, "FAILED"], [self.failed[i], 0.0]]]
            if any(self.buckets[i]):
                durations.append([[kind], [list(self.buckets[i]), self.duration_sum_s[i]]])
        rows = []
        if tasks:
            # Their gauges add up over processes (time 0: merge() sums rows stamped 0).
            rows.append(["pyactor_tasks", GAUGE, "Tasks and actor calls run by this node's "
                         "workers, by state (FINISHED and FAILED count since each worker "
                         "started)", ["Kind", "State"], [], tasks])
        if durations:
            rows.append(["pyactor_task_duration_seconds", HISTOGRAM, "How long tasks and actor "
                         "calls ran in this node's workers", ["Kind"],
                         list(DURATION_BOUNDARIES_S), durations])
        return rows


def merge(snapshots: list[list]) -> dict[str, list]:
    """Several processes' snapshots as one: counters and histograms add up, a gauge keeps its
    latest write (a gauge stamped with time 0 adds up instead: per-process system gauges)."""
    merged: dict[str, list] = {}
    for snapshot in snapshots:
        for name, kind, description, tag_keys, boundaries, values in snapshot:
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = [name, kind, description, tag_keys, boundaries, {}]
            elif (entry[1], entry[3], entry[4]) != (kind, tag_keys, boundaries):
                continue  # two processes disagree on what it is: keep the first seen
            series = entry[5]
            for tags, value in values:
                key = tuple(tags)
                old = series.get(key)
                if old is None:
                    series[key] = _copy(kind, value)
                elif kind == COUNTER:
                    series[key] = old + value
                elif kind == GAUGE:
                    if value[1] == 0 and old[1] == 0:
                        series[key] = [old[0] + value[0], 0]
                    elif value[1] >= old[1]:
                        series[key] = list(value)
                else:
                    series[key] = [[a + b for a, b in zip(old[0], value[0])], old[1] + value[1]]
    return merged


def _copy(kind: str, value):
    if kind == HISTOGRAM:
        return [list(value[0]), value[1]]
    return list(value) if kind == GAUGE else value


def to_snapshot(merged: dict[str, list]) -> list:
    """A merged table back into snapshot rows (what retired processes leave behind)."""
    return [[name, kind, description, tag_keys, boundaries,
             [[list(tags), value] for tags, value in series.items()]]
            for name, kind, description, tag_keys, boundaries, series in merged.values()]


def process_snapshot(executor=None) -> list:
    """This process's snapshot: its user metrics and, in a worker, its task counts."""
    rows = REGISTRY.snapshot()
    stats = getattr(executor, "task_stats", None)
    if stats is not None:
        rows += stats.snapshot()
    return rows
