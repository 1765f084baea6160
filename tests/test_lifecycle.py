"""Process lifecycle: init starts a node and its workers, shutdown (or the driver's exit, however
it exits) stops every process and removes the shared-memory segment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pyactor._private import api
from conftest import node_processes, pyactor_segments, run_python, wait_until

# A driver script prints this line once its node runs a task: "NODE <node pid> <worker pid>".
DRIVER_PRELUDE = textwrap.dedent("""
    import os, sys
    import pyactor as pa
    from pyactor._private import api
    pa.init(num_cpus=1, object_store_memory=64 << 20)

    @pa.remote
    def where():
        return os.getpid()

    print("NODE", api._node_process.pid, pa.get(where.remote()), flush=True)
""")


def node_pid() -> int:
    return api._node_process.pid


def segments_of(pid: int) -> list[str]:
    return [name for name in pyactor_segments() if name.startswith(f"pyactor-{pid}-")]


def gone(pid: int) -> bool:
    return not node_processes(pid) and not segments_of(pid)


@pytest.fixture
def remote_pid(pa_fresh):
    @pa_fresh.remote
    def pid():
        return os.getpid()
    return pid


def test_init_starts_workers_ahead_of_demand(pa_fresh):
    """After init, the node forks num_cpus workers before any task is submitted."""
    pa_fresh.init(num_cpus=2, object_store_memory=64 << 20)
    node = node_pid()
    # node + fork server + 2 workers
    assert wait_until(lambda: len(node_processes(node)) == 4), node_processes(node)
    assert len(segments_of(node)) == 1


def test_consecutive_tasks_reuse_one_worker(pa_fresh, remote_pid):
    """Tasks submitted one after another run in the same (reused) worker process."""
    pa_fresh.init(num_cpus=2, object_store_memory=64 << 20)
    pids = [pa_fresh.get(remote_pid.remote()) for _ in range(5)]
    assert len(set(pids)) == 1
    assert pids[0] in node_processes(node_pid())


def test_shutdown_stops_every_process_and_removes_the_segment(pa_fresh, remote_pid):
    """shutdown() leaves no node, fork server or worker, and no shared-memory segment."""
    pa_fresh.init(num_cpus=2, object_store_memory=64 << 20)
    pa_fresh.get(remote_pid.remote())
    node = node_pid()
    assert node_processes(node) and segments_of(node)
    pa_fresh.shutdown()
    assert not pa_fresh.is_initialized()
    assert wait_until(lambda: gone(node)), (node_processes(node), segments_of(node))


def test_init_again_after_shutdown(pa_fresh, remote_pid):
    """init -> shutdown -> init gives a new, working node; the old one is gone."""
    pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
    first_node = node_pid()
    first_worker = pa_fresh.get(remote_pid.remote())
    pa_fresh.shutdown()
    pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
    assert node_pid() != first_node
    assert pa_fresh.get(remote_pid.remote()) != first_worker
    assert wait_until(lambda: gone(first_node))


def test_second_init_raises_unless_ignore_reinit_error(pa_fresh):
    """A second init raises RuntimeError; with ignore_reinit_error it keeps the running node."""
    info = pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
    node = node_pid()
    with pytest.raises(RuntimeError, match="already"):
        pa_fresh.init(num_cpus=1)
    assert pa_fresh.init(ignore_reinit_error=True) == info
    assert node_pid() == node


def test_shutdown_without_init_is_a_no_op(pa_fresh):
    """shutdown() when pyactor is not running does nothing (and may be repeated)."""
    pa_fresh.shutdown()
    pa_fresh.shutdown()
    assert not pa_fresh.is_initialized()


def test_driver_killed_with_sigkill_leaves_nothing():
    """A driver killed with SIGKILL leaves no node, worker or segment behind."""
    code = DRIVER_PRELUDE + "sys.stdin.read()\n"  # then wait to be killed
    driver = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline().split()
        assert line[0] == "NODE", line
        node, worker = int(line[1]), int(line[2])
        assert worker in node_processes(node) and segments_of(node)
    finally:
        driver.kill()
        driver.wait()
        driver.stdin.close()
        driver.stdout.close()
    assert wait_until(lambda: gone(node)), (node_processes(node), segments_of(node))


@pytest.mark.parametrize("ending", ["", "raise SystemExit(3)", "raise ValueError('boom')",
                                    "os._exit(0)"])
def test_driver_that_exits_without_shutdown_leaves_nothing(ending):
    """A driver that returns, exits, raises or os._exits without shutdown() leaves nothing."""
    result = run_python(DRIVER_PRELUDE + ending + "\n", timeout_s=60)
    line = result.stdout.split()
    assert line[:1] == ["NODE"], result.stderr
    node = int(line[1])
    assert wait_until(lambda: gone(node)), (node_processes(node), segments_of(node))


@pytest.mark.parametrize("options, error", [
    ({"num_cpus": -1}, ValueError), ({"num_cpus": float("nan")}, ValueError),
    ({"num_gpus": "2"}, ValueError), ({"resources": [("slot", 1)]}, TypeError),
    ({"resources": {"slot": -1}}, ValueError), ({"resources": {"slot": "a"}}, ValueError),
    ({"resources": {1: 2}}, TypeError), ({"resources": {"CPU": 4}}, ValueError),
    ({"object_store_memory": 1}, ValueError), ({"no_such_option": 1}, TypeError),
])
def test_init_rejects_bad_options_before_starting_anything(pa_fresh, options, error):
    """Invalid init options raise TypeError/ValueError in the caller; no node is started."""
    with pytest.raises(error):
        pa_fresh.init(**options)
    assert not pa_fresh.is_initialized()
    assert api._node_process is None
