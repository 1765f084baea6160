"""Simulated nodes for measuring a real head at a scale one host cannot run real nodes at.

A real head runs in its own process (node_main, as `pa.init()` starts it). In this process, many
`SimNode`s each open a real connection to it and speak the real protocol: join, heartbeat their
free resources and the view version they hold, apply the head's view deltas (pulling a snapshot
on a gap), accept HostActor if it fits (else ActorDeferred, as a real node does) and report the
actor up at once (ActorHosted) without starting any process, answer KillActorProcess, and die on
command (their connection closes, as when a node's process is killed). A `SimDriver` creates
actors through the head as a driver does. bench/cluster_sim.py and the tests drive these.

    HeadProcess.start() -> the head's pid and address; cpu_seconds(), bytes_written() from /proc
    SimCluster(head).add_nodes(n, resources) -> SimNodes heartbeating every HEARTBEAT_S
    SimDriver(head).create_actors(n, demand, max_restarts) -> actor ids, placed via the head
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass, field

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.cluster import HEARTBEAT_S
from pyactor._private.cluster_view import Delta, MemberView, Snapshot

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def wait_for_change(predicate, changed: asyncio.Event, timeout_s: float) -> bool:
    """Wait until predicate() holds, checked each time `changed` is set and every 50 ms;
    False if it did not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), min(remaining, 0.05))
        except asyncio.TimeoutError:
            pass
    return True


