"""Streaming generators across nodes: items made in another node's store reach the caller as
they are yielded, and are read back bit for bit."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import pyactor as pa
from test_cluster import GUARD_S, CliCluster

ITEM_BYTES = 4 << 20  # well above the inline threshold: each item lives in node B's store


@pytest.fixture(scope="module")
def two_nodes():
    """A head (resource `head`) and node B (resource `x`)."""
    cluster = CliCluster()
    try:
        cluster.start_head(1, {"head": 1})
        cluster.add_node(1, {"x": 1})
        cluster.connect()
        yield cluster
    finally:
        if pa.is_initialized():
            pa.shutdown()
        cluster.stop()


@pa.remote(resources={"x": 1})
def arrays_then_gate(n, gate):
    """Yields n arrays, then waits for the gate before ending."""
    for i in range(n):
        yield pa.get_runtime_context()["node_id"], np.full(ITEM_BYTES // 8, i, dtype=np.int64)
    deadline = time.monotonic() + GUARD_S
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.slow
def test_items_from_another_node_arrive_while_it_runs(two_nodes, tmp_path):
    gate = str(tmp_path / "gate")
    node_b = two_nodes.node_ids()[two_nodes.pids[1]]
    gen = arrays_then_gate.remote(3, gate)
    values = [pa.get(next(gen), timeout=GUARD_S) for _ in range(3)]
    assert pa.wait([gen.completed()], timeout=0)[0] == []  # still running: items came first
    for i, (made_on, array) in enumerate(values):
        assert made_on == node_b
        assert array.shape == (ITEM_BYTES // 8,) and int(array[0]) == i == int(array[-1])
    open(gate, "w").close()
    with pytest.raises(StopIteration):
        next(gen)
