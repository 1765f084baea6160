"""The state API on one local node: nodes, actors, workers, tasks with their history and
transitions, filters and limits, summaries, the timeline of a known workload, worker logs, and
the `pyactor list|summary` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pyactor as pa
from pyactor import cli
from pyactor._private import api, process_state
from pyactor._private.worker_logs import RotatingLog, read_log
from pyactor.util import state
from conftest import wait_until
from helpers import identity, wait_for_file


@pa.remote
def add_one(x):
    return x + 1


@pa.remote
def fail(message):
    raise ValueError(message)


@pa.remote
def busy(seconds):
    import time
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return os.getpid()


@pa.remote
class Recorder:
    def __init__(self):
        self.seen = []

    def add(self, i):
        self.seen.append(i)
        return len(self.seen)

    def say(self, text):
        print(text, flush=True)
        return True


def _task(tasks, task_id):
    return next(t for t in tasks if t.task_id == task_id)


def test_nodes_actors_and_workers_are_listed(pa_module):
    """list_nodes shows the one head node, list_actors a named actor with its worker's pid,
    and list_workers the driver and that worker with their memory."""
    recorder = Recorder.options(name="state-recorder").remote()
    assert pa.get(recorder.add.remote(1)) == 1
    nodes = state.list_nodes()
    assert len(nodes) == 1 and nodes[0].state == "ALIVE" and nodes[0].is_head
    assert nodes[0].node_id == pa.get_runtime_context().get_node_id()
    assert nodes[0].resources_total["CPU"] == 2
    actors = state.list_actors(filters=["name=state-recorder"])
    assert len(actors) == 1
    actor = actors[0]
    assert (actor.state, actor.class_name, actor.node_id) == ("ALIVE", "Recorder",
                                                              nodes[0].node_id)
    assert actor.actor_id == recorder._actor_id.hex()
    assert actor.pid > 0 and actor.pid != os.getpid() and actor.created_at <= actor.started_at
    workers = state.list_workers(limit=None)
    by_pid = {w.pid: w for w in workers}
    assert by_pid[actor.pid].state == "ACTOR" and by_pid[actor.pid].actor_id == actor.actor_id
    driver = by_pid[os.getpid()]
    assert driver.kind == "driver" and driver.uss_bytes > 0 and driver.pss_bytes > 0
    pa.kill(recorder)
    assert wait_until(lambda: state.list_actors(filters=["name=state-recorder"])[0].state
                      == "DEAD")
    dead = state.list_actors(filters=[("name", "=", "state-recorder")])[0]
    assert dead.pid == 0 and "pyactor.kill" in dead.error and dead.ended_at >= dead.started_at


def test_task_history_has_states_transitions_and_errors(pa_module, tmp_path):
    """Finished, failed, running and argument-waiting tasks are listed with their state,
    the worker that ran them, their transitions in time order, and the error's text."""
    ok = add_one.remote(1)
    bad = fail.remote("no good input")
    assert pa.get(ok) == 2
    with pytest.raises(pa.TaskError):
        pa.get(bad)
    gate = str(tmp_path / "gate")
    running = wait_for_file.remote(gate)
    waiting = identity.options(name="waits_for_args").remote(running)  # its argument is pending
    try:
        assert wait_until(lambda: _task(state.list_tasks(limit=None),
                                        running.task_id().hex()).state == "RUNNING")
        tasks = state.list_tasks(limit=None)
        assert _task(tasks, waiting.task_id().hex()).state == "PENDING_ARGS"
    finally:
        open(gate, "w").close()
    pa.get(waiting)
    tasks = state.list_tasks(limit=None)
    done = _task(tasks, ok.task_id().hex())
    assert done.state == "FINISHED" and done.type == "NORMAL_TASK" and done.name.endswith(
        "add_one")
    assert done.pid > 0 and done.pid != os.getpid() and done.owner_pid == os.getpid()
    assert done.resources == {"CPU": 1}
    assert [s for s, _ in done.events] == ["PENDING_WORKER", "RUNNING", "FINISHED"]
    times = [t for _, t in done.events]
    assert times == sorted(times) and done.duration_s >= 0
    failed = _task(tasks, bad.task_id().hex())
    assert failed.state == "FAILED" and "no good input" in failed.error
    waited = _task(tasks, waiting.task_id().hex())
    assert [s for s, _ in waited.events] == ["PENDING_ARGS", "PENDING_WORKER", "RUNNING",
                                             "FINISHED"]
    assert waited.args_ready_at >= _task(tasks, running.task_id().hex()).started_at
    assert {t.task_id for t in state.list_tasks(filters=["state=failed"], limit=None)} >= {
        failed.task_id}
    assert all(t.state == "FAILED" for t in state.list_tasks(filters=["state=FAILED"]))
    assert all(t.state != "FINISHED" for t in state.list_tasks(filters=["state!=FINISHED"]))
    newest = state.list_tasks(limit=2)
    assert [t.task_id for t in newest] == [t.task_id for t in tasks[-2:]]
    summary = state.summarize_tasks()
    assert summary[failed.name].get("FAILED", 0) >= 1
    assert summary[done.name].get("FINISHED", 0) >= 1


