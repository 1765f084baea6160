"""The state API and commands across a two-node cluster started with `pyactor start`: every
node answers (tasks, workers and actors of both, an object copied to the other node's store,
the transfer in the timeline), and `pyactor list|logs` work from a fresh process that finds
the cluster in the session folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import pyactor as pa
from pyactor.util import state
from conftest import wait_until
from test_cluster import CliCluster


@pytest.fixture
def two_nodes():
    c = CliCluster()
    try:
        c.start_head(1, {"head": 1})
        c.add_node(1, {"b": 1})
        c.connect()
        yield c
    finally:
        c.stop()


@pa.remote
def node_of():
    return pa.get_runtime_context().get_node_id()


@pa.remote
def total(array):
    return float(array.sum())


@pa.remote(resources={"b": 0.5})
class Talker:
    def say(self, text):
        print(text, flush=True)
        return pa.get_runtime_context().get_node_id()


@pytest.mark.slow
def test_queries_reach_every_node(two_nodes):
    """Tasks, workers and actors of both nodes are listed; an array read on the other node
    shows a copy there and a transfer slice; `pyactor list` and `pyactor logs` find them."""
    head_task = node_of.options(resources={"head": 0.5}).remote()
    b_task = node_of.options(resources={"b": 0.5}).remote()
    head_id, b_id = pa.get([head_task, b_task])
    assert head_id != b_id
    array = pa.put(np.ones(1 << 20))  # 8 MiB in the head's store
    assert pa.get(total.options(resources={"b": 0.5}).remote(array)) == float(1 << 20)
    talker = Talker.remote()
    assert pa.get(talker.say.remote("hello from node b")) == b_id

    tasks = {t.task_id: t for t in state.list_tasks(limit=None)}
    assert tasks[head_task.task_id().hex()].node_id == head_id
    assert tasks[b_task.task_id().hex()].node_id == b_id
    actor = next(a for a in state.list_actors() if a.actor_id == talker._actor_id.hex())
    assert actor.node_id == b_id and actor.pid > 0  # the pid comes from node b's answer
    row = next(o for o in state.list_objects(limit=None) if o.object_id == array.hex())
    assert row.node_id == head_id and row.copies_on == [b_id] and row.size_bytes >= 8 << 20
    transfers = [e for e in pa.timeline() if e.get("cat") == "transfer"
                 and e["args"]["object_id"] == array.hex()]
    assert len(transfers) == 1 and transfers[0]["args"]["bytes"] >= 8 << 20

    listed = [json.loads(line) for line in
              two_nodes.cli("list", "workers", "--json").splitlines()]
    assert {w["node_id"] for w in listed} == {head_id, b_id}
    assert any(w["actor_id"] == actor.actor_id and w["pid"] == actor.pid for w in listed)
    listed = [json.loads(line) for line in
              two_nodes.cli("list", "tasks", "--json", "--limit", "1000").splitlines()]
    assert {t["task_id"] for t in listed} >= {head_task.task_id().hex(),
                                               b_task.task_id().hex()}
    assert wait_until(lambda: "hello from node b" in two_nodes.cli("logs", actor.actor_id[:12]))
    assert str(os.getpid()) in two_nodes.cli("list", "workers")  # this driver, as a table
