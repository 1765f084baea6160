"""Failures and hostile peers: workers and nodes that die, connections without the token, and
bytes or messages that are not what the protocol expects. The driver always gets an error (never
a hang), the pool keeps serving, the daemon survives, and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings

from pyactor._private import api, transport
from pyactor._private import protocol as P
from pyactor.exceptions import (AuthenticationError, ProtocolError, PyActorError,
                                WorkerCrashedError)
from conftest import node_processes, pyactor_segments, wait_until

GUARD_S = 30  # a hang guard on gets and socket reads, never a synchronisation device
NUM_CPUS = 2


def node_pid() -> int:
    return api._node_process.pid


def node_address() -> tuple[str, int]:
    return api._runtime.node_host, api._runtime.node_port


def workers_of(node: int) -> set[int]:
    return node_processes(node) - {node, api_fork_server(node)}


def api_fork_server(node: int) -> int:
    """The fork server is the node's only direct child among its processes."""
    children = [pid for pid in node_processes(node) if _ppid(pid) == node]
    return children[0] if children else -1


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def pool_is_full(node: int) -> bool:
    return len(workers_of(node)) >= NUM_CPUS


def all_cpus_free(pa) -> bool:
    return pa.available_resources().get("CPU") == NUM_CPUS


def write_pid_then_sleep(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(GUARD_S * 4)


@pytest.fixture
def pa_node(pa_fresh):
    pa_fresh.init(num_cpus=NUM_CPUS, object_store_memory=64 << 20)
    yield pa_fresh


@pytest.fixture
def pid_task(pa_node):
    @pa_node.remote(max_retries=0)
    def pid():
        return os.getpid()
    return pid


def read_pid(path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------- dying workers

def test_task_that_exits_is_replaced_and_pool_keeps_serving(pa_node, pid_task):
    """A task that os._exits fails with WorkerCrashedError; a new worker takes its place."""
    @pa_node.remote(max_retries=0)
    def exit_now():
        os._exit(1)

    node = node_pid()
    with pytest.raises(WorkerCrashedError):
        pa_node.get(exit_now.remote(), timeout=GUARD_S)
    assert wait_until(lambda: pool_is_full(node)), workers_of(node)
    assert pa_node.get([pid_task.remote() for _ in range(4)], timeout=GUARD_S)


def test_idle_worker_killed_from_outside_is_replaced(pa_node, pid_task):
    """SIGKILL of an idle worker: the node forks a replacement and tasks keep running."""
    node = node_pid()
    victim = pa_node.get(pid_task.remote(), timeout=GUARD_S)
    assert wait_until(lambda: all_cpus_free(pa_node))  # the lease went back: the worker idles
    assert wait_until(lambda: pool_is_full(node))
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in workers_of(node) and pool_is_full(node)), \
        workers_of(node)
    pids = pa_node.get([pid_task.remote() for _ in range(4)], timeout=GUARD_S)
    assert victim not in pids


def test_worker_killed_while_running_a_task(pa_node, pid_task, tmp_path):
    """SIGKILL of a worker mid-task: get raises WorkerCrashedError, the pool keeps serving."""
    sleeper = pa_node.remote(max_retries=0)(write_pid_then_sleep)
    path = tmp_path / "pid"
    ref = sleeper.remote(str(path))
    assert wait_until(lambda: read_pid(path) is not None, GUARD_S)
    os.kill(read_pid(path), signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="write_pid_then_sleep"):
        pa_node.get(ref, timeout=GUARD_S)
    assert pa_node.get(pid_task.remote(), timeout=GUARD_S) != read_pid(path)
    assert wait_until(lambda: all_cpus_free(pa_node))


def test_killed_worker_task_is_retried_elsewhere(pa_node, tmp_path):
    """With retries left, a task whose worker is killed runs again in another worker."""
    @pa_node.remote(max_retries=1)
    def first_attempt_hangs(path):
        if not os.path.exists(path):
            write_pid_then_sleep(path)
        return os.getpid()

    path = tmp_path / "pid"
    ref = first_attempt_hangs.remote(str(path))
    assert wait_until(lambda: read_pid(path) is not None, GUARD_S)
    os.kill(read_pid(path), signal.SIGKILL)
    assert pa_node.get(ref, timeout=GUARD_S) != read_pid(path)


def test_node_killed_gives_errors_not_hangs(pa_fresh, tmp_path):
    """SIGKILL of the node: pending and new tasks fail with WorkerCrashedError, cluster queries
    raise, and after shutdown no process or segment is left; init works again."""
    pa_fresh.init(num_cpus=NUM_CPUS, object_store_memory=64 << 20)
    sleeper = pa_fresh.remote(max_retries=3)(write_pid_then_sleep)
    path = tmp_path / "pid"
    running = sleeper.remote(str(path))
    assert wait_until(lambda: read_pid(path) is not None, GUARD_S)
    node = node_pid()
    os.kill(node, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="node"):
        pa_fresh.get(running, timeout=GUARD_S)
    with pytest.raises(WorkerCrashedError, match="node"):
        pa_fresh.get(sleeper.remote(str(path)), timeout=GUARD_S)
    with pytest.raises(ConnectionError):
        pa_fresh.cluster_resources()
    with pytest.raises(PyActorError, match="cannot put"):  # a ref no task could read
        pa_fresh.put(41)
    pa_fresh.shutdown()
    assert wait_until(lambda: not node_processes(node)), node_processes(node)
    assert not [n for n in pyactor_segments() if n.startswith(f"pyactor-{node}-")]
    pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
    assert pa_fresh.get(pa_fresh.remote(lambda: 7).remote(), timeout=GUARD_S) == 7


def test_next_node_removes_segments_of_dead_nodes(pa_fresh):
    """A segment left by a node that died (its pid is gone) is removed when a node starts."""
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = f"/dev/shm/pyactor-{dead}-deadbeef"
    with open(stale, "wb") as f:
        f.write(b"x")
    try:
        pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.unlink(stale)


# ------------------------------------------------------------------------- hostile peers

async def _connect_and_close(host, port, token) -> None:
    conn = await transport.connect(host, port, token, lambda conn, message: None)
    conn.close()


def test_wrong_token_is_refused(pa_node, pid_task):
    """A connection to the node with the wrong token fails with AuthenticationError."""
    host, port = node_address()
    with pytest.raises(AuthenticationError):
        asyncio.run(_connect_and_close(host, port, os.urandom(32)))
    assert pa_node.get(pid_task.remote(), timeout=GUARD_S)


def send_raw(address, data: bytes) -> None:
    """Send bytes to a pyactor port and read until it closes (or the guard expires)."""
    with socket.create_connection(address, timeout=GUARD_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:  # reset by the peer: it refused us, as it should
            pass


def frame(value) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


junk = (st.binary(max_size=300)
        | st.builds(lambda n, body: struct.pack(">I", n) + body,  # truncated or oversized frames
                    st.integers(0, 2**32 - 1), st.binary(max_size=64))
        | st.builds(lambda body, cut: frame(body)[:cut],
                    st.lists(st.binary(max_size=40), max_size=4), st.integers(0, 200)))


@pytest.fixture(scope="module")
def pa_shared():
    import pyactor as pa
    if pa.is_initialized():
        pa.shutdown()
    pa.init(num_cpus=NUM_CPUS, object_store_memory=64 << 20)
    yield pa
    pa.shutdown()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=junk)
def test_random_bytes_never_crash_the_node(pa_shared, data):
    """Random bytes and truncated frames sent to the node's port only close that connection."""
    node = node_pid()
    send_raw(node_address(), data)
    assert node in node_processes(node)


def test_tasks_run_after_the_junk(pa_shared):
    """After the random-bytes storm, the node still runs tasks (and the worker port too)."""
    @pa_shared.remote
    def address():
        return os.getpid(), list(api._runtime.address)

    pid, worker_address = pa_shared.get(address.remote(), timeout=GUARD_S)
    for data in (b"", os.urandom(100), struct.pack(">I", 1000) + b"abc", frame(["x"])[:5],
                 b"\xff" * 4 + b"x"):
        send_raw(tuple(worker_address), data)
    assert pa_shared.get(address.remote(), timeout=GUARD_S)[0] == pid


class Authenticated:
    """A client that holds the token, sends raw messages and sees whether it was cut off."""

    def __init__(self, host, port, token):
        self.host, self.port, self.token = host, port, token

    async def send(self, raw) -> bool:
        """True if the node closed the connection after `raw`."""
        closed = asyncio.get_running_loop().create_future()
        replies = []

        def on_close(conn, reason):
            if not closed.done():
                closed.set_result(reason)
        conn = await transport.connect(self.host, self.port, self.token,
                                       lambda conn, message: replies.append(message),
                                       on_close=on_close)
        conn.send(raw)
        # A request that is answered proves the node read `raw` and kept the connection open.
        conn.send(P.encode(P.ClusterInfo(987654, "resources")))
        while not closed.done():
            if any(isinstance(r, list) and r[:2] == [P.KIND_OF[P.Reply], 987654]
                   for r in replies):
                conn.close()
                return False
            await asyncio.wait([closed], timeout=0.01)
        return True


def authenticated() -> Authenticated:
    host, port = node_address()
    return Authenticated(host, port, api._runtime.token)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=10) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5),
                                                                      children, max_size=3),
    max_leaves=10)