@pa.remote
class Answers:
    """Every kind of answer an actor call's done path tells apart."""

    def small(self, i):
        return i

    def large(self, i):
        return bytes([i]) * (1 << 20)  # over the inline limit: returned in the store

    def holding_a_ref(self, i):
        return [pa.put(i)]  # a value with a ref inside: the general path adopts it

    def failing(self, i):
        raise ValueError(f"answer {i} failed")


def test_a_batch_of_actor_calls_of_every_answer_kind_resolves_and_is_recorded(pa_module):
    """Calls submitted then gathered, answered inline, in the store, with a ref inside and with
    an error, each resolve to their value or error, release their task pin, and each appears in
    the owner's history as FINISHED or FAILED."""
    actor = Answers.remote()
    refs = {kind: [getattr(actor, kind).remote(i) for i in range(3)]
            for kind in ("small", "large", "holding_a_ref", "failing")}
    assert pa.get(refs["small"]) == [0, 1, 2]
    assert [(len(v), v[0]) for v in pa.get(refs["large"])] == [(1 << 20, i) for i in range(3)]
    assert [pa.get(inner[0]) for inner in pa.get(refs["holding_a_ref"])] == [0, 1, 2]
    for ref in refs["failing"]:
        with pytest.raises(ValueError, match="failed"):
            pa.get(ref)
    table = api._runtime.refs
    assert all(table.get(ref.id).task_pins == 0 for kind in refs.values() for ref in kind)
    owner_rows = {row["task_id"]: row for row in process_state.task_rows(api._runtime)
                  if row["side"] == "owner"}
    for kind, kind_refs in refs.items():
        for ref in kind_refs:
            row = owner_rows[ref.task_id().hex()]
            assert row["state"] == ("FAILED" if kind == "failing" else "FINISHED"), kind
            assert row["name"].endswith(kind) and row["submitted_at"] > 0
    pa.kill(actor)


def test_bad_filters_and_limits_name_the_problem(pa_module):
    """An unknown field, a malformed filter or a bad limit raise before anything is asked."""
    with pytest.raises(ValueError, match="no field 'colour'"):
        state.list_actors(filters=["colour=red"])
    with pytest.raises(ValueError, match="key=value"):
        state.list_tasks(filters=["state"])
    with pytest.raises(ValueError, match="operator"):
        state.list_tasks(filters=[("state", ">", "x")])
    with pytest.raises(ValueError, match="limit"):
        state.list_nodes(limit=0)
    with pytest.raises(TypeError, match="filters"):
        state.list_nodes(filters=42)


