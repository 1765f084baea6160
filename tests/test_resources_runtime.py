"""Resources at run time: tasks wait for CPUs, GPUs and custom resources, GPU ids reach
CUDA_VISIBLE_DEVICES, impossible demands fail clearly, and worker output reaches the driver.

Tasks that must overlap meet at a file-system barrier (each waits, with a hang guard, until the
other has arrived), so a test fails rather than passes when they cannot run together.
"""

from __future__ import annotations

import os
import re
import textwrap
import time

import pytest

from pyactor._private import api
from pyactor.exceptions import InfeasibleResourcesError
from conftest import run_python, wait_until

GUARD_S = 30  # hang guard for gets and barriers, never a synchronisation device


def arrive_and_wait(directory: str, name: str, parties: int, timeout_s: float) -> bool:
    """Barrier between task processes: True once `parties` tasks have arrived."""
    open(os.path.join(directory, name), "w").close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(os.listdir(directory)) >= parties:
            return True
        time.sleep(0.005)
    return False


def visible_gpus() -> list[str]:
    return [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]


@pytest.fixture
def pa_custom(pa_fresh):
    pa_fresh.init(num_cpus=2, num_gpus=2, resources={"slot": 1},
                  object_store_memory=64 << 20)
    yield pa_fresh


def test_cluster_resources_and_nodes(pa_custom):
    """cluster_resources and nodes() describe the node that init started."""
    assert pa_custom.cluster_resources() == {"CPU": 2, "GPU": 2, "slot": 1}
    [node] = pa_custom.nodes()
    assert node["Alive"] is True
    assert node["Resources"] == {"CPU": 2, "GPU": 2, "slot": 1}
    assert node["NodeID"] == api._runtime.node_id.hex()


def test_available_resources_drop_while_a_task_holds_them(pa_custom, tmp_path):
    """available_resources drops by a running task's demand and comes back after it ends."""
    @pa_custom.remote(num_cpus=1, num_gpus=1, resources={"slot": 1})
    def hold(directory):
        return arrive_and_wait(directory, "task", 2, GUARD_S)

    ref = hold.remote(str(tmp_path))
    assert wait_until(lambda: len(os.listdir(tmp_path)) == 1, GUARD_S)
    assert pa_custom.available_resources() == {"CPU": 1, "GPU": 1, "slot": 0}
    open(tmp_path / "test", "w").close()  # let the task end
    assert pa_custom.get(ref, timeout=GUARD_S)
    assert wait_until(lambda: pa_custom.available_resources() == {"CPU": 2, "GPU": 2,
                                                                   "slot": 1})


def test_custom_resource_makes_tasks_take_turns(pa_custom, tmp_path):
    """Two tasks that each need the node's only `slot` run one after the other."""
    log = tmp_path / "events"

    @pa_custom.remote(resources={"slot": 1})
    def record(name, path, others):
        with open(path, "a") as f:
            f.write(f"start {name}\n")
        # If the other task could start now, give it the chance to before ending.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and f"start {others}" not in open(path).read():
            time.sleep(0.005)
        with open(path, "a") as f:
            f.write(f"end {name}\n")

    pa_custom.get([record.remote("a", str(log), "b"), record.remote("b", str(log), "a")],
                  timeout=GUARD_S)
    events = log.read_text().split("\n")[:-1]
    first, second = events[0].split()[1], events[2].split()[1]
    assert events == [f"start {first}", f"end {first}", f"start {second}", f"end {second}"]


def test_gpu_task_sees_exactly_its_gpu(pa_custom):
    """A task with num_gpus=1 sees one GPU id in CUDA_VISIBLE_DEVICES."""
    @pa_custom.remote(num_gpus=1)
    def gpus():
        return visible_gpus()

    ids = pa_custom.get(gpus.remote(), timeout=GUARD_S)
    assert len(ids) == 1 and ids[0] in ("0", "1")


def test_concurrent_gpu_tasks_see_different_gpus(pa_custom, tmp_path):
    """Two tasks with num_gpus=1 running at once see different GPU ids."""
    @pa_custom.remote(num_gpus=1)
    def gpus(directory, name):
        assert arrive_and_wait(directory, name, 2, GUARD_S), "the tasks did not overlap"
        return visible_gpus()

    a, b = pa_custom.get([gpus.remote(str(tmp_path), "a"), gpus.remote(str(tmp_path), "b")],
                         timeout=GUARD_S)
    assert len(a) == 1 and len(b) == 1 and a != b


