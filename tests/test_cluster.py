"""Several nodes on one host, each with its own port and store, started with the `pyactor` CLI
as if they were separate machines: work spreads over them and follows custom resources, objects
move between stores, nodes die (SIGKILL) or stop answering (SIGSTOP) mid-workload, strangers
send garbage, and several drivers share the cluster. Every cluster is stopped with
`pyactor stop`, which must leave no process and no shared-memory segment behind, and its
session folder (address, token, node logs) is removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import pyactor as pa
from pyactor.exceptions import ActorDiedError, AuthenticationError, ObjectLostError
from conftest import (pids_of, process_alive, pyactor_processes, pyactor_segments,
                      wait_until)

GUARD_S = 60  # a hang guard on gets: a bug fails the test instead of hanging it
BIG_BYTES = 16 << 20
STORE_BYTES = 128 << 20


# ---------------------------------------------------------------------- the cluster fixture
class CliCluster:
    """Nodes started with `pyactor start` in a private session dir; `stop()` runs `pyactor stop`
    and checks that every node process and store segment is gone."""

    def __init__(self):
        self.session_dir = tempfile.mkdtemp(prefix="pyactor-cluster-test-")
        self.env = {**os.environ, "PYACTOR_SESSION_DIR": self.session_dir}
        self.env.pop("PYACTOR_TOKEN", None)
        self.address = ""
        self.token = ""
        self.pids: list[int] = []  # node daemons, head first

    def cli(self, *args: str, check: bool = True, prefix: tuple = ()) -> str:
        result = subprocess.run([*prefix, sys.executable, "-m", "pyactor.cli", *args],
                                capture_output=True, text=True, env=self.env, timeout=GUARD_S)
        if check and result.returncode != 0:
            raise AssertionError(f"pyactor {' '.join(args)} failed: {result.stderr}")
        return result.stdout + result.stderr

    def start_head(self, num_cpus: float = 1, resources: dict | None = None, **kw) -> int:
        out = self._start("--head", "--port", "0", num_cpus=num_cpus, resources=resources, **kw)
        self.address = re.search(r"head node at (\S+) ", out).group(1)
        self.token = re.search(r"token:\s+([0-9a-f]{64})", out).group(1)
        return self.pids[-1]

    def add_node(self, num_cpus: float = 1, resources: dict | None = None, **kw) -> int:
        self._start("--address", self.address, "--token", self.token, num_cpus=num_cpus,
                    resources=resources, **kw)
        return self.pids[-1]

    def _start(self, *role: str, num_cpus, resources, ip: str | None = None,
               prefix: tuple = (), store_bytes: int = STORE_BYTES) -> str:
        args = [*role, "--num-cpus", str(num_cpus), "--resources", json.dumps(resources or {}),
                "--object-store-memory", str(store_bytes)]
        if ip is not None:
            args += ["--node-ip-address", ip]
        out = self.cli("start", *args, prefix=prefix)
        self.pids.append(int(re.search(r"\(pid (\d+)\)", out).group(1)))
        return out

    def connect(self, namespace: str | None = None) -> None:
        if pa.is_initialized():
            pa.shutdown()
        pa.init(address=self.address, token=self.token, namespace=namespace)
        # Every node has joined once the driver's node sees them all.
        assert wait_until(lambda: sum(n["Alive"] for n in pa.nodes()) == len(self.live()), 15)

    def live(self) -> list[int]:
        return [pid for pid in self.pids if process_alive(pid)]

    def node_ids(self) -> dict[int, str]:
        """Node pid -> node id, from the ready line each node recorded (see session.py)."""
        nodes = json.load(open(os.path.join(self.session_dir, "nodes.json")))
        return {node["pid"]: node["node_id"] for node in nodes}

    def stop(self) -> None:
        if pa.is_initialized():
            pa.shutdown()
        for pid in self.pids:  # a test may leave a node stopped with SIGSTOP
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            self.cli("stop")
        finally:
            shutil.rmtree(self.session_dir, ignore_errors=True)  # the nodes' logs
        segments_of = {f"pyactor-{pid}-" for pid in self.pids}
        ours = lambda: [s for s in pyactor_segments() if any(s.startswith(p)  # noqa: E731
                                                               for p in segments_of)]
        assert wait_until(lambda: not ours(), 10), f"segments left by pyactor stop: {ours()}"
        assert wait_until(lambda: not set(self.pids) & pids_of(pyactor_processes()), 10), \
            "node processes left by pyactor stop"
        sessions = set(self.pids)
        assert wait_until(lambda: not any(_session_of(pid) in sessions
                                          for pid in pids_of(pyactor_processes())), 10), \
            "workers left by pyactor stop"




def _session_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except OSError:
        return -1


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU, resource `head`) and two nodes: B (1 CPU, `x`, `w`) and C (1 CPU, `w`)."""
    c = CliCluster()
    try:
        c.start_head(1, {"head": 1})
        c.add_node(1, {"x": 1, "w": 1})
        c.add_node(1, {"w": 1})
        c.connect()
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster():
    """An empty CliCluster for a test that kills nodes; stopped (and checked) afterwards."""
    c = CliCluster()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def driver(cluster):
    if not pa.is_initialized():
        cluster.connect()
    return cluster