class HeadProcess:
    """A real node (node_main) in a child process, the head unless `head` is given; stopped
    by closing its stdin."""

    def __init__(self, proc: subprocess.Popen, port: int, token: bytes):
        self.proc, self.port, self.token = proc, port, token
        self.host = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def start(cls, num_cpus: float = 0, env: dict | None = None,
              head: "HeadProcess | None" = None) -> "HeadProcess":
        token = head.token if head is not None else transport.new_token()
        config = {"token_hex": token.hex(), "num_cpus": num_cpus, "embedded": True,
                  "object_store_memory": 64 * 1024 * 1024,
                  "head_address": head.address if head is not None else None}
        proc = subprocess.Popen([sys.executable, "-m", "pyactor._private.node_main"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
        proc.stdin.write((json.dumps(config) + "\n").encode())
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError("the head process exited before it was ready")
        return cls(proc, json.loads(line)["port"], token)

    def cpu_seconds(self) -> float:
        """User + system CPU time the head's process has used (its workers not included)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def bytes_written(self) -> int:
        """Bytes the head's process passed to write/send calls (its sockets, mostly)."""
        with open(f"/proc/{self.proc.pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the lifeline: the head cleans up and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class SimNode:
    node_id: bytes
    total: dict
    cluster: "SimCluster"
    available: dict = field(default_factory=dict)
    hosted: dict = field(default_factory=dict)  # actor id -> demand
    view: MemberView = field(default_factory=MemberView)
    conn: transport.Connection | None = None
    alive: bool = True
    deferred: int = 0  # HostActor it had no room for (sent back)
    pulls: int = 0  # snapshots it asked for after a gap
    view_rows: int = 0  # rows it was sent in deltas and snapshots
    follows_load: bool = False  # asks for the other nodes' load, as a node that spills does

    def row(self) -> list:
        # NodeInfo.wire()'s fields; a simulated node exports no metrics
        return [self.node_id, ["127.0.0.1", 1], self.total, self.available, True, False, {},
                len(self.hosted), 0, ""]

    def on_message(self, conn, raw) -> None:
        message = P.decode(raw)
        kind = type(message)
        if kind is P.ViewDelta:
            self.view_rows += len(message.rows)
            if self.view.apply_delta(Delta(*message)) is None:
                self.pulls += 1
                conn.send(P.encode(P.PullView(self.view.version)))
        elif kind is P.ViewSnapshot:
            self.view_rows += len(message.rows)
            self.view.apply_snapshot(Snapshot(*message))
        elif kind is P.HostActor:
            self.host(message)
        elif kind is P.KillActorProcess:
            demand = self.hosted.pop(message.actor_id, None)
            if demand is not None:
                self._give_back(demand)
            conn.send(P.encode(P.ActorProcessDied(message.actor_id, "killed")))

    def on_close(self, conn, reason) -> None:
        self.alive = False  # a real node stops when it loses the head

    def host(self, message: P.HostActor) -> None:
        demand = message.demand
        if any(self.available.get(name, 0) < amount for name, amount in demand.items()):
            self.deferred += 1
            self.conn.send(P.encode(P.ActorDeferred(message.actor_id, message.restarts)))
            return
        for name, amount in demand.items():
            self.available[name] = self.available[name] - amount
        self.hosted[message.actor_id] = demand
        self.conn.send(P.encode(P.ActorHosted(message.actor_id, ["127.0.0.1", 1], None,
                                              ["127.0.0.1", 1])))
        self.cluster.on_hosted(self, message.actor_id)

    def _give_back(self, demand: dict) -> None:
        for name, amount in demand.items():
            self.available[name] = self.available[name] + amount

    def heartbeat(self) -> None:
        if self.alive and self.conn is not None and not self.conn.closed:
            self.conn.send(P.encode(P.Heartbeat(self.row(), self.view.version,
                                                self.follows_load)))

    def die(self) -> None:
        self.alive = False
        if self.conn is not None:
            self.conn.close("simulated node death")


class SimCluster:
    """Many SimNodes in this process, heartbeating in 10 staggered groups per interval."""

    SLICES = 10

    def __init__(self, head: HeadProcess):
        self.head = head
        self.nodes: list[SimNode] = []
        self.placements: dict[bytes, SimNode] = {}  # actor id -> node hosting it now
        self.hosted_at: dict[bytes, float] = {}  # actor id -> when it was last hosted
        self._changed = asyncio.Event()  # set on every hosting
        self._beat_task: asyncio.Task | None = None
        self.on_hosted_hook = None  # (node, actor id, when): sim_fleet reports it to its parent
        self.join_retries = 0  # handshakes the head closed (its time limit) and tried again

    async def add_nodes(self, count: int, resources: dict, batch: int = 10,
                        follow_load: int = 0) -> list[SimNode]:
        """Join `count` nodes of `resources`, `batch` at a time; the first `follow_load` of them
        ask for the other nodes' load in their heartbeats."""
        added = []
        if self._beat_task is None:
            self._beat_task = asyncio.get_running_loop().create_task(self._beat())
        for start in range(0, count, batch):
            fresh = [SimNode(os.urandom(16), dict(resources), self, dict(resources),
                             follows_load=start + i < follow_load)
                     for i in range(min(batch, count - start))]
            await asyncio.gather(*(self._connect(node) for node in fresh))
            added += fresh
        return added

    async def _connect(self, node: SimNode, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                node.conn = await transport.connect(
                    self.head.host, self.head.port, self.head.token, node.on_message,
                    on_close=node.on_close, timeout_s=60)
                break
            except (ConnectionError, TimeoutError):
                # On a starved host the head may close a handshake that outlived its limit, or
                # not answer it in time: join again (counted), as the node's operator would.
                if attempt == attempts - 1:
                    raise
                self.join_retries += 1
        node.conn.send(P.encode(P.JoinCluster(node.row())))
        self.nodes.append(node)  # heartbeating from now on

    async def _beat(self) -> None:
        turn = 0
        while True:
            await asyncio.sleep(HEARTBEAT_S / self.SLICES)
            for node in self.nodes[turn % self.SLICES::self.SLICES]:
                node.heartbeat()
            turn += 1

    def on_hosted(self, node: SimNode, actor_id: bytes) -> None:
        self.placements[actor_id] = node
        self.hosted_at[actor_id] = now = time.monotonic()
        self._changed.set()
        if self.on_hosted_hook is not None:
            self.on_hosted_hook(node, actor_id, now)

    async def wait_for(self, predicate, timeout_s: float) -> bool:
        """Wait until predicate() holds (checked after each hosting and every 50 ms)."""
        return await wait_for_change(predicate, self._changed, timeout_s)

    def alive_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes if node.alive]

    def spread(self, nodes: list[SimNode] | None = None) -> dict:
        """Actors per alive node: max, min, stddev, and how many nodes went over their CPUs."""
        nodes = self.alive_nodes() if nodes is None else nodes
        counts = [len(node.hosted) for node in nodes]
        mean = sum(counts) / len(counts)
        over = sum(1 for node in nodes
                   if any(amount < 0 for amount in node.available.values()))
        return {"max": max(counts), "min": min(counts),
                "stddev": round((sum((c - mean) ** 2 for c in counts) / len(counts)) ** 0.5, 3),
                "over_resources": over, "deferred": sum(node.deferred for node in nodes)}

    def close(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
        for node in self.nodes:
            if node.conn is not None:
                node.conn.close("simulation over")


class SimDriver:
    """A driver connection to the head that creates actors (their specs never run)."""

    def __init__(self, head: HeadProcess):
        self.head = head
        self.conn: transport.Connection | None = None
        self.replies: dict[int, asyncio.Future] = {}
        self._ids = iter(range(1, 1 << 62))

    async def connect(self) -> None:
        self.conn = await transport.connect(self.head.host, self.head.port, self.head.token,
                                            self._on_message)
        await self._request(lambda rid: P.Register(rid, "driver", os.getpid(), os.urandom(16),
                                                   ["127.0.0.1", 1], "sim", []))

    def _on_message(self, conn, raw) -> None:
        message = P.decode(raw)
        if type(message) is P.Reply:
            future = self.replies.pop(message.request_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    def _request(self, build) -> asyncio.Future:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        self.conn.send(P.encode(build(request_id)))
        return future

    async def create_actors(self, count: int, demand: dict, max_restarts: int = 0) -> list[bytes]:
        """Create `count` actors, all sent at once (as a program's loop of `.remote()` does);
        returns their ids once the head has answered every one."""
        spec = pickle.dumps({"options": {"max_restarts": max_restarts}})
        ids = [os.urandom(16) for _ in range(count)]
        futures = [self._request(lambda rid, a=actor_id: P.CreateActor(
            rid, a, spec, demand, "", "sim", False, False, ["127.0.0.1", 1]))
            for actor_id in ids]
        for reply in await asyncio.gather(*futures):
            if reply.error is not None:
                raise RuntimeError(f"the head refused an actor: {reply.error}")
        return ids

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close("simulation over")

