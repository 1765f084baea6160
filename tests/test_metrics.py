"""pyactor.util.metrics (Ray's ray.util.metrics API), the merge of processes' snapshots, and a
node's Prometheus endpoint: a user counter incremented by tasks and the built-in task counts."""

from __future__ import annotations

import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyactor as pa
from pyactor._private import metrics as M
from pyactor.util.metrics import Counter, Gauge, Histogram

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def test_counter_rejects_bad_names_tags_and_values():
    """Bad input raises at the call with a message naming the metric and what is wrong."""
    with pytest.raises(ValueError, match="not a Prometheus name"):
        Counter("1bad")
    with pytest.raises(TypeError, match="tag_keys"):
        Counter("c_tags", tag_keys="route")
    c = Counter("c_checked", description="d", tag_keys=("route",))
    with pytest.raises(ValueError, match="missing value for tag key"):
        c.inc()
    with pytest.raises(ValueError, match="has no tag key"):
        c.inc(tags={"route": "/", "other": "x"})
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(0, tags={"route": "/"})
    with pytest.raises(TypeError, match="must be a number"):
        c.inc("1", tags={"route": "/"})
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("h_bad", boundaries=[1, 1])
    with pytest.raises(ValueError, match="already registered"):
        Gauge("c_checked")


def test_default_tags_and_shared_state_of_one_name():
    """Default tags fill missing keys; two objects of one name count into one series."""
    a = Counter("c_shared", tag_keys=("k",)).set_default_tags({"k": "x"})
    b = Counter("c_shared", tag_keys=("k",))
    a.inc(2)
    b.inc(tags={"k": "x"})
    b.inc(tags={"k": "y"})
    row = next(r for r in M.REGISTRY.snapshot() if r[0] == "c_shared")
    assert dict((tuple(t), v) for t, v in row[5]) == {("x",): 3.0, ("y",): 1.0}
    assert a.info == {"name": "c_shared", "description": "", "tag_keys": ("k",),
                      "default_tags": {"k": "x"}}


def test_histogram_counts_each_value_into_its_bucket():
    """A value goes into the first bucket whose upper boundary is >= it (Prometheus `le`)."""
    h = Histogram("h_buckets", boundaries=[1, 10])
    for value in (0.5, 1, 2, 10, 11):
        h.observe(value)
    row = next(r for r in M.REGISTRY.snapshot() if r[0] == "h_buckets")
    assert row[5] == [[[], [[2, 2, 1], 24.5]]]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 5)), max_size=20),
       st.integers(1, 4))
def test_merge_of_split_snapshots_equals_the_whole(increments, parts):
    """Counters split over any number of processes add up to what one process would count."""
    chunks = [increments[i::parts] for i in range(parts)]
    snapshots = []
    for chunk in chunks:
        totals: dict = {}
        for tag, amount in chunk:
            totals[tag] = totals.get(tag, 0) + amount
        snapshots.append([["m", M.COUNTER, "", ["t"], [], [[[t], v] for t, v in totals.items()]]])
    merged = M.merge(snapshots)
    expected: dict = {}
    for tag, amount in increments:
        expected[(tag,)] = expected.get((tag,), 0) + amount
    assert (merged["m"][5] if merged else {}) == expected


def test_gauges_keep_the_latest_write_and_system_gauges_add_up():
    """A user gauge keeps the value set last over processes; time-0 rows (workers') add up."""
    older = [["g", M.GAUGE, "", [], [], [[[], [5.0, 100.0]]]]]
    newer = [["g", M.GAUGE, "", [], [], [[[], [7.0, 200.0]]]]]
    assert M.merge([newer, older])["g"][5] == {(): [7.0, 200.0]}
    per_worker = [["s", M.GAUGE, "", [], [], [[[], [2, 0]]]]]
    assert M.merge([per_worker, per_worker])["s"][5] == {(): [4, 0]}


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@pa.remote
def count_request(route):
    from pyactor.util.metrics import Counter, Histogram
    Counter("test_requests", "requests seen by tasks", tag_keys=("route",)).inc(
        tags={"route": route})
    Histogram("test_request_size", boundaries=[10, 100]).observe(42)
    return route


@pa.remote
def fails():
    raise ValueError("counted as FAILED")


@pa.remote
class Meter:
    def reading(self, value):
        from pyactor.util.metrics import Gauge
        Gauge("test_meter_reading").set(value)
        return value


def test_endpoint_serves_user_metrics_from_workers_and_task_counts(pa_fresh, monkeypatch):
    """A node started with a metrics port serves, at the URL pa.nodes() lists: a counter
    incremented in tasks (summed over workers), a histogram, an actor's gauge, the driver's own
    counter, and the built-in counts of finished and failed tasks and actor calls."""
    monkeypatch.setenv("PYACTOR_METRICS_EXPORT_PORT", "0")
    pa.init(num_cpus=2)
    url = pa.nodes()[0]["MetricsExportURL"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    pa.get([count_request.remote("/a") for _ in range(5)] + [count_request.remote("/b")])
    with pytest.raises(ValueError):
        pa.get(fails.remote())
    meter = Meter.remote()
    assert pa.get([meter.reading.remote(3), meter.reading.remote(8)]) == [3, 8]
    Counter("test_driver_side").inc(4)

    samples = _scrape(url)
    assert samples["test_requests_total{route=/a}"] == 5
    assert samples["test_requests_total{route=/b}"] == 1
    assert samples["test_request_size_count{}"] == 6
    assert samples["test_request_size_bucket{le=100.0}"] == 6
    assert samples["test_meter_reading{}"] == 8
    assert samples["test_driver_side_total{}"] == 4
    assert samples["pyactor_tasks{Kind=task,State=FINISHED}"] == 6
    assert samples["pyactor_tasks{Kind=task,State=FAILED}"] == 1
    assert samples["pyactor_tasks{Kind=actor_call,State=FINISHED}"] == 2
    assert samples["pyactor_task_duration_seconds_count{Kind=task}"] == 7
    assert samples["pyactor_object_store_capacity_bytes{}"] > 0
    assert sum(v for k, v in samples.items() if k.startswith("pyactor_workers{")) >= 2

    # What an actor counted stays counted after its process is gone.
    pa.kill(meter)
    pa.get(count_request.remote("/a"))
    after = _scrape(url)
    assert after["pyactor_tasks{Kind=actor_call,State=FINISHED}"] == 2
    assert after["test_requests_total{route=/a}"] == 6


def test_status_lists_the_endpoint_or_why_there_is_none():
    """`pyactor status` prints each node's metrics URL, or the reason it has none."""
    from pyactor.cli import format_status
    node = {"NodeID": "ab" * 8, "Alive": True, "NodeManagerAddress": "127.0.0.1",
            "NodeManagerPort": 1, "Resources": {"CPU": 1}, "Available": {"CPU": 1},
            "ObjectStore": {}, "MetricsExportURL": "http://127.0.0.1:9/metrics"}
    assert "metrics    http://127.0.0.1:9/metrics" in format_status("h:1", [node])


def test_without_prometheus_client_the_node_says_how_to_get_it(monkeypatch):
    """A node whose Python lacks prometheus-client starts no endpoint and says which extra to
    install (the line `pyactor status` shows)."""
    import sys

    from pyactor._private.metrics_export import start_endpoint
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    endpoint, reason = start_endpoint(object(), "127.0.0.1", 0)
    assert endpoint is None and "pip install 'pyactor[metrics]'" in reason