def test_timeline_shows_every_task_and_the_actors_calls_in_order(pa_module, tmp_path):
    """N tasks on K=2 workers give N run slices on at most 2 worker pids, with queue slices;
    an actor's calls are slices on its pid in the order they were made; the file is a JSON
    array of Chrome trace events."""
    refs = [busy.remote(0.05) for _ in range(6)]
    pids = set(pa.get(refs))
    recorder = Recorder.remote()
    calls = [recorder.add.remote(i) for i in range(5)]
    assert pa.get(calls) == [1, 2, 3, 4, 5]
    path = tmp_path / "trace.json"
    assert pa.timeline(str(path)) is None
    events = json.loads(path.read_text())
    assert isinstance(events, list)
    for event in events:
        assert event["ph"] in ("X", "M") and "pid" in event and "name" in event
        if event["ph"] == "X":
            assert event["dur"] >= 0 and event["ts"] > 0 and isinstance(event["tid"], int)
    task_ids = {ref.task_id().hex() for ref in refs}
    runs = [e for e in events if e["ph"] == "X" and e["cat"] == "task"
            and e["args"].get("task_id") in task_ids and e["name"].endswith("busy")]
    assert len(runs) == 6 and {e["pid"] for e in runs} == pids and len(pids) <= 2
    assert all(e["dur"] >= 0.04e6 for e in runs)
    queued = [e for e in events if e.get("cat") == "queue" and e["args"]["task_id"] in task_ids]
    assert len(queued) == 6
    for pid in pids:  # slices on one track never overlap
        mine = sorted((e for e in runs if e["pid"] == pid), key=lambda e: e["ts"])
        for a, b in zip(mine, mine[1:]):
            assert a["tid"] != b["tid"] or a["ts"] + a["dur"] <= b["ts"] + 1
    call_ids = [ref.task_id().hex() for ref in calls]
    actor_runs = [e for e in pa.timeline() if e["ph"] == "X" and e.get("cat") == "actor_task"
                  and e["args"].get("task_id") in call_ids]
    assert len(actor_runs) == 5 and len({e["pid"] for e in actor_runs}) == 1
    ordered = sorted(actor_runs, key=lambda e: e["ts"])
    assert [e["args"]["task_id"] for e in ordered] == call_ids
    assert all(e["name"] == "Recorder.add" for e in ordered)
    names = [e for e in events if e["ph"] == "M" and e["name"] == "process_name"]
    assert {e["pid"] for e in names} >= pids


def test_worker_output_goes_to_its_log_file_and_pyactor_logs(pa_module, capsys, monkeypatch):
    """What an actor prints lands in its worker's log file, which `pyactor logs ACTOR_ID`
    prints."""
    recorder = Recorder.remote()
    assert pa.get(recorder.say.remote("hello from the recorder"))
    actor_id = recorder._actor_id.hex()
    worker = next(w for w in state.list_workers(limit=None) if w.actor_id == actor_id)
    out_file = next(p for p in worker.log_files if p.endswith(".out"))
    assert wait_until(lambda: b"hello from the recorder" in read_log([out_file]))
    runtime = api._runtime
    monkeypatch.setenv("PYACTOR_TOKEN", runtime.token.hex())
    address = f"{runtime.node_host}:{runtime.node_port}"
    assert cli.main(["logs", actor_id[:10], "--address", address]) == 0
    assert "hello from the recorder" in capsys.readouterr().out
    assert cli.main(["logs", "999999999", "--address", address]) == 1
    assert "no worker with pid" in capsys.readouterr().err


def test_rotating_log_keeps_two_files_under_the_limit(tmp_path):
    """A log that passes its size limit moves to .1 and starts again."""
    path = str(tmp_path / "worker-1.out")
    log = RotatingLog(path, max_bytes=100)
    for i in range(25):
        log.write(f"line {i:04d}\n".encode())  # 10 bytes each
    assert os.path.getsize(path) <= 100 and os.path.getsize(path + ".1") <= 100
    text = read_log([path, path + ".1"]).decode()
    assert text.endswith("line 0024\n") and "line 0015\n" in text and "line 0000" not in text


