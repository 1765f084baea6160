"""The node daemon: one per host, owner of the host's store, workers and resources.

The node hands out workers (leases) to the processes that submit tasks, hosts actors (starting,
restarting and killing their processes), answers questions about resources, and forwards worker
output to drivers. It is never on the path of an individual task: once a caller holds a lease it
talks to the worker directly (see runtime.py for the picture).

    driver/worker runtimes ==TCP==> Node --pipe--> fork server --fork--> worker processes
                                     |                                     |
                                     +-- creates/destroys the store <------+ (every process maps it)

Start-up: the driver runs `python -m pyactor._private.node`, writes the config (with the session
token) on its stdin and keeps that pipe open. The node prints one JSON line with its port when it
is ready. When the pipe closes (the driver exited, even by SIGKILL) the node stops everything and
removes the store's segment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.ids import new_node_id, new_worker_id
from pyactor._private.resources import ResourceSet
from pyactor._private.scheduler import LeaseRequest, LocalScheduler, Outcome
from pyactor._private.worker_pool import ForkServer

logger = logging.getLogger("pyactor.node")


@dataclass(frozen=True)
class NodeConfig:
    token_hex: str
    host: str = "127.0.0.1"
    port: int = 0
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict = field(default_factory=dict)
    object_store_memory: int | None = None
    embedded: bool = True  # stops when its stdin closes
    head_address: str | None = None  # HOST:PORT of the head to join; None for a head


def detect_gpu_count() -> int:
    """GPUs this host exposes, without importing a CUDA library (that takes seconds)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


@dataclass
class WorkerRecord:
    worker_id: bytes
    pid: int
    conn: Any = None
    address: list | None = None
    state: str = "starting"  # starting -> idle -> leased / actor -> dead
    lease_id: Any = None
    actor_id: bytes | None = None


@dataclass
class LeaseRecord:
    lease_id: int
    conn: Any  # the runtime holding the lease
    request_id: int
    worker_id: bytes | None = None
    gpu_ids: tuple = ()
    blocked: bool = False


@dataclass
class ActorRecord:
    actor_id: bytes
    spec: bytes
    demand: dict
    name: str
    namespace: str
    detached: bool
    owner_conn: Any
    max_restarts: int
    state: str = "pending"  # pending -> alive -> restarting -> alive ... -> dead
    address: list | None = None
    incarnation: int = 0
    restarts: int = 0
    death_cause: str = ""
    worker_id: bytes | None = None
    lease_id: Any = None
    no_restart: bool = False
    waiters: list = field(default_factory=list)

    def view(self) -> list:
        return list(P.ActorState(self.actor_id, self.state, self.address, self.incarnation,
                                 self.death_cause, self.spec))


