"""The node daemon: one per host, owner of the host's store, workers and resources.

The node hands out workers (leases) to the processes that submit tasks, hosts actors (starting,
restarting and killing their processes), answers questions about resources, and forwards worker
output to drivers. It is never on the path of an individual task: once a caller holds a lease it
talks to the worker directly (see runtime.py for the picture).

    driver/worker runtimes ==TCP==> Node --pipe--> fork server --fork--> worker processes
                                     |                                     |
                                     +-- creates/destroys the store <------+ (every process maps it)

The process around it (start-up, the lifeline pipe to the driver, exit) is node_main.py: the
driver runs `python -m pyactor._private.node_main`, writes the config (with the session token)
on its stdin and keeps that pipe open; when the pipe closes (the driver exited, even by
SIGKILL) the node stops everything and removes the store's segment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import pickle
import shutil
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.actor_directory import ActorDirectory
from pyactor._private.cluster import Membership, NodeInfo
from pyactor._private.ids import new_node_id, new_worker_id
from pyactor._private.metrics import to_snapshot
from pyactor._private.metrics_export import NodeMetrics, start_endpoint
from pyactor._private.object_transfer import ObjectTransfers
from pyactor._private.placement_groups import (PlacementGroupTable, bundle_offer,
                                               is_any_group_work, is_group_work)
from pyactor._private.rejections import RejectionReporter, RejectionTally, log_rejections
from pyactor._private.resources import ResourceSet
from pyactor._private.spilling import Spiller, default_spill_root, remove_stale_spill_dirs
from pyactor._private.scheduler import (ClusterScheduler, LeaseRequest, LocalScheduler,
                                        NodeView, Outcome, Placement)
from pyactor._private.state_service import NodeStateService
from pyactor._private.worker_pool import ForkServer
from pyactor.exceptions import ObjectLostError, ObjectStoreError, ObjectStoreFullError

logger = logging.getLogger("pyactor.node")
# How often the node's log gets a line about connections that failed the handshake (on its own
# ports and those of its workers and drivers), at most.
REJECTION_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class NodeConfig:
    token_hex: str
    host: str = "127.0.0.1"
    port: int = 0
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict = field(default_factory=dict)
    object_store_memory: int | None = None
    spill_dir: str | None = None  # where spilled objects go (a folder per node inside it)
    spill_limit_bytes: int | None = None  # most bytes on disk at once; None: up to 95% full
    embedded: bool = True  # stops when its stdin closes
    head_address: str | None = None  # HOST:PORT of the head to join; None for a head
    # Port of the Prometheus endpoint (0: any free one); None: $PYACTOR_METRICS_EXPORT_PORT
    # when set, else no endpoint (a pa.init() node does not pay for one unless asked).
    metrics_port: int | None = None


def detect_gpu_ids() -> list[int]:
    """The device ids of the GPUs this node may use, without importing a CUDA library (that
    takes seconds): those in the node's own CUDA_VISIBLE_DEVICES when set, else every GPU the
    driver lists. Tasks get these physical ids in their CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        if "-1" in ids:
            ids = ids[:ids.index("-1")]
        if all(d.isdigit() for d in ids):
            return [int(d) for d in ids]
        return list(range(len(ids)))  # UUIDs: fall back to positions
    try:
        return list(range(len(os.listdir("/proc/driver/nvidia/gpus"))))
    except OSError:
        return []


@dataclass
class WorkerRecord:
    worker_id: bytes
    pid: int
    conn: Any = None
    address: list | None = None
    state: str = "starting"  # starting -> idle -> leased / actor -> dead
    runtime_address: list | None = None  # its runtime (cancellation); `address` takes tasks
    lease_id: Any = None
    actor_id: bytes | None = None
    started_at: float = 0.0  # time.monotonic() of the fork request
    env_key: str = ""  # the runtime_env it runs in ("" = none); it serves only work of that env


# A worker that has not registered this long after its fork is taken for lost (stuck or dead
# before it could register) and replaced; one that died is noticed at the next check.
WORKER_REGISTER_TIMEOUT_S = 30.0
WORKER_CHECK_S = 1.0


@dataclass
class LeaseRecord:
    lease_id: int
    conn: Any  # the runtime holding the lease
    request_id: int
    worker_id: bytes | None = None
    gpu_ids: tuple = ()
    blocked: bool = False
    actor: tuple | None = None  # (actor_id, spec, restarts) when the lease hosts an actor
    demand: ResourceSet | None = None  # what it asked for (a placement group's work names it)
    runtime_env: Any = None  # the wire env (runtime_env.py) its worker must run in

    @property
    def env_key(self) -> str:
        return self.runtime_env["key"] if self.runtime_env else ""