def test_list_and_summary_commands(pa_module, capsys, monkeypatch):
    """`pyactor list actors --json` gives one JSON object per actor; a table otherwise;
    `pyactor summary tasks` counts per function and state."""
    recorder = Recorder.options(name="cli-recorder").remote()
    pa.get(recorder.add.remote(1))
    runtime = api._runtime
    monkeypatch.setenv("PYACTOR_TOKEN", runtime.token.hex())
    address = f"{runtime.node_host}:{runtime.node_port}"
    assert cli.main(["list", "actors", "--filter", "name=cli-recorder", "--json",
                     "--address", address]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["class_name"] == "Recorder" and rows[0]["pid"] > 0
    assert cli.main(["list", "tasks", "--filter", "state=FINISHED", "--limit", "3",
                     "--address", address]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["task_id", "name", "state"] and 1 < len(table) <= 4
    assert cli.main(["summary", "tasks", "--address", address]) == 0
    assert "Recorder.add: FINISHED" in capsys.readouterr().out
    assert cli.main(["list", "tasks", "--filter", "bogus=1", "--address", address]) == 1
    assert "no field 'bogus'" in capsys.readouterr().err


def test_list_nodes_command_in_a_fresh_process(pa_module):
    """The command works from a process that never called pa.init (address and token
    given)."""
    runtime = api._runtime
    result = subprocess.run(
        [sys.executable, "-m", "pyactor.cli", "list", "nodes", "--json", "--address",
         f"{runtime.node_host}:{runtime.node_port}"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYACTOR_TOKEN": runtime.token.hex()})
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["node_id"] for row in rows] == [runtime.node_id.hex()]


def test_follow_writes_what_the_file_holds_then_what_is_appended(tmp_path):
    """`pyactor logs --follow` prints the file so far, then each new chunk, until told to
    stop; a file that was rotated (shorter than what was read) is read from its start."""
    from pyactor._private.worker_logs import follow
    path = tmp_path / "worker-1.out"
    path.write_bytes(b"first\n")
    chunks: list[bytes] = []
    script = iter([lambda: path.write_bytes(b"first\nsecond\n"),
                   lambda: path.write_bytes(b"new\n"), None])

    def stop() -> bool:
        step = next(script)
        if step is None:
            return True
        step()
        return False
    follow([str(path)], chunks.append, stop=stop, poll_s=0)
    assert chunks == [b"first\n", b"second\n", b"new\n"]


async def test_state_calls_from_a_running_event_loop(pa_module):
    """list_async runs on the caller's loop; the blocking calls still work from a coroutine
    (they run their own loop in a thread)."""
    rows = await state.list_async("nodes", filters=["state=ALIVE"])
    assert len(rows) == 1 and rows[0].is_head
    assert [n.node_id for n in state.list_nodes()] == [rows[0].node_id]
    summary = await state.memory_summary_async()
    assert summary.nodes[0].node_id == rows[0].node_id
    with pytest.raises(ValueError, match="kind must be one of"):
        await state.list_async("bogus")


def test_logs_takes_an_actor_id_that_starts_with_digits(tmp_path, monkeypatch, capsys):
    """`pyactor logs 1234...`: no worker has that pid, so it is the start of an actor id."""
    log = tmp_path / "worker-7.out"
    log.write_text("from the actor\n")
    worker = state.WorkerState(worker_id="w", kind="worker", state="ACTOR", pid=7,
                               node_id="n", actor_id="1234567890ab", address=[],
                               started_at=0.0, log_files=[str(log)])
    monkeypatch.setattr(state, "list_workers", lambda **_kw: [worker])
    assert cli.main(["logs", "1234567890"]) == 0
    assert "from the actor" in capsys.readouterr().out
    assert cli.main(["logs", "7"]) == 0  # a pid
    assert "from the actor" in capsys.readouterr().out