class Node:
    def __init__(self, config: NodeConfig, fork_server: ForkServer | None = None):
        self.config = config
        self.token = bytes.fromhex(config.token_hex)
        self.node_id = new_node_id()
        num_cpus = config.num_cpus if config.num_cpus is not None else os.cpu_count() or 1
        num_gpus = config.num_gpus if config.num_gpus is not None else detect_gpu_count()
        total = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}),
                 **(config.resources or {})}
        self.total = ResourceSet.from_dict(total)
        self.scheduler = LocalScheduler(self.total, list(range(int(num_gpus))))
        self.pool_size = max(1, int(num_cpus))
        self.fork_server = fork_server
        self.store = None
        self.server: transport.Server | None = None
        self.workers: dict[bytes, WorkerRecord] = {}
        self.idle: deque[bytes] = deque()
        self.leases: dict[int, LeaseRecord] = {}
        self.waiting_for_worker: deque[int] = deque()
        self.actors: dict[bytes, ActorRecord] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self.drivers: set = set()
        self.clients: dict[Any, str] = {}
        self._lease_ids = itertools.count(1)
        self.stopped = asyncio.Event()
        self.handlers = {
            P.Register: self._on_register, P.RequestLease: self._on_request_lease,
            P.ReturnLease: self._on_return_lease, P.WorkerBlocked: self._on_worker_blocked,
            P.CreateActor: self._on_create_actor, P.ActorReady: self._on_actor_ready,
            P.WaitActor: self._on_wait_actor, P.GetActor: self._on_get_actor,
            P.KillActor: self._on_kill_actor, P.CancelTask: self._on_cancel_task,
            P.FreeObjects: self._on_free_objects, P.ClusterInfo: self._on_cluster_info,
            P.Log: self._on_log, P.Shutdown: self._on_shutdown,
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from pyactor._private.store import ObjectStore, default_capacity_bytes
        capacity = self.config.object_store_memory or default_capacity_bytes()
        self.store_name = f"pyactor-{os.getpid()}-{self.node_id[:4].hex()}"
        self.store = ObjectStore.create(self.store_name, capacity)
        self.server = await transport.serve(self.config.host, self.config.port, self.token,
                                            self._on_message, on_close=self._on_closed)
        for _ in range(self.pool_size):
            self._start_worker()  # in the background: the node is ready before they are

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        for worker in self.workers.values():
            _kill(worker.pid)
        if self.fork_server is not None:
            self.fork_server.stop()
        if self.server is not None:
            self.server.close()
        if self.store is not None:
            self.store.destroy()
            self.store = None

    def _start_worker(self) -> WorkerRecord:
        """Ask the fork server for a worker; the pid arrives from a thread (the first fork
        waits for the fork server's imports, which must not block this loop)."""
        worker_id = new_worker_id()
        record = WorkerRecord(worker_id, 0)
        self.workers[worker_id] = record
        loop = asyncio.get_running_loop()
        spawn = loop.run_in_executor(None, self.fork_server.spawn, worker_id, self.config.host,
                                     self.server.port, {})

        def spawned(future):
            if future.exception() is not None:
                if not self.stopped.is_set():
                    logger.error("could not start a worker: %s", future.exception())
                self.workers.pop(worker_id, None)
                return
            record.pid = future.result()
            if record.state == "dead" or self.stopped.is_set():
                _kill(record.pid)
        spawn.add_done_callback(spawned)
        return record

    # ------------------------------------------------------------------ messages
    def _on_message(self, conn, raw) -> None:
        message = P.decode(raw)
        handler = self.handlers.get(type(message))
        if handler is None:
            raise P.ProtocolError(f"the node does not take {type(message).__name__}")
        handler(conn, message)

    def _reply(self, conn, request_id: int, value=None, error=None) -> None:
        if not conn.closed:
            conn.send(P.encode(P.Reply(request_id, value, error)))

    def _on_register(self, conn, message: P.Register) -> None:
        # The node later signals `pid` and hands `address` to others: refuse nonsense here.
        if message.kind not in ("driver", "worker", "cli") or type(message.pid) is not int \
                or message.pid <= 0 or type(message.address) is not list \
                or len(message.address) != 2 or type(message.worker_id) is not bytes:
            raise P.ProtocolError(f"malformed Register: {message!r}"[:200])
        self.clients[conn] = message.kind
        if message.kind == "driver":
            self.drivers.add(conn)
        elif message.kind == "worker":
            worker = self.workers.get(message.worker_id)
            if worker is None:  # started by someone else: adopt it
                worker = self.workers[message.worker_id] = WorkerRecord(message.worker_id,
                                                                        message.pid)
            worker.conn = conn
            worker.address = message.address
            conn.user_data = worker
            self._worker_idle(worker)
        self._reply(conn, message.request_id, {
            "node_id": self.node_id, "store_name": self.store_name,
            "resources": self.total.to_dict()})

    def _on_closed(self, conn, reason) -> None:
        kind = self.clients.pop(conn, None)
        self.drivers.discard(conn)
        if kind == "worker" and isinstance(conn.user_data, WorkerRecord):
            self._worker_died(conn.user_data, reason)
        for lease in [l for l in self.leases.values() if l.conn is conn]:
            self._end_lease(lease.lease_id, worker_exiting=False)
        if kind == "driver":
            for actor in list(self.actors.values()):
                if actor.owner_conn is conn and not actor.detached and actor.state != "dead":
                    self._kill_actor(actor, "its owner (driver) exited", no_restart=True)

    # ------------------------------------------------------------------ workers and leases
    def _worker_idle(self, worker: WorkerRecord) -> None:
        worker.state = "idle"
        worker.lease_id = None
        self.idle.append(worker.worker_id)
        self._match_workers()

    def _take_idle_worker(self) -> WorkerRecord | None:
        while self.idle:
            worker = self.workers.get(self.idle.popleft())
            if worker is not None and worker.state == "idle":
                return worker
        return None

    def _match_workers(self) -> None:
        while self.waiting_for_worker:
            worker = self._take_idle_worker()
            if worker is None:
                break
            lease_id = self.waiting_for_worker.popleft()
            self._bind(lease_id, worker)

    def _on_request_lease(self, conn, message: P.RequestLease) -> None:
        lease_id = next(self._lease_ids)
        demand = ResourceSet.from_dict(message.demand)
        decision = self.scheduler.submit(LeaseRequest(lease_id, demand))
        if decision.outcome is Outcome.INFEASIBLE:
            self._reply(conn, message.request_id, error=["InfeasibleResourcesError",
                                                         decision.reason])
            return
        self.leases[lease_id] = LeaseRecord(lease_id, conn, message.request_id)
        if decision.outcome is Outcome.GRANTED:
            self._granted(lease_id, decision.allocation)

    def _granted(self, lease_id, allocation) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        lease.gpu_ids = allocation.gpu_ids
        worker = self._take_idle_worker()
        if worker is None:
            self.waiting_for_worker.append(lease_id)
            # Workers still starting (the pool started ahead of demand) will serve the queue:
            # fork another only when they are too few.
            starting = sum(1 for w in self.workers.values() if w.state == "starting")
            if starting < len(self.waiting_for_worker):
                self._start_worker()
            return
        self._bind(lease_id, worker)

    def _bind(self, lease_id, worker: WorkerRecord) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            self._worker_idle(worker)
            return
        lease.worker_id = worker.worker_id
        worker.lease_id = lease_id
        if isinstance(lease.request_id, tuple):  # an actor's lease
            actor = self.actors.get(lease.request_id[1])
            worker.state = "actor"
            worker.actor_id = actor.actor_id
            actor.worker_id = worker.worker_id
            restart = actor.restarts
            worker.conn.send(P.encode(P.StartActor(actor.actor_id, actor.spec,
                                                   list(lease.gpu_ids), restart)))
            self._top_up_pool()
            return
        worker.state = "leased"
        self._reply(lease.conn, lease.request_id, [lease_id, worker.worker_id, worker.address,
                                                   list(lease.gpu_ids)])

    def _top_up_pool(self) -> None:
        """Actors take workers for good: keep enough idle ones for tasks."""
        spare = sum(1 for w in self.workers.values() if w.state in ("idle", "starting"))
        if spare < self.pool_size:
            self._start_worker()

    def _on_return_lease(self, conn, message: P.ReturnLease) -> None:
        self._end_lease(message.lease_id, message.worker_exiting)

    def _end_lease(self, lease_id, worker_exiting: bool) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if lease_id in self.waiting_for_worker:
            self.waiting_for_worker.remove(lease_id)
        try:
            grants = self.scheduler.release(lease_id)
        except KeyError:
            grants = self.scheduler.cancel(lease_id)
        worker = self.workers.get(lease.worker_id) if lease.worker_id else None
        if worker is not None and worker.state == "leased":
            if worker_exiting:
                _kill(worker.pid)
            else:
                self._worker_idle(worker)
        for grant in grants:
            self._granted(grant.request_id, grant.allocation)

    def _on_worker_blocked(self, conn, message: P.WorkerBlocked) -> None:
        worker = self.workers.get(message.worker_id)
        if worker is None or worker.lease_id is None or worker.lease_id not in self.leases:
            return
        lease = self.leases[worker.lease_id]
        if lease.blocked == message.blocked:
            return
        lease.blocked = message.blocked
        grants = (self.scheduler.lend_cpus(worker.lease_id) if message.blocked
                  else self.scheduler.reclaim_cpus(worker.lease_id))
        for grant in grants:
            self._granted(grant.request_id, grant.allocation)

    def _worker_died(self, worker: WorkerRecord, reason) -> None:
        if worker.state == "dead":
            return
        previous = worker.state
        worker.state = "dead"
        self.workers.pop(worker.worker_id, None)
        _kill(worker.pid)
        if worker.lease_id is not None and worker.lease_id in self.leases:
            lease = self.leases.pop(worker.lease_id)
            try:
                grants = self.scheduler.release(worker.lease_id)
            except KeyError:
                grants = []
            for grant in grants:
                self._granted(grant.request_id, grant.allocation)
            del lease
        if previous == "actor" and worker.actor_id in self.actors:
            self._actor_process_died(self.actors[worker.actor_id])
        if not self.stopped.is_set():
            self._top_up_pool()

    # ------------------------------------------------------------------ actors
    def _on_create_actor(self, conn, message: P.CreateActor) -> None:
        key = (message.namespace, message.name)
        if message.name:
            existing = self.actors.get(self.named.get(key, b""))
            if existing is not None and existing.state != "dead":
                if message.get_if_exists:
                    self._reply(conn, message.request_id, existing.view())
                else:
                    self._reply(conn, message.request_id, error=[
                        "ValueError", f"an actor named {message.name!r} already exists in "
                                      f"namespace {message.namespace!r}; use get_actor() or "
                                      f"get_if_exists=True"])
                return
        spec_options = _spec_options(message.spec)
        actor = ActorRecord(message.actor_id, message.spec, message.demand, message.name,
                            message.namespace, message.detached, conn,
                            spec_options.get("max_restarts", 0))
        demand = ResourceSet.from_dict(message.demand)
        if not self.scheduler.can_ever_fit(demand):
            self._reply(conn, message.request_id, error=[
                "InfeasibleResourcesError",
                f"actor requested {demand.to_dict()} but the node has {self.total.to_dict()}"])
            return
        self.actors[actor.actor_id] = actor
        if message.name:
            self.named[key] = actor.actor_id
        self._reply(conn, message.request_id, actor.view())
        self._schedule_actor(actor)

    def _schedule_actor(self, actor: ActorRecord) -> None:
        request_id = ("actor", actor.actor_id, actor.restarts)
        actor.lease_id = request_id
        self.leases[request_id] = LeaseRecord(request_id, None, request_id)
        decision = self.scheduler.submit(LeaseRequest(request_id,
                                                      ResourceSet.from_dict(actor.demand)))
        if decision.outcome is Outcome.GRANTED:
            self._granted(request_id, decision.allocation)

    def _on_actor_ready(self, conn, message: P.ActorReady) -> None:
        actor = self.actors.get(message.actor_id)
        worker = conn.user_data
        if actor is None:
            return
        if message.error is not None:
            actor.death_cause = f"its __init__ raised:\n{message.error}"
            actor.no_restart = True
            self._set_dead(actor)
            if isinstance(worker, WorkerRecord):
                _kill(worker.pid)
            return
        actor.state = "alive"
        actor.address = worker.address
        actor.incarnation += 1
        self._notify(actor)

    def _notify(self, actor: ActorRecord) -> None:
        waiters, actor.waiters = actor.waiters, []
        for conn, request_id, known in waiters:
            if actor.state == "dead" or actor.incarnation > known:
                self._reply(conn, request_id, actor.view())
            else:
                actor.waiters.append((conn, request_id, known))

    def _on_wait_actor(self, conn, message: P.WaitActor) -> None:
        actor = self.actors.get(message.actor_id)
        if actor is None:
            self._reply(conn, message.request_id, list(P.ActorState(
                message.actor_id, "dead", None, 0, "no such actor on this cluster", b"")))
            return
        if actor.state == "dead" or (actor.state == "alive" and
                                     actor.incarnation > message.known_incarnation):
            self._reply(conn, message.request_id, actor.view())
        else:
            actor.waiters.append((conn, message.request_id, message.known_incarnation))

    def _on_get_actor(self, conn, message: P.GetActor) -> None:
        actor = self.actors.get(self.named.get((message.namespace, message.name), b""))
        if actor is None or actor.state == "dead":
            self._reply(conn, message.request_id, error=[
                "ValueError", f"no actor named {message.name!r} in namespace "
                              f"{message.namespace!r}"])
            return
        self._reply(conn, message.request_id, actor.view())

    def _on_kill_actor(self, conn, message: P.KillActor) -> None:
        actor = self.actors.get(message.actor_id)
        if actor is not None:
            self._kill_actor(actor, "it was killed with pyactor.kill()", message.no_restart)
        self._reply(conn, message.request_id, True)

    def _kill_actor(self, actor: ActorRecord, cause: str, no_restart: bool) -> None:
        if no_restart:
            actor.no_restart = True
            actor.death_cause = cause
            # The name is free as soon as kill() returns, not once the process is reaped.
            if self.named.get((actor.namespace, actor.name)) == actor.actor_id:
                del self.named[(actor.namespace, actor.name)]
        worker = self.workers.get(actor.worker_id) if actor.worker_id else None
        if worker is not None:
            _kill(worker.pid)  # its connection closes; _worker_died restarts or buries it
        elif no_restart:
            self._release_actor_lease(actor)
            self._set_dead(actor)

    def _actor_process_died(self, actor: ActorRecord) -> None:
        actor.worker_id = None
        actor.address = None
        self._release_actor_lease(actor)
        if actor.state == "dead":
            return
        can_restart = not actor.no_restart and (actor.max_restarts == -1 or
                                                actor.restarts < actor.max_restarts)
        if can_restart and not self.stopped.is_set():
            actor.restarts += 1
            actor.state = "restarting"
            self._schedule_actor(actor)
        else:
            if not actor.death_cause:
                actor.death_cause = "its process died unexpectedly" + (
                    f" and it was restarted {actor.restarts} times (max_restarts)"
                    if actor.restarts else "")
            self._set_dead(actor)

    def _release_actor_lease(self, actor: ActorRecord) -> None:
        lease_id = actor.lease_id
        if lease_id is None or lease_id not in self.leases:
            return
        del self.leases[lease_id]
        if lease_id in self.waiting_for_worker:
            self.waiting_for_worker.remove(lease_id)
        try:
            grants = self.scheduler.release(lease_id)
        except KeyError:
            grants = self.scheduler.cancel(lease_id)
        for grant in grants:
            self._granted(grant.request_id, grant.allocation)

    def _set_dead(self, actor: ActorRecord) -> None:
        actor.state = "dead"
        if self.named.get((actor.namespace, actor.name)) == actor.actor_id:
            del self.named[(actor.namespace, actor.name)]
        self._notify(actor)

    # ------------------------------------------------------------------ misc requests
    def _on_cancel_task(self, conn, message: P.CancelTask) -> None:
        worker = self.workers.get(message.worker_id)
        if worker is not None and message.force:
            _kill(worker.pid)

    def _on_free_objects(self, conn, message: P.FreeObjects) -> None:
        for object_id in message.object_ids:
            self.store.delete(object_id)

    def _on_cluster_info(self, conn, message: P.ClusterInfo) -> None:
        if message.what == "resources":
            value = self.total.to_dict()
        elif message.what == "available":
            value = self.scheduler.available()
        else:
            stats = self.store.stats()
            value = [{
                "NodeID": self.node_id.hex(), "Alive": True,
                "NodeManagerAddress": self.config.host, "NodeManagerPort": self.server.port,
                "Resources": self.total.to_dict(), "Available": self.scheduler.available(),
                "ObjectStore": dataclasses.asdict(stats),
                "Workers": len(self.workers),
                "Actors": sum(1 for a in self.actors.values() if a.state != "dead"),
            }]
        self._reply(conn, message.request_id, value)

    def _on_log(self, conn, message: P.Log) -> None:
        # Checked here: a bad Log would otherwise break every driver's connection, not its own.
        if not (type(message.source) is str and message.stream in ("stdout", "stderr")
                and type(message.lines) is list
                and all(type(line) is str for line in message.lines)):
            raise P.ProtocolError("a Log needs a source, 'stdout' or 'stderr', and lines of text")
        encoded = P.encode(message)
        for driver in self.drivers:
            if not driver.closed:
                driver.send(encoded)

    def _on_shutdown(self, conn, message: P.Shutdown) -> None:
        self._reply(conn, message.request_id, True)
        asyncio.get_running_loop().call_soon(self.stop)


def _spec_options(spec: bytes) -> dict:
    import pickle
    return pickle.loads(spec).get("options", {})


def _kill(pid: int) -> None:
    if pid <= 0:  # not started yet: never signal a process group
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def remove_stale_segments() -> None:
    """Remove store segments left by nodes that died without cleaning up (SIGKILL)."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == "pyactor" and parts[1].isdigit():
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                try:
                    os.unlink(os.path.join("/dev/shm", name))
                except OSError:
                    pass
            except PermissionError:
                pass


def serve(config: NodeConfig, fork_server: ForkServer) -> None:
    """Run the node until it is stopped (called by node_main once the fork server exists)."""
    logging.basicConfig(level=os.environ.get("PYACTOR_LOG_LEVEL", "WARNING"),
                        format="[pyactor node %(process)d] %(levelname)s %(message)s")
    remove_stale_segments()

    import uvloop
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    node = Node(config, fork_server)

    async def run():
        try:
            await node.start()
        except BaseException:
            node.stop()
            raise
        sys.stdout.write(json.dumps({"port": node.server.port, "node_id": node.node_id.hex(),
                                     "store_name": node.store_name}) + "\n")
        sys.stdout.flush()
        os.dup2(2, 1)  # later prints must not fill the pipe nobody reads
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, node.stop)
        if config.embedded:
            watch_lifeline(loop, node)
        await node.stopped.wait()

    try:
        loop.run_until_complete(run())
    finally:
        node.stop()


def watch_lifeline(loop, node: Node) -> None:
    """Stop when stdin (the driver's end of the pipe) closes."""
    def readable():
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            node.stop()
    loop.add_reader(0, readable)