def test_cpu_only_task_sees_no_gpu_even_in_a_worker_that_had_one(pa_fresh):
    """A num_gpus=0 task sees no GPU id, also in a worker that just ran a GPU task."""
    pa_fresh.init(num_cpus=1, num_gpus=1, object_store_memory=64 << 20)

    @pa_fresh.remote(num_gpus=1)
    def with_gpu():
        return os.getpid(), visible_gpus()

    @pa_fresh.remote(num_gpus=0)
    def without_gpu():
        return os.getpid(), visible_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES")

    gpu_pid, ids = pa_fresh.get(with_gpu.remote(), timeout=GUARD_S)
    assert ids == ["0"]
    pid, ids, raw = pa_fresh.get(without_gpu.remote(), timeout=GUARD_S)
    assert pid == gpu_pid  # the same worker, reused
    assert ids == [] and raw == ""  # set but empty: CUDA libraries then see no device


@pytest.mark.parametrize("options, asked", [
    ({"num_cpus": 64}, "CPU"),
    ({"num_gpus": 3}, "GPU"),
    ({"resources": {"tpu": 1}}, "tpu"),
])
def test_infeasible_demand_fails_clearly(pa_custom, options, asked):
    """A task that can never fit fails in get with InfeasibleResourcesError naming what it
    asked for and what the node has."""
    @pa_custom.remote
    def never():
        return 1

    ref = never.options(**options).remote()
    with pytest.raises(InfeasibleResourcesError) as error:
        pa_custom.get(ref, timeout=GUARD_S)
    message = str(error.value)
    assert asked in message and "slot" in message  # the demand, and what exists
    assert pa_custom.get(never.remote(), timeout=GUARD_S) == 1  # the node serves on


def test_worker_output_reaches_the_driver_with_its_pid():
    """print() in a task, to stdout and stderr, shows in the driver as '(pid=N) line'."""
    # Worker output travels worker -> node -> driver, the result worker -> driver: the driver
    # waits (bounded) until its streams saw the lines, since shutdown may cut off late output.
    result = run_python(textwrap.dedent("""
        import io, os, sys, threading, time
        import pyactor as pa

        class Tee(io.TextIOBase):
            # Written by the main thread and by pyactor's IO thread (worker output): locked.
            def __init__(self, stream):
                self.stream, self.seen, self.lock = stream, "", threading.Lock()
            def write(self, text):
                with self.lock:
                    self.seen += text
                    return self.stream.write(text)
            def flush(self):
                with self.lock:
                    self.stream.flush()

        sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
        pa.init(num_cpus=1, object_store_memory=64 << 20)

        @pa.remote
        def talk():
            print("hello from", "a task")
            print("oops", file=sys.stderr)
            os.write(1, b"raw fd write\\n")
            return os.getpid()

        # One write: print("WORKER", pid) writes its parts separately, and a worker's line
        # (written by the IO thread) may land between them.
        sys.stdout.write(f"WORKER {pa.get(talk.remote())}\\n")
        sys.stdout.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                "raw fd write" in sys.stdout.seen and "oops" in sys.stderr.seen):
            time.sleep(0.01)
        pa.shutdown()
    """), timeout_s=GUARD_S * 2)
    assert result.returncode == 0, result.stderr
    pid = int(re.search(r"WORKER (\d+)", result.stdout).group(1))
    assert f"(pid={pid}) hello from a task" in result.stdout
    assert f"(pid={pid}) raw fd write" in result.stdout
    assert f"(pid={pid}) oops" in result.stderr


def test_log_to_driver_false_keeps_worker_output_away():
    """With log_to_driver=False the driver prints nothing that a worker wrote."""
    result = run_python(textwrap.dedent("""
        import pyactor as pa
        pa.init(num_cpus=1, object_store_memory=64 << 20, log_to_driver=False)

        @pa.remote
        def talk():
            print("should not appear")
            return 1

        print("DONE", pa.get(talk.remote()), flush=True)
        pa.shutdown()
    """), timeout_s=GUARD_S)
    assert "DONE 1" in result.stdout, result.stderr
    assert "should not appear" not in result.stdout + result.stderr