# ---------------------------------------------------------------------- remote helpers
def _node_id() -> str:
    return pa.get_runtime_context()["node_id"]


@pa.remote
def where() -> tuple[str, int]:
    return _node_id(), os.getpid()


@pa.remote
def rendezvous(folder: str, parties: int) -> tuple[str, int]:
    """Wait (bounded) until `parties` tasks have arrived: only concurrent tasks all see it."""
    import time
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 20
    while len(os.listdir(folder)) < parties and time.monotonic() < deadline:
        time.sleep(0.01)
    return _node_id(), os.getpid()


@pa.remote
def make_array(n_bytes: int, seed: int):
    return _node_id(), np.full(n_bytes // 8, seed, dtype=np.int64)


@pa.remote
def checksum(array) -> tuple[str, int]:
    return _node_id(), int(array.sum())


@pa.remote
def parked(folder: str, tag: str) -> str:
    """Say where it runs, then wait (bounded) for the test to open the gate."""
    import time
    open(os.path.join(folder, f"{tag}-{_node_id()}-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(folder, "gate")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _node_id()


@pa.remote
class Counter:
    def __init__(self):
        self.n = 0

    def inc(self) -> int:
        self.n += 1
        return self.n

    def node(self) -> str:
        return _node_id()


# ---------------------------------------------------------------------- placement
@pytest.mark.slow
def test_concurrent_tasks_spread_over_nodes(driver, tmp_path):
    """Two tasks submitted together on 1-CPU nodes run at once on two different nodes."""
    refs = [rendezvous.remote(str(tmp_path), 2) for _ in range(2)]
    (node_a, pid_a), (node_b, pid_b) = pa.get(refs, timeout=GUARD_S)
    assert node_a != node_b and pid_a != pid_b


def test_custom_resources_place_tasks_and_actors(driver):
    """A task or actor that needs `x` runs on the one node that has it."""
    node_b = driver.node_ids()[driver.pids[1]]
    assert pa.get(where.options(resources={"x": 1}).remote(), timeout=GUARD_S)[0] == node_b
    counter = Counter.options(resources={"x": 1}).remote()
    assert pa.get(counter.node.remote(), timeout=GUARD_S) == node_b
    pa.kill(counter)


def test_big_array_made_on_one_node_is_read_on_another_and_by_driver(driver):
    """An array made on node B is read by a task on the head and by the driver, bit for bit."""
    node_ids = driver.node_ids()
    made_on, array = make_array.options(num_returns=2, resources={"x": 1}).remote(BIG_BYTES, 3)
    assert pa.get(made_on, timeout=GUARD_S) == node_ids[driver.pids[1]]
    where_read, total = pa.get(checksum.options(resources={"head": 1}).remote(array),
                               timeout=GUARD_S)
    assert where_read == node_ids[driver.pids[0]]
    assert total == 3 * (BIG_BYTES // 8)
    value = pa.get(array, timeout=GUARD_S)
    assert value.shape == (BIG_BYTES // 8,) and int(value[0]) == 3 and int(value[-1]) == 3


def test_awaiting_an_array_held_by_another_node(driver):
    """ref.future() and `await ref`, taken before the task ends, fetch the value from the
    node that holds it (a completion on the IO thread once fetched the value forever)."""
    _, first = make_array.options(num_returns=2, resources={"x": 1}).remote(BIG_BYTES, 4)
    _, second = make_array.options(num_returns=2, resources={"x": 1}).remote(BIG_BYTES, 5)
    future = first.future()

    async def await_it():
        return await asyncio.wait_for(second, GUARD_S)
    via_await = asyncio.run(await_it())
    via_future = future.result(timeout=GUARD_S)
    assert int(via_future[0]) == 4 and via_future.nbytes == BIG_BYTES
    assert int(via_await[-1]) == 5 and via_await.nbytes == BIG_BYTES


def test_status_lists_nodes_resources_actors_and_store(driver):
    """`pyactor status` shows every node with its resources, use, actors and store."""
    out = driver.cli("status")
    assert "3 node(s) alive" in out
    node_lines = [line for line in out.splitlines() if line.startswith("  node ")]
    assert len(node_lines) == 3 and all(line.endswith(" alive") for line in node_lines)
    assert re.search(r"resources  CPU [\d.]+/1, head [\d.]+/1 used", out)
    assert re.search(r"resources  CPU [\d.]+/1, (w [\d.]+/1, x [\d.]+/1|x [\d.]+/1, w [\d.]+/1)"
                     r" used", out)
    assert out.count("actors") == 3 and out.count("MiB in") == 3


def test_nodes_listen_on_loopback_by_default(driver):
    """With no --node-ip-address every node listens on 127.0.0.1 only."""
    for node in pa.nodes():
        assert node["NodeManagerAddress"] == "127.0.0.1"
        assert _listen_addresses(node["NodeManagerPort"]) == {"127.0.0.1"}


def _listen_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                if len(host_hex) == 8:
                    found.add(socket.inet_ntoa(struct.pack("<I", int(host_hex, 16))))
                else:
                    found.add(host_hex)
    return found


# ---------------------------------------------------------------------- strangers
def test_wrong_token_is_refused_with_advice(driver):
    """pa.init with a wrong token raises AuthenticationError saying what to do."""
    code = f"""
import pyactor as pa
try:
    pa.init(address={driver.address!r}, token="00" * 32)
except pa.AuthenticationError as error:
    print("REFUSED", error)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=GUARD_S)
    assert "REFUSED" in result.stdout, result.stderr
    assert "token" in result.stdout and ("PYACTOR_TOKEN" in result.stdout
                                         or "pyactor start" in result.stdout)


def test_wrong_token_raises_in_this_process(driver):
    """The same refusal in-process: AuthenticationError, and the real driver keeps working."""
    pa.shutdown()
    with pytest.raises(AuthenticationError):
        pa.init(address=driver.address, token="ab" * 32)
    assert not pa.is_initialized()
    driver.connect()
    assert pa.get(where.remote(), timeout=GUARD_S)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(garbage=st.binary(min_size=1, max_size=300), cut=st.integers(1, 40))
def test_garbage_and_truncated_frames_leave_every_node_serving(driver, garbage, cut):
    """Random bytes and frames cut short sent to each node's port close only that connection."""
    frame = struct.pack(">I", 1 << 20) + garbage  # announces more than it sends
    for node in pa.nodes():
        for payload in (garbage, frame[:cut], frame):
            with socket.create_connection((node["NodeManagerAddress"],
                                           node["NodeManagerPort"]), timeout=5) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(5)
                try:
                    while sock.recv(4096):
                        pass
                except (socket.timeout, ConnectionError):
                    pass


def test_cluster_serves_after_fuzzing(driver):
    """After the fuzzing above, every node still runs tasks and the head still answers."""
    node_ids = set(driver.node_ids().values())
    seen = set(pa.get([where.options(resources={"x": 1}).remote(),
                       where.options(resources={"head": 1}).remote()], timeout=GUARD_S))
    assert {n for n, _ in seen} <= node_ids
    assert sum(n["Alive"] for n in pa.nodes()) == 3


# ---------------------------------------------------------------------- several drivers
def _driver_script(cluster: CliCluster, body: str, namespace: str) -> str:
    return textwrap.dedent(f"""
        import pyactor as pa
        pa.init(address={cluster.address!r}, token={cluster.token!r}, namespace={namespace!r})
        @pa.remote
        class Named:
            def __init__(self, tag): self.tag = tag
            def tag_of(self): return self.tag
    """) + textwrap.dedent(body)


def _run_driver(cluster: CliCluster, body: str, namespace: str) -> str:
    result = subprocess.run([sys.executable, "-c", _driver_script(cluster, body, namespace)],
                            capture_output=True, text=True, timeout=GUARD_S)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_drivers_share_a_cluster_with_separate_namespaces(driver):
    """Named actors in two namespaces do not collide; a detached one outlives its driver."""
    ns1, ns2 = f"ns1-{uuid.uuid4().hex[:6]}", f"ns2-{uuid.uuid4().hex[:6]}"
    _run_driver(driver, """
        a = Named.options(name="shared", lifetime="detached").remote("one")
        assert pa.get(a.tag_of.remote(), timeout=30) == "one"
    """, ns1)
    _run_driver(driver, """
        a = Named.options(name="shared").remote("two")
        assert pa.get(a.tag_of.remote(), timeout=30) == "two"
    """, ns2)
    out = _run_driver(driver, """
        a = pa.get_actor("shared")
        print("TAG", pa.get(a.tag_of.remote(), timeout=30))
        pa.kill(a)
    """, ns1)
    assert "TAG one" in out
    assert wait_until(lambda: _no_actor_named("shared", ns2), 10), \
        "a non-detached actor outlived its driver"


def _no_actor_named(name: str, namespace: str) -> bool:
    try:
        pa.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


# ---------------------------------------------------------------------- nodes that die
@pytest.mark.slow
def test_sigkill_node_mid_workload(fresh_cluster, tmp_path):
    """SIGKILL a node mid-workload: its tasks retry elsewhere, its actors restart or die, its
    objects are rebuilt from lineage or lost, and the driver finishes without hanging."""
    c = fresh_cluster
    c.start_head(1, {"head": 1})
    c.add_node(2, {"w": 2, "v": 2, "B": 1})
    c.add_node(2, {"w": 2, "v": 2, "C": 1})
    c.connect()
    ids = c.node_ids()
    # The victim is where a rebuildable object (its task can run on either node) lands.
    made_on, rebuildable = make_array.options(num_returns=2, resources={"v": 1}).remote(
        BIG_BYTES, 5)
    victim_id = pa.get(made_on, timeout=GUARD_S)
    victim = next(pid for pid, node_id in ids.items() if node_id == victim_id)
    mine, other = ("B", "C") if victim == c.pids[1] else ("C", "B")
    # An object only the victim has, made by a task that may not run again.
    made_on2, unrecoverable = make_array.options(num_returns=2, resources={mine: 0.5},
                                                 max_retries=0).remote(BIG_BYTES, 6)
    assert pa.get(made_on2, timeout=GUARD_S) == victim_id
    # Actors on the victim: `mortal` may not restart; `phoenix` may, and lands there because
    # a blocker holds the other node's `v` until the gate opens.
    blocker = parked.options(num_cpus=0, resources={other: 1, "v": 2}).remote(
        str(tmp_path), "blocker")
    assert wait_until(lambda: any(n.startswith("blocker") for n in os.listdir(tmp_path)), 20)
    phoenix = Counter.options(resources={"v": 1}, max_restarts=1).remote()
    mortal = Counter.options(resources={mine: 0.5}, max_restarts=0).remote()
    assert pa.get([phoenix.node.remote(), mortal.node.remote()], timeout=GUARD_S) == \
        [victim_id, victim_id]
    assert pa.get(phoenix.inc.remote(), timeout=GUARD_S) == 1
    # Tasks parked on both nodes, some of them on the victim.
    parked_refs = [parked.options(resources={"w": 1}).remote(str(tmp_path), str(i))
                   for i in range(4)]
    assert wait_until(lambda: any(victim_id in name and not name.startswith("blocker")
                                  for name in os.listdir(tmp_path)), 20)

    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not any(n["Alive"] and n["NodeID"] == victim_id
                                      for n in pa.nodes()), 10)
    open(tmp_path / "gate", "w").close()

    finished_on = pa.get(parked_refs + [blocker], timeout=GUARD_S)
    assert victim_id not in finished_on
    value = pa.get(rebuildable, timeout=GUARD_S)
    assert int(value[0]) == 5 and value.nbytes == BIG_BYTES
    with pytest.raises(ObjectLostError):
        pa.get(unrecoverable, timeout=GUARD_S)
    assert pa.get(phoenix.inc.remote(), timeout=GUARD_S) == 1  # a fresh incarnation
    assert pa.get(phoenix.node.remote(), timeout=GUARD_S) != victim_id
    with pytest.raises(ActorDiedError):
        pa.get(mortal.inc.remote(), timeout=GUARD_S)


@pa.remote
class Pinned:
    """An actor that reports the node it runs on."""

    def node(self):
        return _node_id()

    def sleep(self, seconds):
        time.sleep(seconds)
        return "woke"


@pytest.mark.slow
def test_stopped_node_is_declared_dead_and_its_work_retried(fresh_cluster, tmp_path):
    """SIGSTOP a node: the head declares it dead within the heartbeat timeout, its parked task
    runs again elsewhere, callers of its actor get ActorDiedError instead of waiting, and once
    resumed the node (disowned by the head) stops itself."""
    c = fresh_cluster
    c.start_head(1, {"head": 1})
    victim = c.add_node(1, {"w": 1, "only_victim": 1})
    c.add_node(1, {"w": 1})
    c.connect()
    victim_id = c.node_ids()[victim]
    pinned = Pinned.options(resources={"only_victim": 0.5}).remote()
    assert pa.get(pinned.node.remote(), timeout=GUARD_S) == victim_id
    refs = [parked.options(resources={"w": 1}).remote(str(tmp_path), str(i)) for i in range(2)]
    assert wait_until(lambda: any(victim_id in name for name in os.listdir(tmp_path)), 20)
    # A thread waiting with no timeout sends its call directly (direct.py), on a connection of
    # its own that the stopped node will never answer.
    waited = []

    def wait_directly():
        try:
            waited.append(pa.get(pinned.sleep.remote(600)))
        except Exception as error:  # noqa: BLE001 - checked below
            waited.append(error)
    waiter = threading.Thread(target=wait_directly, daemon=True)
    waiter.start()
    time.sleep(0.5)

    os.kill(victim, signal.SIGSTOP)
    try:
        from pyactor._private.cluster import HEARTBEAT_S, NODE_TIMEOUT_S
        assert wait_until(lambda: not any(n["Alive"] and n["NodeID"] == victim_id
                                          for n in pa.nodes()),
                          NODE_TIMEOUT_S + 4 * HEARTBEAT_S + 2), "never declared dead"
        open(tmp_path / "gate", "w").close()
        assert victim_id not in pa.get(refs, timeout=GUARD_S)
        with pytest.raises(pa.ActorDiedError):
            pa.get(pinned.node.remote(), timeout=GUARD_S)
        waiter.join(GUARD_S)
        assert waited and isinstance(waited[0], pa.ActorDiedError), waited
    finally:
        os.kill(victim, signal.SIGCONT)
    assert pa.get(where.options(resources={"w": 1}).remote(), timeout=GUARD_S)[0] != victim_id
    assert wait_until(lambda: not process_alive(victim), GUARD_S), "a disowned node kept running"


# ---------------------------------------------------------------------- separate netns
def _netns(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@pytest.mark.slow
def test_nodes_in_separate_network_namespaces(fresh_cluster):
    """Two nodes in their own network namespaces, joined by a veth pair: work and a big array
    cross a real interface."""
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"pa-a-{tag}", f"pa-b-{tag}"
    veth_a, veth_b = f"pva{tag}", f"pvb{tag}"
    ip_a, ip_b = "10.213.7.1", "10.213.7.2"
    made = []
    try:
        for ns in (ns_a, ns_b):
            result = _netns("netns", "add", ns)
            if result.returncode != 0:
                pytest.skip(f"`ip netns add` is not permitted here: {result.stderr.strip()}")
            made.append(ns)
        steps = [("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
                 ("link", "set", veth_a, "netns", ns_a), ("link", "set", veth_b, "netns", ns_b),
                 ("-n", ns_a, "addr", "add", f"{ip_a}/24", "dev", veth_a),
                 ("-n", ns_b, "addr", "add", f"{ip_b}/24", "dev", veth_b),
                 ("-n", ns_a, "link", "set", veth_a, "up"), ("-n", ns_b, "link", "set", veth_b, "up"),
                 ("-n", ns_a, "link", "set", "lo", "up"), ("-n", ns_b, "link", "set", "lo", "up")]
        for step in steps:
            result = _netns(*step)
            if result.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` is not permitted here: "
                            f"{result.stderr.strip()}")
        c = fresh_cluster
        c.start_head(1, {"head": 1}, ip=ip_a, prefix=("ip", "netns", "exec", ns_a))
        c.add_node(1, {"x": 1}, ip=ip_b, prefix=("ip", "netns", "exec", ns_b))
        code = _driver_script(c, f"""
            import numpy as np
            @pa.remote(resources={{"x": 1}})
            def make():
                return np.arange({BIG_BYTES // 8}, dtype=np.int64)
            @pa.remote(resources={{"head": 1}})
            def total(a):
                return int(a.sum())
            ref = make.remote()
            print("SUM", pa.get(total.remote(ref), timeout=60), int(pa.get(ref, timeout=60)[-1]))
            print("NODES", sorted(n["NodeManagerAddress"] for n in pa.nodes()))
        """, "netns")
        result = subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, "-c", code],
                                capture_output=True, text=True, timeout=GUARD_S)
        n = BIG_BYTES // 8
        assert f"SUM {n * (n - 1) // 2} {n - 1}" in result.stdout, result.stderr
        assert f"NODES {[ip_a, ip_b]!r}" in result.stdout
    finally:
        if pa.is_initialized():
            pa.shutdown()
        fresh_cluster.cli("stop", check=False)
        for ns in made:
            _netns("netns", "del", ns)
