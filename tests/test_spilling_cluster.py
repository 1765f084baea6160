"""Spilling in a cluster: objects a full node spilled to disk are still read by another node (the
holder streams them from their files), `pyactor status` shows what a node spilled, and
`pyactor stop` removes the spill directory of a node that was killed."""

from __future__ import annotations

import json
import os
import re
import signal

import numpy as np
import pytest

import pyactor as pa
from conftest import process_alive, wait_until
from test_cluster import GUARD_S, fresh_cluster  # noqa: F401 - the fixture

NODE_STORE_BYTES = 16 << 20
OBJECT_BYTES = 4 << 20
OBJECTS = 8  # twice what the node's store holds


@pa.remote
class Maker:
    def make(self, count: int, size_bytes: int) -> list:
        return [pa.put(np.full(size_bytes // 8, i, dtype=np.int64)) for i in range(count)]


@pytest.mark.slow
def test_objects_spilled_on_one_node_are_read_on_another(fresh_cluster):  # noqa: F811
    cluster = fresh_cluster
    cluster.start_head(1, {"head": 1})
    node_b = cluster.add_node(1, {"x": 1}, store_bytes=NODE_STORE_BYTES)
    cluster.connect()
    maker = Maker.options(resources={"x": 1}).remote()
    refs = pa.get(maker.make.remote(OBJECTS, OBJECT_BYTES), timeout=GUARD_S)

    def spilled() -> list[int]:  # per node, as `pyactor status` shows it
        return [int(n) for n in re.findall(r"spilled .* MiB on disk, (\d+) objects",
                                           cluster.cli("status"))]
    # Node B's figures reach the status with its next heartbeat (they travel only when changed).
    assert wait_until(lambda: len(spilled()) == 2 and
                      max(spilled()) >= OBJECTS - NODE_STORE_BYTES // OBJECT_BYTES, 15), spilled()
    # the driver is on the head: each value comes over from node B, spilled ones from disk
    for i, ref in enumerate(refs):
        value = pa.get(ref, timeout=GUARD_S)
        assert value.nbytes == OBJECT_BYTES and (value == i).all()
        del value

    recorded = json.load(open(os.path.join(cluster.session_dir, "nodes.json")))
    spill_dir = next(node["spill_dir"] for node in recorded if node["pid"] == node_b)
    assert os.listdir(spill_dir)
    pa.shutdown()
    os.kill(node_b, signal.SIGKILL)
    assert wait_until(lambda: not process_alive(node_b), 10)
    assert os.path.isdir(spill_dir)  # a killed node could not clean up ...
    cluster.cli("stop")
    assert not os.path.exists(spill_dir)  # ... `pyactor stop` does