def _is_message(raw) -> bool:
    try:
        P.decode(raw)
        return True
    except ProtocolError:
        return False


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=msgpack_values)
def test_authenticated_non_messages_close_only_that_connection(pa_shared, raw):
    """A token holder that sends a msgpack value that is no message is cut off; the node lives."""
    assume(not _is_message(raw))
    assert asyncio.run(authenticated().send(raw))
    assert node_pid() in node_processes(node_pid())


def shaped(cls, **fields):
    """A message of kind `cls` with the given fields and None for the others."""
    return cls(**{name: fields.get(name) for name in cls._fields})


MALFORMED = [
    shaped(P.RequestLease, request_id=1, demand="CPU"),
    shaped(P.RequestLease, request_id=2, demand={"CPU": "lots"}),
    shaped(P.RequestLease, request_id=3, demand={7: 1}),
    shaped(P.RequestLease, request_id=4, demand={"CPU": -1}),
    shaped(P.Register, request_id=1, kind=5, pid="pid", address="nowhere"),
    shaped(P.Register, request_id=1, kind="worker", worker_id=b"fake", address=["h", "p"]),
    shaped(P.ReturnLease, lease_id="x"), shaped(P.ReturnLease, lease_id=10**9),
    shaped(P.WorkerBlocked, blocked=True),
    shaped(P.CreateActor, request_id=1, spec=b"junk", demand={}),
    shaped(P.StartActor), shaped(P.GetActor, request_id=1),
    shaped(P.KillActor, actor_id=b"nobody", no_restart=True), shaped(P.WaitActor, request_id=1),
    shaped(P.CancelTask, task_id=b"", force=True, worker_id=b"nobody"),
    shaped(P.FreeObjects, object_ids=[1, "x"]), shaped(P.FreeObjects, object_ids="abc"),
    shaped(P.FreeObjects, object_ids=[b"\x00" * 3]), shaped(P.ClusterInfo, request_id=1),
    shaped(P.Log, source="me", stream="stdout", lines="not a list"),
    shaped(P.Log, lines=[1, 2]), shaped(P.Log, source="me", stream="stdout"),
    shaped(P.TaskDone), shaped(P.Reply, request_id=1), shaped(P.PushTask),
]


@pytest.mark.parametrize("message", MALFORMED, ids=lambda m: type(m).__name__)
def test_malformed_message_of_a_known_kind_spares_the_node(pa_shared, message):
    """A well-framed message with wrong field types at most closes its own connection; the
    node and the driver's connection to it live on."""
    asyncio.run(authenticated().send(P.encode(message)))
    assert node_pid() in node_processes(node_pid())
    assert not api._runtime.node_lost.is_set()
    assert pa_shared.cluster_resources()["CPU"] == NUM_CPUS


def test_tasks_run_after_malformed_messages(pa_shared):
    """After all the malformed messages, tasks still run and every CPU is free again."""
    @pa_shared.remote
    def square(x):
        return x * x

    assert pa_shared.get([square.remote(i) for i in range(8)], timeout=GUARD_S) == \
        [i * i for i in range(8)]
    assert wait_until(lambda: all_cpus_free(pa_shared))