class Node:
    def __init__(self, config: NodeConfig, fork_server: ForkServer | None = None):
        self.config = config
        self.token = bytes.fromhex(config.token_hex)
        self.node_id = new_node_id()
        self.is_head = config.head_address is None
        num_cpus = config.num_cpus if config.num_cpus is not None else os.cpu_count() or 1
        gpu_ids = detect_gpu_ids()
        num_gpus = config.num_gpus if config.num_gpus is not None else len(gpu_ids)
        if len(gpu_ids) < num_gpus:  # asked for more than we can see: number them from 0
            gpu_ids = list(range(int(num_gpus)))
        total = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}),
                 **(config.resources or {})}
        self.total = ResourceSet.from_dict(total)
        self.scheduler = LocalScheduler(self.total, gpu_ids[:int(num_gpus)])
        self.placer = ClusterScheduler()
        self.pool_size = max(1, int(num_cpus))
        self.fork_server = fork_server
        self.store = None
        self.server: transport.Server | None = None
        self.membership: Membership | None = None
        self.transfers: ObjectTransfers | None = None
        self.spiller: Spiller | None = None
        self.directory: ActorDirectory | None = None  # the head's actor table
        self.groups: PlacementGroupTable | None = None  # the head's placement groups
        # Placement-group bundles reserved (or waiting to be) here: lease key -> resources; a
        # bundle's key is ("bundle", pg_id, index). `offered`: those whose resources are offered.
        self.bundles: dict[tuple, ResourceSet] = {}
        self.offered: set[tuple] = set()
        self.workers: dict[bytes, WorkerRecord] = {}
        self.idle: dict[str, deque[bytes]] = {"": deque()}  # runtime_env key -> idle workers
        self._runtime_env_dir: str | None = None  # packages unpacked here, by content hash
        self.leases: dict[Any, LeaseRecord] = {}
        # Granted leases waiting for a worker, by the runtime_env key their worker must have.
        self.waiting_for_worker: dict[str, deque] = {"": deque()}
        self.hosted: dict[bytes, tuple] = {}  # actor_id -> its lease key, on this node
        self.drivers: set = set()
        self.clients: dict[Any, str] = {}
        self.client_address: dict[Any, list] = {}
        self.client_pid: dict[Any, int] = {}
        self.state = NodeStateService(self)  # answers StateQuery (pyactor/util/state.py)
        self.log_dir: str | None = None  # workers' output files (worker_pool.py)
        self._node_conns: dict[bytes, asyncio.Future] = {}
        self._forwarded: dict[int, tuple] = {}  # head request id -> (conn, original id)
        self._forward_ids = itertools.count(1)
        self._known_alive: frozenset = frozenset()
        self._lease_ids = itertools.count(1)
        self.stopped = asyncio.Event()
        self.handlers = {
            P.Register: self._on_register, P.RequestLease: self._on_request_lease,
            P.ReturnLease: self._on_return_lease, P.WorkerBlocked: self._on_worker_blocked,
            P.CreateActor: self._on_actor_request, P.GetActor: self._on_actor_request,
            P.WaitActor: self._on_actor_request, P.KillActor: self._on_actor_request,
            P.ActorReady: self._on_actor_ready, P.HostActor: self._on_host_actor,
            P.KillActorProcess: self._on_kill_actor_process,
            P.ActorHosted: self._on_actor_hosted, P.ActorProcessDied: self._on_actor_died,
            P.OwnerExited: self._on_owner_exited, P.Reply: self._on_reply,
            P.CancelTask: self._on_cancel_task, P.FreeObjects: self._on_free_objects,
            P.ClusterInfo: self._on_cluster_info, P.Log: self._on_log,
            P.Shutdown: self._on_shutdown, P.Fetch: self._on_fetch, P.MakeRoom: self._on_make_room,
            P.PullObject: self._on_pull, P.ObjectChunk: self._on_chunk,
            P.JoinCluster: self._on_join, P.Heartbeat: self._on_heartbeat,
            P.ViewDelta: self._on_view_delta, P.ViewSnapshot: self._on_view_snapshot,
            P.PullView: self._on_pull_view, P.ConnectionsRejected: self._on_connections_rejected,
            P.CreatePlacementGroup: self._on_group_request,
            P.RemovePlacementGroup: self._on_group_request,
            P.PlacementGroupInfo: self._on_group_request, P.LocateBundle: self._on_group_request,
            P.ReserveBundle: self._on_reserve_bundle, P.ReturnBundles: self._on_return_bundles,
            P.BundleReserved: self._on_bundle_reserved, P.ActorDeferred: self._on_actor_deferred,
            P.StateQuery: lambda conn, message: self.state.on_query(conn, message),
        }
        # A node of `pyactor start` logs to its own file; one started by pa.init() shares the
        # program's stderr, the user's output: there the summary needs PYACTOR_LOG_LEVEL=INFO.
        self.rejections: RejectionReporter | None = None
        self.metrics = NodeMetrics(self)
        self.metrics_endpoint = None
        self.metrics_url = ""  # the endpoint's URL, or why there is none, for `pyactor status`

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from pyactor._private.store import ObjectStore, default_capacity_bytes
        capacity = self.config.object_store_memory or default_capacity_bytes()
        self.store_name = f"pyactor-{os.getpid()}-{self.node_id[:4].hex()}"
        self.store = ObjectStore.create(self.store_name, capacity)
        spill_root = self.config.spill_dir or default_spill_root()
        remove_stale_spill_dirs(spill_root)
        self.spiller = Spiller(self.store, spill_root, self.config.spill_limit_bytes)
        self.transfers = ObjectTransfers(self.store, self._connect_node, self.spiller)
        from pyactor._private import session
        self.log_dir = os.path.join(session.session_dir(), "logs",
                                    f"node-{os.getpid()}-{self.node_id[:4].hex()}")
        try:
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        except OSError as error:
            logger.warning("workers' output goes to no log file: %s", error)
            self.log_dir = None
        self.rejections = RejectionReporter(
            asyncio.get_running_loop(), REJECTION_LOG_INTERVAL_S,
            log_rejections(logger, logging.INFO if self.config.embedded else logging.WARNING))
        self.server = await transport.serve(self.config.host, self.config.port, self.token,
                                            self._on_message, on_close=self._on_closed,
                                            on_reject=self.rejections.add)
        self.address = [self.config.host, self.server.port]
        metrics_port = self.config.metrics_port
        if metrics_port is None and os.environ.get("PYACTOR_METRICS_EXPORT_PORT"):
            metrics_port = int(os.environ["PYACTOR_METRICS_EXPORT_PORT"])
        if metrics_port is not None:
            self.metrics_endpoint, self.metrics_url = start_endpoint(self, self.config.host,
                                                                     metrics_port)
        if self.is_head:
            self.directory = ActorDirectory(nodes=self._node_views, host=self._host_on,
                                            kill_process=self._kill_actor_on, reply=self._reply,
                                            local_node_id=self.node_id,
                                            node_view=self._node_view)
            self.groups = PlacementGroupTable(
                nodes=self._node_views, address_of=lambda n: self.membership.address_of(n),
                reserve=self._reserve_on, release=self._release_on, reply=self._reply,
                on_removed=self.directory.on_group_removed)
            self.directory.groups = self.groups
        self.membership = Membership(
            self.node_id, self.address, self.token, head_address=self.config.head_address,
            local_status=self._local_status, on_message=self._on_message,
            on_node_dead=self._on_node_dead, on_view_changed=self._on_view_changed,
            on_head_lost=lambda reason: asyncio.get_running_loop().call_soon(self.stop))
        await self.membership.start()
        for _ in range(self.pool_size):
            self._start_worker()  # in the background: the node is ready before they are
        self._watcher = asyncio.get_running_loop().create_task(self._watch_starting_workers())

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.rejections is not None:
            self.rejections.flush()  # what was counted since the last line
        if self.membership is not None:
            self.membership.stop()
        for worker in self.workers.values():
            _kill(worker.pid)
        if self.fork_server is not None:
            self.fork_server.stop()
        if self.server is not None:
            self.server.close()
        if self.spiller is not None:
            self.spiller.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        if self.store is not None:
            self.store.destroy()
            self.store = None
        if self._runtime_env_dir is not None:
            shutil.rmtree(self._runtime_env_dir, ignore_errors=True)
        if self.config.embedded and self.log_dir:
            # A node of pa.init() lives as long as its program: its workers' logs go with it
            # (`pyactor start` nodes keep theirs for `pyactor logs`).
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _start_worker(self, runtime_env: dict | None = None) -> WorkerRecord:
        """Ask the fork server for a worker (of a runtime_env: with its env vars, told where
        its packages are); the pid arrives from a thread (the first fork waits for the fork
        server's imports, which must not block this loop)."""
        worker_id = new_worker_id()
        record = WorkerRecord(worker_id, 0, started_at=time.monotonic(),
                              env_key=runtime_env["key"] if runtime_env else "")
        self.workers[worker_id] = record
        env = {"PYACTOR_WORKER_LOG_DIR": self.log_dir} if self.log_dir else {}
        if runtime_env:
            if self._runtime_env_dir is None:
                self._runtime_env_dir = tempfile.mkdtemp(prefix="pyactor-runtime-env-")
            env.update({**runtime_env["env_vars"], "PYACTOR_RUNTIME_ENV": json.dumps(runtime_env),
                        "PYACTOR_RUNTIME_ENV_DIR": self._runtime_env_dir})
        loop = asyncio.get_running_loop()
        spawn = loop.run_in_executor(None, self.fork_server.spawn, worker_id, self.config.host,
                                     self.server.port, env)

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

    async def _watch_starting_workers(self) -> None:
        """Workers that never register would hold their place in the pool for good: a lease
        waiting for a worker would then wait forever (a worker that dies before it registers
        has no connection whose closing we would notice)."""
        while not self.stopped.is_set():
            await asyncio.sleep(WORKER_CHECK_S)
            if self.store is not None:
                # Pins and client slots of processes that died (killed workers, drivers).
                self.store.reap_dead_clients()
            now = time.monotonic()
            for worker in list(self.workers.values()):
                if worker.state != "starting" or worker.pid <= 0:
                    continue
                gone = not _process_alive(worker.pid)
                if gone or now - worker.started_at > WORKER_REGISTER_TIMEOUT_S:
                    logger.warning("worker %d %s before registering: replacing it", worker.pid,
                                   "died" if gone else "did not register in time")
                    worker.state = "dead"
                    self.workers.pop(worker.worker_id, None)
                    _kill(worker.pid)
                    self._top_up_pool()
                    self._start_workers_for_waiting()

    # ------------------------------------------------------------------ messages
    def _on_message(self, conn, raw) -> None:
        message = P.decode(raw)
        handler = self.handlers.get(type(message))
        if handler is None:
            raise P.ProtocolError(f"the node does not take {type(message).__name__}")
        handler(conn, message)

    def _reply(self, conn, request_id: int, value=None, error=None) -> None:
        if conn is None:  # the head answering itself (a forwarded request's origin is local)
            return
        if not conn.closed:
            conn.send(P.encode(P.Reply(request_id, value, error)))

    def _on_register(self, conn, message: P.Register) -> None:
        # The node later signals `pid` and hands `address` to others: refuse nonsense here.
        if message.kind not in ("driver", "worker", "cli") or type(message.pid) is not int \
                or message.pid <= 0 or type(message.address) is not list \
                or len(message.address) != 2 or type(message.worker_id) is not bytes:
            raise P.ProtocolError(f"malformed Register: {message!r}"[:200])
        self.clients[conn] = message.kind
        self.client_address[conn] = message.address
        self.client_pid[conn] = message.pid
        if message.kind == "driver":
            self.drivers.add(conn)
        elif message.kind == "worker":
            worker = self.workers.get(message.worker_id)
            if worker is None:  # started by someone else: adopt it
                worker = self.workers[message.worker_id] = WorkerRecord(message.worker_id,
                                                                        message.pid)
            worker.conn = conn
            worker.address = message.task_address or message.address
            worker.runtime_address = message.address
            conn.user_data = worker
            self._worker_idle(worker)
        self._reply(conn, message.request_id, {
            "node_id": self.node_id, "store_name": self.store_name,
            "resources": self.total.to_dict(), "nodes": self.membership.wire_view()})

    def _on_closed(self, conn, reason) -> None:
        kind = self.clients.pop(conn, None)
        address = self.client_address.pop(conn, None)
        self.client_pid.pop(conn, None)
        self.drivers.discard(conn)
        self.metrics.on_closed(conn)
        if kind == "worker" and isinstance(conn.user_data, WorkerRecord):
            self._worker_died(conn.user_data, reason)
        for lease in [l for l in self.leases.values() if l.conn is conn]:
            self._end_lease(lease.lease_id, worker_exiting=False)
        if isinstance(conn.user_data, NodeInfo):
            self.membership.on_member_closed(conn)
        if self.transfers is not None:
            self.transfers.on_connection_closed(conn)
        for key, future in list(self._node_conns.items()):
            if future.done() and not future.exception() and future.result() is conn:
                del self._node_conns[key]
        if self.directory is not None:
            self.directory.on_requester_closed(conn)
            self.groups.on_requester_closed(conn)
        if kind in ("driver", "worker") and address is not None:
            self._to_directory(P.OwnerExited(address))

    # ------------------------------------------------------------------ workers and leases
    def _worker_idle(self, worker: WorkerRecord) -> None:
        worker.state = "idle"
        worker.lease_id = None
        self.idle.setdefault(worker.env_key, deque()).append(worker.worker_id)
        self._match_workers()
        if worker.env_key and worker.state == "idle":
            self._trim_env_workers()

    def _take_idle_worker(self, env_key: str = "") -> WorkerRecord | None:
        idle = self.idle.get(env_key)
        while idle:
            worker = self.workers.get(idle.popleft())
            if worker is not None and worker.state == "idle":
                return worker
        return None

    def _match_workers(self) -> None:
        for key, waiting in self.waiting_for_worker.items():
            while waiting:
                worker = self._take_idle_worker(key)
                if worker is None:
                    break
                self._bind(waiting.popleft(), worker)

    def _start_workers_for_waiting(self) -> None:
        """Fork workers for leases that wait for one, counting those already starting for the
        same runtime_env (the pool starts ahead of demand)."""
        needed = {key: len(waiting) for key, waiting in self.waiting_for_worker.items()
                  if waiting}
        for worker in self.workers.values():
            if worker.state == "starting" and worker.env_key in needed:
                needed[worker.env_key] -= 1
        for key, count in needed.items():
            lease = self.leases.get(self.waiting_for_worker[key][0])
            for _ in range(count):
                self._start_worker(lease.runtime_env if lease is not None else None)

    def _trim_env_workers(self) -> None:
        """Workers of runtime_envs start on demand: keep at most pool_size of them idle,
        stopping those of the oldest environments first (they may never be asked for again)."""
        while True:
            idle_env = [(key, queue) for key, queue in self.idle.items() if key and queue]
            if sum(len(queue) for _, queue in idle_env) <= self.pool_size:
                return
            key, queue = idle_env[0]
            worker = self._take_idle_worker(key)
            if not queue:
                del self.idle[key]
            if worker is not None:
                worker.state = "dead"
                self.workers.pop(worker.worker_id, None)
                _kill(worker.pid)

    def _on_request_lease(self, conn, message: P.RequestLease) -> None:
        demand = ResourceSet.from_dict(message.demand)
        if message.spillable and not demand.fits_in(self.scheduler.available_resources()):
            target = self._spill_target(demand)
            if target is not None:
                self._reply(conn, message.request_id, ["spill", target.node_id,
                                                       target.address])
                return
        lease_id = next(self._lease_ids)
        decision = self.scheduler.submit(LeaseRequest(lease_id, demand))
        if decision.outcome is Outcome.INFEASIBLE:
            reason = decision.reason
            if len(self.membership.alive_nodes()) > 1:
                reason = self.placer.pick_node_for_task(demand, self._node_views()).reason \
                    or reason
            self._reply(conn, message.request_id, error=["InfeasibleResourcesError", reason])
            return
        self.leases[lease_id] = LeaseRecord(lease_id, conn, message.request_id, demand=demand,
                                            runtime_env=message.runtime_env or None)
        if decision.outcome is Outcome.GRANTED:
            self._granted(lease_id, decision.allocation)

    def _spill_target(self, demand: ResourceSet) -> NodeInfo | None:
        """Another node to send a lease request to when this one is busy or too small."""
        self.membership.want_load()  # the others' free figures: sent while this node spills
        nodes = self._node_views()
        if len(nodes) < 2:
            return None
        decision = self.placer.pick_node_for_task(demand, nodes)
        if decision.placement is Placement.INFEASIBLE or decision.node_id is None:
            return None
        node_id = bytes.fromhex(decision.node_id)
        if node_id == self.node_id:
            return None
        target = self.membership.nodes.get(node_id)
        if target is not None and decision.placement is Placement.SCHEDULE:
            # Count this spill against the target until its next heartbeat says otherwise, so
            # a burst of requests spreads over the nodes with room instead of all going to one.
            available = ResourceSet.from_dict(target.available)
            if demand.fits_in(available):
                target.available = (available - demand).to_dict()
        return target

    def _granted(self, lease_id, allocation) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            if lease_id in self.bundles:
                self._bundle_granted(lease_id)
            return
        lease.gpu_ids = allocation.gpu_ids
        key = lease.env_key
        worker = self._take_idle_worker(key)
        if worker is None:
            waiting = self.waiting_for_worker.setdefault(key, deque())
            waiting.append(lease_id)
            # Workers still starting (the pool started ahead of demand) will serve the queue:
            # fork another only when they are too few.
            starting = sum(1 for w in self.workers.values()
                           if w.state == "starting" and w.env_key == key)
            if starting < len(waiting):
                self._start_worker(lease.runtime_env)
            return
        self._bind(lease_id, worker)

    def _bind(self, lease_id, worker: WorkerRecord) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            self._worker_idle(worker)
            return
        lease.worker_id = worker.worker_id
        worker.lease_id = lease_id
        if lease.actor is not None:  # a lease to host an actor: the worker becomes it
            actor_id, spec, restarts = lease.actor
            worker.state = "actor"
            worker.actor_id = actor_id
            worker.conn.send(P.encode(P.StartActor(actor_id, spec, list(lease.gpu_ids),
                                                   restarts)))
            self._top_up_pool()
            return
        worker.state = "leased"
        self._reply(lease.conn, lease.request_id, [lease_id, worker.worker_id, worker.address,
                                                   list(lease.gpu_ids), worker.runtime_address])

    def _top_up_pool(self) -> None:
        """Actors take workers for good: keep enough idle ones for tasks."""
        spare = sum(1 for w in self.workers.values()
                    if w.state in ("idle", "starting") and not w.env_key)
        if spare < self.pool_size:
            self._start_worker()

    def _on_return_lease(self, conn, message: P.ReturnLease) -> None:
        self._end_lease(message.lease_id, message.worker_exiting)

    def _release_lease(self, lease_id) -> LeaseRecord | None:
        """Forget a lease and give its resources to whoever waits for them."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return None
        waiting = self.waiting_for_worker.get(lease.env_key)
        if waiting is not None and lease_id in waiting:
            waiting.remove(lease_id)
        try:
            grants = self.scheduler.release(lease_id)
        except KeyError:
            grants = self.scheduler.cancel(lease_id)
        for grant in grants:
            self._granted(grant.request_id, grant.allocation)
        return lease

    def _end_lease(self, lease_id, worker_exiting: bool) -> None:
        lease = self._release_lease(lease_id)
        if lease is None:
            return
        worker = self.workers.get(lease.worker_id) if lease.worker_id else None
        if worker is not None and worker.state == "leased":
            if worker_exiting:
                _kill(worker.pid)
            else:
                self._worker_idle(worker)

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
        if worker.lease_id is not None:
            self._release_lease(worker.lease_id)
        if previous == "actor" and self.hosted.pop(worker.actor_id, None) is not None:
            self._to_directory(P.ActorProcessDied(worker.actor_id, ""))
        if not self.stopped.is_set():
            self._top_up_pool()

    # ------------------------------------------------------------------ hosting actors
    def _on_host_actor(self, conn, message: P.HostActor) -> None:
        self.host_actor(message.actor_id, message.spec, message.demand, message.restarts)

    def host_actor(self, actor_id: bytes, spec: bytes, demand: dict, restarts: int) -> None:
        """Lease a worker for the actor here; when granted the worker runs its __init__."""
        key = ("actor", actor_id, restarts)
        demand = ResourceSet.from_dict(demand)
        if not demand.fits_in(self.scheduler.available_resources()) and \
                not is_any_group_work(demand):
            # The head placed it from an old view of this node: it goes back to be placed
            # elsewhere rather than wait here while other nodes have room.
            self._to_directory(P.ActorDeferred(actor_id, restarts))
            return
        self.hosted[actor_id] = key
        lease = LeaseRecord(key, None, 0, demand=demand,
                            runtime_env=pickle.loads(spec).get("runtime_env"))
        lease.actor = (actor_id, spec, restarts)
        self.leases[key] = lease
        decision = self.scheduler.submit(LeaseRequest(key, demand))
        if decision.outcome is Outcome.GRANTED:
            self._granted(key, decision.allocation)
        elif decision.outcome is Outcome.INFEASIBLE:
            self.leases.pop(key, None)
            self.hosted.pop(actor_id, None)
            self._to_directory(P.ActorProcessDied(actor_id, decision.reason))

    def _on_actor_ready(self, conn, message: P.ActorReady) -> None:
        worker = conn.user_data
        if not isinstance(worker, WorkerRecord) or worker.actor_id != message.actor_id:
            return
        if message.error is not None:
            self.hosted.pop(message.actor_id, None)
            _kill(worker.pid)
        self._to_directory(P.ActorHosted(message.actor_id, worker.address, message.error,
                                         worker.runtime_address))

    def _on_kill_actor_process(self, conn, message: P.KillActorProcess) -> None:
        self.kill_actor_process(message.actor_id)

    def kill_actor_process(self, actor_id: bytes) -> None:
        for worker in self.workers.values():
            if worker.actor_id == actor_id and worker.state == "actor":
                _kill(worker.pid)  # its connection closes: _worker_died reports the death
                return
        key = self.hosted.pop(actor_id, None)  # not started yet: drop its lease
        if key is not None:
            self._release_lease(key)
        self._to_directory(P.ActorProcessDied(actor_id, "killed before it started"))

    # ------------------------------------------------------------------ the head's directory
    def _on_actor_request(self, conn, message) -> None:
        """Create/Get/Wait/Kill actor: answered by the head's directory; others forward."""
        if self.directory is None:
            self._forward_to_head(conn, message)
            return
        handler = {P.CreateActor: self.directory.create, P.GetActor: self.directory.get,
                   P.WaitActor: self.directory.wait, P.KillActor: self.directory.kill}
        handler[type(message)](conn, message)

    def _forward_to_head(self, conn, message) -> None:
        head = self.membership.head_conn
        if head is None or head.closed:
            self._reply(conn, message.request_id, error=[
                "PyActorError", "this node lost its connection to the cluster's head"])
            return
        forward_id = next(self._forward_ids)
        self._forwarded[forward_id] = (conn, message.request_id)
        head.send(P.encode(message._replace(request_id=forward_id)))

    def _on_reply(self, conn, message: P.Reply) -> None:
        if self.metrics.on_reply(message) or self.state.on_reply(message):
            return
        origin = self._forwarded.pop(message.request_id, None)
        if origin is not None:
            self._reply(origin[0], origin[1], message.value, message.error)

    def _to_directory(self, message) -> None:
        """Report an actor event to the head's directory (in-process on the head)."""
        if self.directory is not None:
            if isinstance(message, P.ActorHosted):
                self.directory.on_hosted(message.actor_id, message.address, message.error,
                                         message.control_address)
            elif isinstance(message, P.ActorProcessDied):
                self.directory.on_process_died(message.actor_id, message.cause)
            elif isinstance(message, P.ActorDeferred):
                self.directory.on_deferred(message.actor_id, message.restarts)
            elif isinstance(message, P.OwnerExited):
                self.directory.on_owner_exited(tuple(message.owner))
                self.groups.on_owner_exited(tuple(message.owner))
            return
        head = self.membership.head_conn if self.membership else None
        if head is not None and not head.closed:
            head.send(P.encode(message))

    def _on_actor_hosted(self, conn, message: P.ActorHosted) -> None:
        self._to_directory(message)

    def _on_actor_died(self, conn, message: P.ActorProcessDied) -> None:
        self._to_directory(message)

    def _on_owner_exited(self, conn, message: P.OwnerExited) -> None:
        self._to_directory(message)

    def _on_actor_deferred(self, conn, message: P.ActorDeferred) -> None:
        self._to_directory(message)

    def _host_on(self, node_id: bytes, actor) -> None:
        if node_id == self.node_id:
            self.host_actor(actor.actor_id, actor.spec, actor.demand, actor.restarts)
            return
        info = self.membership.nodes.get(node_id)
        if info is None or info.conn is None or info.conn.closed:
            self.directory.on_process_died(actor.actor_id, "its node is unreachable")
            return
        info.conn.send(P.encode(P.HostActor(actor.actor_id, actor.spec, actor.demand,
                                            actor.restarts)))

    def _kill_actor_on(self, node_id: bytes, actor_id: bytes) -> None:
        if node_id == self.node_id:
            self.kill_actor_process(actor_id)
            return
        info = self.membership.nodes.get(node_id)
        if info is None or info.conn is None or info.conn.closed:
            self.directory.on_process_died(actor_id, "its node is unreachable")
            return
        info.conn.send(P.encode(P.KillActorProcess(actor_id)))

    # ------------------------------------------------------------------ placement groups
    def _on_group_request(self, conn, message) -> None:
        """Create/Remove/Info/Locate: answered by the head's table; other nodes forward."""
        if self.groups is None:
            self._forward_to_head(conn, message)
            return
        handler = {P.CreatePlacementGroup: self.groups.create,
                   P.RemovePlacementGroup: self.groups.remove,
                   P.PlacementGroupInfo: self.groups.info, P.LocateBundle: self.groups.locate}
        handler[type(message)](conn, message)

    def _reserve_on(self, node_id: bytes, pg_id: bytes, index: int, resources: dict) -> None:
        if node_id == self.node_id:
            self.reserve_bundle(pg_id, index, resources)
            return
        info = self.membership.nodes.get(node_id)
        if info is None or info.conn is None or info.conn.closed:
            self.groups.on_reserved(pg_id, index, node_id, "its node is unreachable")
            return
        info.conn.send(P.encode(P.ReserveBundle(pg_id, index, resources)))
        # Count it against the node until its next heartbeat says otherwise, so groups created
        # right after this one are not placed on resources this one took.
        available, demand = ResourceSet.from_dict(info.available), ResourceSet.from_dict(resources)
        if demand.fits_in(available):
            info.available = (available - demand).to_dict()

    def _release_on(self, node_id: bytes, pg_id: bytes) -> None:
        if node_id == self.node_id:
            self.return_bundles(pg_id)
            return
        info = self.membership.nodes.get(node_id)
        if info is not None and info.conn is not None and not info.conn.closed:
            info.conn.send(P.encode(P.ReturnBundles(pg_id)))

    def _on_reserve_bundle(self, conn, message: P.ReserveBundle) -> None:
        self.reserve_bundle(message.pg_id, message.index, message.resources)

    def _on_return_bundles(self, conn, message: P.ReturnBundles) -> None:
        self.return_bundles(message.pg_id)

    def _on_bundle_reserved(self, conn, message: P.BundleReserved) -> None:
        if self.groups is None:
            raise P.ProtocolError("only the head takes BundleReserved")
        self.groups.on_reserved(message.pg_id, message.index, message.node_id, message.error)

    def _report_bundle(self, pg_id: bytes, index: int, error) -> None:
        if self.groups is not None:
            self.groups.on_reserved(pg_id, index, self.node_id, error)
            return
        head = self.membership.head_conn
        if head is not None and not head.closed:
            head.send(P.encode(P.BundleReserved(pg_id, index, self.node_id, error)))

    def reserve_bundle(self, pg_id: bytes, index: int, resources: dict) -> None:
        """Lease the bundle's resources here for good; once granted, offer them under the
        group's names (placement_groups.py). A busy node grants it when resources free up."""
        key = ("bundle", pg_id, index)
        if key in self.bundles:
            return
        demand = ResourceSet.from_dict(resources)
        self.bundles[key] = demand
        decision = self.scheduler.submit(LeaseRequest(key, demand))
        if decision.outcome is Outcome.GRANTED:
            self._bundle_granted(key)
        elif decision.outcome is Outcome.INFEASIBLE:
            del self.bundles[key]
            self._report_bundle(pg_id, index, decision.reason)

    def _bundle_granted(self, key: tuple) -> None:
        _, pg_id, index = key
        self.offered.add(key)
        grants = self.scheduler.add_resources(bundle_offer(self.bundles[key], pg_id.hex(), index))
        self._report_bundle(pg_id, index, None)
        for grant in grants:
            self._granted(grant.request_id, grant.allocation)

    def return_bundles(self, pg_id: bytes) -> None:
        """The group was removed: kill the work running in it here, fail what waits for it,
        take its resources off the node and give the bundles' resources back."""
        keys = [key for key in self.bundles if key[1] == pg_id]
        if not keys:
            return
        pg_hex = pg_id.hex()
        # Waiting ones first: ending a running one frees resources a waiting one would take.
        for lease in sorted((l for l in self.leases.values()
                             if l.demand is not None and is_group_work(l.demand, pg_hex)),
                            key=lambda l: l.worker_id is not None):
            self._end_group_lease(lease)
        grants = []
        for key in keys:
            resources = self.bundles.pop(key)
            if key in self.offered:
                self.offered.discard(key)
                dropped, more = self.scheduler.remove_resources(
                    bundle_offer(resources, pg_hex, key[2]))
                assert not dropped, dropped  # its leases were all ended above
                grants += more
                grants += self.scheduler.release(key)
            else:
                grants += self.scheduler.cancel(key)
        for grant in grants:
            self._granted(grant.request_id, grant.allocation)

    def _end_group_lease(self, lease: LeaseRecord) -> None:
        worker = self.workers.get(lease.worker_id) if lease.worker_id else None
        self._release_lease(lease.lease_id)
        if lease.actor is not None:
            actor_id = lease.actor[0]
            if self.hosted.get(actor_id) == lease.lease_id:
                del self.hosted[actor_id]
                self._to_directory(P.ActorProcessDied(actor_id, "its placement group was "
                                                                "removed"))
        elif worker is None:  # still waiting for a grant or a worker: its owner learns why
            self._reply(lease.conn, lease.request_id, error=[
                "PlacementGroupRemovedError", "the placement group this task was scheduled "
                                              "into was removed"])
        if worker is not None:
            _kill(worker.pid)  # its connection's close tells the owner (tasks) or nobody

    # ------------------------------------------------------------------ cluster
    def _local_status(self) -> NodeInfo:
        stats = self.store.stats()
        actors = sum(1 for w in self.workers.values() if w.state == "actor")
        return NodeInfo(self.node_id, self.address, self.scheduler.total(),
                        self.scheduler.available(), True, self.is_head,
                        {**dataclasses.asdict(stats), **self.spiller.stats()}, actors,
                        len(self.workers), self.metrics_url)

    def _node_views(self) -> list[NodeView]:
        return [NodeView(info.node_id.hex(), ResourceSet.from_dict(info.total),
                         ResourceSet.from_dict(info.available), info.node_id == self.node_id,
                         info.alive)
                for info in self.membership.alive_nodes()]

    def _node_view(self, node_id: bytes) -> NodeView | None:
        """One alive node's view (the head's own row fresh), for the actor directory."""
        if node_id == self.node_id:  # read at every placement: only what placement needs
            return NodeView(node_id.hex(), ResourceSet.from_dict(self.scheduler.total()),
                            ResourceSet.from_dict(self.scheduler.available()), True, True)
        info = self.membership.nodes.get(node_id)
        if info is None or not info.alive:
            return None
        return NodeView(node_id.hex(), ResourceSet.from_dict(info.total),
                        ResourceSet.from_dict(info.available), node_id == self.node_id, True)

    def _on_join(self, conn, message: P.JoinCluster) -> None:
        if not self.is_head:
            raise P.ProtocolError("only the head takes JoinCluster")
        self.membership.on_join(conn, message)
        if isinstance(conn.user_data, NodeInfo):
            self.directory.on_node_changed(conn.user_data.node_id)

    def _on_heartbeat(self, conn, message: P.Heartbeat) -> None:
        if not self.is_head:
            raise P.ProtocolError("only the head takes Heartbeat")
        changed = self.membership.on_heartbeat(conn, message)
        if isinstance(conn.user_data, NodeInfo) and conn.user_data.alive:
            self.directory.on_heartbeat(conn.user_data.node_id, changed)

    def _on_view_delta(self, conn, message: P.ViewDelta) -> None:
        if conn is not self.membership.head_conn:
            raise P.ProtocolError("ViewDelta comes from the head only")
        self.membership.on_delta(conn, message)

    def _on_view_snapshot(self, conn, message: P.ViewSnapshot) -> None:
        if conn is not self.membership.head_conn:
            raise P.ProtocolError("ViewSnapshot comes from the head only")
        self.membership.on_snapshot(conn, message)

    def _on_pull_view(self, conn, message: P.PullView) -> None:
        if not self.is_head:
            raise P.ProtocolError("only the head takes PullView")
        self.membership.on_pull(conn, message)

    def _on_node_dead(self, node_id: bytes) -> None:
        if self.directory is not None:
            self.groups.on_node_dead(node_id)  # first: its actors then wait for the bundles
            self.directory.on_node_dead(node_id)

    def _on_view_changed(self) -> None:
        """Tell runtimes about nodes appearing or dying (they track objects' locations)."""
        if self.groups is not None:  # each beat on the head: fresher views may fit a group
            self.groups.retry_pending()
            self.directory.retry_held()
        alive = frozenset(i.node_id for i in self.membership.nodes.values() if i.alive)
        if alive == self._known_alive:
            return
        self._known_alive = alive
        view = P.encode(P.ClusterView(self.membership.wire_view()))
        for conn, kind in self.clients.items():
            if kind in ("driver", "worker") and not conn.closed:
                conn.send(view)

    async def _connect_node(self, node_id: bytes):
        """A connection to another node's daemon, shared."""
        future = self._node_conns.get(node_id)
        if future is None:
            address = self.membership.address_of(node_id)
            if address is None:
                raise ObjectLostError(f"node {node_id.hex()[:12]} is dead or unknown")
            future = asyncio.get_running_loop().create_future()
            self._node_conns[node_id] = future

            async def open_connection():
                try:
                    conn = await transport.connect(address[0], address[1], self.token,
                                                   self._on_message, on_close=self._on_closed)
                    future.set_result(conn)
                except Exception as error:  # noqa: BLE001
                    self._node_conns.pop(node_id, None)
                    future.set_exception(error)
            asyncio.get_running_loop().create_task(open_connection())
        return await asyncio.shield(future)

    # ------------------------------------------------------------------ objects
    def _on_fetch(self, conn, message: P.Fetch) -> None:
        async def fetch():
            try:
                if message.node_id == self.node_id:  # ours, spilled to disk: read it back
                    await self.spiller.restore(message.object_id)
                else:
                    await self.transfers.fetch(message.object_id, message.node_id)
            except Exception as error:  # noqa: BLE001 - the requester gets the reason
                self._reply(conn, message.request_id,
                            error=[type(error).__name__
                                   if isinstance(error, (ObjectLostError, ObjectStoreFullError))
                                   else "ObjectLostError", str(error)])
                return
            self._reply(conn, message.request_id, True)
        asyncio.get_running_loop().create_task(fetch())

    def _on_pull(self, conn, message: P.PullObject) -> None:
        self.transfers.on_pull(conn, message)

    def _on_chunk(self, conn, message: P.ObjectChunk) -> None:
        self.transfers.on_chunk(conn, message)

    def _on_make_room(self, conn, message: P.MakeRoom) -> None:
        async def make_room():
            freed, why = await self.spiller.make_room(message.need_bytes)
            self._reply(conn, message.request_id, [freed, why])
        asyncio.get_running_loop().create_task(make_room())

    def _on_free_objects(self, conn, message: P.FreeObjects) -> None:
        for object_id in message.object_ids:
            try:
                self.store.delete(object_id)
            except ObjectStoreError:  # being restored (unsealed): the spiller deletes it after
                pass
        self.spiller.free(message.object_ids)

    # ------------------------------------------------------------------ misc requests
    def _on_cancel_task(self, conn, message: P.CancelTask) -> None:
        worker = self.workers.get(message.worker_id)
        if worker is not None and message.force:
            _kill(worker.pid)

    def _on_cluster_info(self, conn, message: P.ClusterInfo) -> None:
        if message.what == "metrics":  # this node's merged metrics (the dashboard's source)
            async def answer():
                merged = await self.metrics.collect()
                self._reply(conn, message.request_id, to_snapshot(merged))
            asyncio.get_running_loop().create_task(answer())
            return
        head = self.membership.head_conn
        if head is not None and not head.closed:
            # A member's table follows the other nodes' load only while it spills work: the
            # head's figures are current.
            self._forward_to_head(conn, message)
            return
        nodes = self.membership.all_nodes()
        if message.what == "resources":
            value = _sum_resources(info.total for info in nodes if info.alive)
        elif message.what == "available":
            value = _sum_resources(info.available for info in nodes if info.alive)
        else:
            value = [{
                "NodeID": info.node_id.hex(), "Alive": info.alive, "IsHead": info.is_head,
                "NodeManagerAddress": info.address[0], "NodeManagerPort": info.address[1],
                "Resources": info.total, "Available": info.available,
                "ObjectStore": info.store, "Workers": info.workers, "Actors": info.actors,
                "MetricsExportURL": info.metrics_url,
            } for info in nodes]
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

    def _on_connections_rejected(self, conn, message: P.ConnectionsRejected) -> None:
        try:
            tally = RejectionTally.from_wire(message.reasons, message.peers)
        except ValueError as error:
            raise P.ProtocolError(str(error)) from None
        self.rejections.merge(tally)

    def _on_shutdown(self, conn, message: P.Shutdown) -> None:
        self._reply(conn, message.request_id, True)
        asyncio.get_running_loop().call_soon(self.stop)


def _sum_resources(amounts) -> dict:
    total: dict = {}
    for resources in amounts:
        for name, amount in resources.items():
            total[name] = total.get(name, 0) + amount
    return total


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _kill(pid: int) -> None:
    if pid <= 0:  # not started yet: never signal a process group
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
