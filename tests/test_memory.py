"""`pyactor memory` / memory_summary(): known references, each explained by its own row: a ref
the program holds (at file:line), a ref passed to a pending task, a zero-copy view, a ref
borrowed by an actor; totals per process and node with USS/PSS beside the store's pages."""

from __future__ import annotations

import os

import numpy as np

import pyactor as pa
from pyactor import cli
from pyactor._private import api
from pyactor.util import state
from conftest import wait_until
from helpers import wait_for_file


@pa.remote
def total(gate_name, array):
    return float(array.sum())


@pa.remote
class Keeper:
    def __init__(self):
        self.kept = None

    def keep(self, refs):
        self.kept = refs[0]  # a ref inside a list arrives as a ref: this actor borrows it
        return os.getpid()


def _row(summary, ref):
    return next(o for o in summary.objects if o.object_id == ref.hex())


def _kinds(row):
    return sorted(h.kind for h in row.holders)


def test_memory_summary_explains_every_known_reference(pa_fresh, tmp_path, capsys,
                                                       monkeypatch):
    """Each object shows its size, where it lives, its owner, and exactly the holders the
    test created; processes show USS/PSS and the store pages they map."""
    pa.init(num_cpus=2, object_store_memory=256 << 20, record_ref_call_sites=True)
    me = os.getpid()
    held = pa.put(np.zeros(200_000))  # 1.6 MB in the store, held here
    line_of_held = _line_of("held = pa.put")
    small = pa.put(b"tiny")  # inline: it lives in this process's memory

    gate = str(tmp_path / "gate")
    blocker = wait_for_file.remote(gate)
    argument = pa.put(np.ones(100_000))
    pending = total.remote(blocker, argument)  # waits for blocker: holds `argument`
    argument_id = argument.hex()
    del argument

    viewed = pa.put(np.arange(100_000, dtype=np.int64))
    view = pa.get(viewed)  # a zero-copy array pinning the store object

    keeper = Keeper.remote()
    lent = pa.put(np.ones(50_000))
    actor_pid = pa.get(keeper.keep.remote([lent]))
    lent_id = lent.hex()
    del lent
    try:
        summary = state.memory_summary()

        row = _row(summary, held)
        assert row.location == "STORE" and row.state == "READY" and row.owner_pid == me
        assert row.size_bytes >= 1_600_000 and row.node_id == summary.nodes[0].node_id
        assert _kinds(row) == ["LOCAL_REFERENCE"] and row.holders[0].pid == me
        assert row.holders[0].count == 1
        assert f"test_memory.py:{line_of_held}" in row.holders[0].detail

        row = _row(summary, small)
        assert row.location == "INLINE" and 0 < row.size_bytes < 1000 and row.node_id == ""
        assert _kinds(row) == ["LOCAL_REFERENCE"]

        row = next(o for o in summary.objects if o.object_id == argument_id)
        assert _kinds(row) == ["PENDING_TASK_ARGUMENT"]
        assert row.holders[0].pid == me and "total" in row.holders[0].detail
        assert pending.task_id().hex()[:12] in row.holders[0].detail

        row = _row(summary, viewed)
        assert _kinds(row) == ["LOCAL_REFERENCE", "ZERO_COPY_VIEW"]
        assert row.pinned_by == {me: 1}

        row = next(o for o in summary.objects if o.object_id == lent_id)
        assert _kinds(row) == ["BORROWER"]
        assert row.holders[0].pid == actor_pid and row.holders[0].count == 1

        processes = {p.pid: p for p in summary.processes}
        driver = processes[me]
        assert driver.kind == "driver" and driver.owned_objects >= 5
        assert driver.owned_store_bytes >= 1_600_000 + 800_000 + 400_000
        assert driver.uss_bytes > 0 and driver.pss_bytes > 0
        assert driver.store_rss_bytes >= 1_600_000  # it wrote those pages
        assert processes[actor_pid].kind == "worker" and processes[actor_pid].label
        node = summary.nodes[0]
        assert node.store_used_bytes >= 1_600_000 + 800_000 + 800_000 + 400_000
        # Store pages are split among the processes mapping them, not counted by each.
        store_pss = sum(p.store_pss_bytes for p in summary.processes)
        assert driver.store_pss_bytes < driver.store_rss_bytes or len(summary.processes) == 1
        assert store_pss <= sum(p.store_rss_bytes for p in summary.processes)
        assert node.pss_bytes >= driver.pss_bytes and node.uss_bytes >= driver.uss_bytes

        # The view outlives the ref: the object is gone from its owner but pinned in the store.
        viewed_id = viewed.hex()
        del viewed
        assert wait_until(lambda: _kinds(next(
            o for o in state.memory_summary().objects if o.object_id == viewed_id))
            == ["ZERO_COPY_VIEW"])
        row = next(o for o in state.list_objects(limit=None) if o.object_id == viewed_id)
        assert row.state == "DELETED" and row.owner_pid == 0 and row.pinned_by == {me: 1}
        assert view[-1] == 99_999

        runtime = api._runtime
        monkeypatch.setenv("PYACTOR_TOKEN", runtime.token.hex())
        assert cli.main(["memory", "--address",
                         f"{runtime.node_host}:{runtime.node_port}"]) == 0
        report = capsys.readouterr().out
        assert held.hex() in report and "PENDING_TASK_ARGUMENT" in report
        assert "BORROWER" in report and "USS" in report
    finally:
        open(gate, "w").close()
    assert pa.get(pending) == 100_000.0
    by_location = state.summarize_objects()
    assert by_location["STORE"]["objects"] >= 2 and by_location["INLINE"]["objects"] >= 1


def _line_of(text: str) -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line)
