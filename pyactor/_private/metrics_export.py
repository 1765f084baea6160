"""A node's Prometheus endpoint: its processes' metrics, summed, plus the node's own.

    Prometheus --GET /metrics--> [HTTP thread] Collector.collect()
        --run_coroutine_threadsafe--> [node loop] NodeMetrics.collect():
            CollectMetrics to every worker and driver connected to this node (1 s at most;
            a process that does not answer in time contributes its previous snapshot)
            + what exited processes left (their counts keep counting, their RUNNING does not)
            + the node's own gauges (store, workers, leases waiting), read at that moment
        <-- merged table --  families built on the HTTP thread

Nothing happens between scrapes: the cost of metrics away from a scrape is each process's own
updates. prometheus-client is an optional extra (`pip install 'pyactor[metrics]'`); without it
the node runs as before and `pyactor status` says why it exports nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from pyactor._private import protocol as P
from pyactor._private.metrics import (COUNTER, GAUGE, HISTOGRAM, merge, process_snapshot,
                                      to_snapshot)

logger = logging.getLogger("pyactor.node")
COLLECT_TIMEOUT_S = 1.0
MISSING_CLIENT = ("metrics are not exported: prometheus-client is not installed "
                  "(pip install 'pyactor[metrics]')")


class NodeMetrics:
    """The node-side merge of its processes' snapshots (runs on the node's loop)."""

    def __init__(self, node):
        self.node = node
        self.last: dict = {}  # connection -> its process's latest snapshot
        self.retired: dict = {}  # merged snapshots of processes that exited
        self.pending: dict[int, tuple] = {}  # request id -> (connection, future)

    def _runtimes(self) -> list:
        conns = [w.conn for w in self.node.workers.values() if w.conn is not None]
        conns += list(self.node.drivers)
        return [c for c in conns if not c.closed]

    async def collect(self) -> dict[str, list]:
        loop = asyncio.get_running_loop()
        waiting = []
        for conn in self._runtimes():
            request_id = next(self.node._forward_ids)
            future = loop.create_future()
            self.pending[request_id] = (conn, future)
            conn.send(P.encode(P.CollectMetrics(request_id)))
            waiting.append(request_id)
        futures = [self.pending[r][1] for r in waiting]
        if futures:
            await asyncio.wait(futures, timeout=COLLECT_TIMEOUT_S)
        for request_id in waiting:
            conn, future = self.pending.pop(request_id)
            if future.done() and isinstance(future.result(), list):
                self.last[conn] = future.result()
        return merge([to_snapshot(self.retired), *self.last.values(), process_snapshot(),
                      self.node_rows()])

    def on_reply(self, message: P.Reply) -> bool:
        """Takes the reply if it answers a CollectMetrics of ours."""
        entry = self.pending.get(message.request_id)
        if entry is None:
            return False
        if not entry[1].done():
            entry[1].set_result(message.value)
        return True

    def on_closed(self, conn) -> None:
        """A process exited: what it counted stays, what it was running does not."""
        snapshot = self.last.pop(conn, None)
        if not snapshot:
            return
        kept = []
        for name, kind, description, tag_keys, boundaries, values in snapshot:
            if name == "pyactor_tasks":
                values = [v for v in values if v[0][1] != "RUNNING"]
            kept.append([name, kind, description, tag_keys, boundaries, values])
        self.retired = merge([to_snapshot(self.retired), kept])

    def node_rows(self) -> list:
        node, now = self.node, time.time()
        rows = []
        if node.store is not None:
            stats = node.store.stats()
            rows += [
                _gauge("pyactor_object_store_used_bytes", "Bytes in use in this node's object "
                       "store", stats.used_bytes, now),
                _gauge("pyactor_object_store_capacity_bytes", "Size of this node's object store",
                       stats.capacity_bytes, now),
                _gauge("pyactor_object_store_objects", "Objects in this node's store",
                       stats.object_count, now),
                _gauge("pyactor_object_store_evicted_bytes", "Bytes evicted from this node's "
                       "store to make room, since it started", stats.evicted_bytes, now)]
        spiller = getattr(node, "spiller", None)
        if spiller is not None:
            spill = spiller.stats()
            rows += [
                _gauge("pyactor_object_store_spilled_bytes", "Bytes of this node's objects "
                       "spilled to its disk now", spill["spilled_bytes"], now),
                _gauge("pyactor_object_store_spilled_objects", "Objects of this node spilled "
                       "to its disk now", spill["spilled_objects"], now),
                _gauge("pyactor_object_store_spilled_total_bytes", "Bytes spilled to disk since "
                       "the node started", spill["spilled_total_bytes"], now),
                _gauge("pyactor_object_store_restored_total_bytes", "Bytes read back from disk "
                       "since the node started", spill["restored_total_bytes"], now)]
        by_state: dict[str, int] = {}
        for worker in node.workers.values():
            by_state[worker.state] = by_state.get(worker.state, 0) + 1
        rows.append(["pyactor_workers", GAUGE, "Worker processes of this node, by state",
                     ["State"], [], [[[s], [n, now]] for s, n in sorted(by_state.items())]])
        rows.append(_gauge("pyactor_leases_waiting", "Task leases waiting for a worker on this "
                           "node", sum(map(len, node.waiting_for_worker.values())), now))
        return rows


def _gauge(name: str, description: str, value, now: float) -> list:
    return [name, GAUGE, description, [], [], [[[], [value, now]]]]


class PrometheusEndpoint:
    """prometheus-client's HTTP server (a thread) over a NodeMetrics on the node's loop."""

    def __init__(self, metrics: NodeMetrics, loop, host: str, port: int):
        from prometheus_client import CollectorRegistry, start_http_server
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(metrics, loop))
        self.server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        # shutdown() waits for the serving thread's poll; the node must not wait on it.
        server = self.server
        threading.Thread(target=lambda: (server.shutdown(), server.server_close()),
                         daemon=True).start()


def start_endpoint(node, host: str, port: int) -> tuple[PrometheusEndpoint | None, str]:
    """The endpoint and its URL, or None and the reason it could not start."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        logger.warning(MISSING_CLIENT)
        return None, MISSING_CLIENT
    try:
        endpoint = PrometheusEndpoint(node.metrics, asyncio.get_running_loop(), host, port)
    except OSError as error:
        reason = f"metrics are not exported: port {port} on {host}: {error}"
        logger.error(reason)
        return None, reason
    return endpoint, endpoint.url


class _Collector:
    def __init__(self, metrics: NodeMetrics, loop):
        self.metrics, self.loop = metrics, loop

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        merged = asyncio.run_coroutine_threadsafe(self.metrics.collect(), self.loop).result(
            COLLECT_TIMEOUT_S + 5)
        for name, kind, description, tag_keys, boundaries, series in merged.values():
            if kind == COUNTER:
                family = CounterMetricFamily(name, description or name, labels=tag_keys)
                for tags, value in series.items():
                    family.add_metric(list(tags), value)
            elif kind == GAUGE:
                family = GaugeMetricFamily(name, description or name, labels=tag_keys)
                for tags, value in series.items():
                    family.add_metric(list(tags), value[0])
            elif kind == HISTOGRAM:
                family = HistogramMetricFamily(name, description or name, labels=tag_keys)
                for tags, (counts, total) in series.items():
                    cumulative, buckets = 0, []
                    for bound, count in zip([*map(str, boundaries), "+Inf"], counts):
                        cumulative += count
                        buckets.append((bound, cumulative))
                    family.add_metric(list(tags), buckets, sum_value=total)
            else:
                continue
            yield family
