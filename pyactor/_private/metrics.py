"""Metrics inside one process, and their merge across the processes of a node.

    user code ---- Counter.inc / Gauge.set / Histogram.observe ---> REGISTRY (this process)
    worker executor ---- TaskStats (integer counts, one duration histogram per kind) ---^
                                                                                         |
    node --CollectMetrics--> each worker and driver runtime --Reply(snapshot())----------+
    node: NodeMetrics.merge(its processes' snapshots, those of processes that exited)
          --> metrics_export.py turns the merged snapshot into Prometheus families

Nothing is sent until the node asks (a scrape of its endpoint): between scrapes a metric costs
its update, a dict lookup and an addition under a lock (user metrics) or a list increment (the
runtime's own counts). A snapshot is plain msgpack data, one row per metric:

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
    """What a worker counts about the calls it runs: the hot path pays an increment at start,
    one at the end and a histogram bucket increment (no lock: each worker's main thread runs
    its calls; a threaded actor's counts may lose an increment to a race, never more)."""

    KINDS = ("task", "actor_call")

    def __init__(self):
        # Per kind: [started, finished, failed]; a duration histogram per kind.
        self.counts = [[0, 0, 0] for _ in self.KINDS]
        self.buckets = [[0] * (len(DURATION_BOUNDARIES_S) + 1) for _ in self.KINDS]
        self.duration_sum_s = [0.0 for _ in self.KINDS]

    def ended(self, kind: int, ok: bool, duration_s: float) -> None:
        self.counts[kind][1 if ok else 2] += 1
        self.buckets[kind][bisect.bisect_left(DURATION_BOUNDARIES_S, duration_s)] += 1
        self.duration_sum_s[kind] += duration_s

    def snapshot(self) -> list:
        tasks, durations = [], []
        for i, kind in enumerate(self.KINDS):
            started, finished, failed = self.counts[i]
            if not started:
                continue
            tasks += [[[kind, "RUNNING"], [started - finished - failed, 0.0]],
                      [[kind, "FINISHED"], [finished, 0.0]], [[kind, "FAILED"], [failed, 0.0]]]
            durations.append([[kind], [list(self.buckets[i]), self.duration_sum_s[i]]])
        if not tasks:
            return []
        # Their gauges add up over processes (time 0: the merge sums rows stamped 0).
        return [["pyactor_tasks", GAUGE, "Tasks and actor calls run by this node's workers, "
                 "by state (FINISHED and FAILED count since each worker started)",
                 ["Kind", "State"], [], tasks],
                ["pyactor_task_duration_seconds", HISTOGRAM, "How long tasks and actor calls "
                 "ran in this node's workers", ["Kind"], list(DURATION_BOUNDARIES_S), durations]]


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
