"""The messages pyactor processes exchange, one class per kind.

On the wire a message is the msgpack list `[kind, field, field, ...]` inside a length-prefixed
frame (transport.py). Each kind is a NamedTuple here: `encode(msg)` gives the list, `decode(list)`
the typed value, and nothing else in the runtime builds lists by hand. Fields hold only msgpack
types; pickled values travel as `bytes` fields and are unpickled by the receiver only after the
connection is authenticated.

Who sends what:

    runtime -> its node            Register, RequestLease, ReturnLease, WorkerBlocked, CreateActor,
                                   GetActor, WaitActor, KillActor, CancelTask (force), Fetch,
                                   MakeRoom, FreeObjects, ClusterInfo, Shutdown, ConnectionsRejected
    node -> runtime                Reply (to any request), ClusterView, Log, StateQuery,
                                   CollectMetrics
    client -> any node             StateQuery (observability: see pyactor/util/state.py)
    owner -> worker task endpoint  PushTask, ActorCall (answered by TaskDone)
    owner -> worker runtime        CancelTask, RevokeTasks
    worker -> owner                WorkerBlocking (a task waits in get), GeneratorStart,
                                   GeneratorItem (streaming generators)
    owner -> worker runtime        GeneratorAck (consumed items, stop)
    borrower -> owner              GetObject, AddBorrower, RemoveBorrower, CancelTask
    node -> worker                 StartActor (answered by ActorReady)
    node <-> head                  JoinCluster, Heartbeat, ViewDelta, ViewSnapshot, PullView,
                                   HostActor, ActorHosted,
                                   ActorProcessDied, ActorDeferred, KillActorProcess, OwnerExited,
                                   and the actor requests a node forwards
    node <-> node                  PullObject (answered by ObjectChunk + raw payloads)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pyactor.exceptions import ProtocolError

# Where a task's argument or return value lives.
VALUE_INLINE = 0  # the serialized bytes are in the message
VALUE_IN_STORE = 1  # in the shared-memory store of node `node_id`
VALUE_REF = 2  # an ObjectRef passed through (nested refs travel inside pickles instead)


class Register(NamedTuple):
    """A process introduces itself to its node: kind is 'driver', 'worker' or 'cli'."""
    request_id: int
    kind: str
    pid: int
    worker_id: bytes
    address: list  # [host, port] of this process's runtime (owner service, cancellation)
    namespace: str
    task_address: list  # a worker's task endpoint (PushTask, ActorCall); [] for others


class Reply(NamedTuple):
    """The answer to any request that carries a request_id; `error` is a message or None."""
    request_id: int
    value: Any
    error: Any


class RequestLease(NamedTuple):
    """Answered with [lease_id, worker_id, worker address, gpu ids], or, when another node
    should run it, ["spill", node_id, node address] (only if spillable)."""
    request_id: int
    demand: dict  # resource name -> amount
    scheduling_key: bytes
    spillable: bool  # False once the request was already sent on by a node
    runtime_env: Any  # the wire env (runtime_env.py) its worker must run in, or None


class ReturnLease(NamedTuple):
    lease_id: int
    worker_exiting: bool


class WorkerBlocked(NamedTuple):
    """A worker's task waits in `get`: its CPUs are lent back (blocked=True) or taken back."""
    worker_id: bytes
    blocked: bool


class PushTask(NamedTuple):
    task_id: bytes
    function_id: bytes
    function_blob: Any  # bytes the first time this connection sees function_id, else None
    args: list  # [[where, payload...], ...]
    kwargs: dict
    num_returns: int
    owner: list  # [host, port] of the owner service
    gpu_ids: list
    name: str
    namespace: str  # the submitter's: named-actor lookups inside the task use it
    job_id: str  # the driver the task works for (get_runtime_context().get_job_id())


class ActorCall(NamedTuple):
    task_id: bytes
    actor_id: bytes
    method: str
    args: list
    kwargs: dict
    num_returns: int
    owner: list
    sequence: int  # per caller, for diagnostics; the connection already keeps the order


class TaskDone(NamedTuple):
    """A task or actor call finished. `returns` holds one [where, payload] per return value;
    when `error` is set it is a pickled TaskError and `returns` is empty."""
    task_id: bytes
    returns: list
    error: Any
    retryable: bool


class CancelTask(NamedTuple):
    task_id: bytes
    force: bool
    worker_id: bytes
    recursive: bool  # also cancel the tasks it submitted (Ray's default)


class CreateActor(NamedTuple):
    request_id: int
    actor_id: bytes
    spec: bytes  # pickled ActorSpec
    demand: dict
    name: str
    namespace: str
    get_if_exists: bool
    detached: bool
    owner: list  # address of the creating runtime: its actors die with it unless detached


class StartActor(NamedTuple):
    actor_id: bytes
    spec: bytes
    gpu_ids: list
    restart_count: int


class GetActor(NamedTuple):
    request_id: int
    name: str
    namespace: str


class KillActor(NamedTuple):
    request_id: int  # answered once the process is killed, so later calls cannot reach it
    actor_id: bytes
    no_restart: bool


class WaitActor(NamedTuple):
    """Ask for the actor's address once it is alive (or its death)."""
    request_id: int
    actor_id: bytes
    known_incarnation: int


class ActorState(NamedTuple):
    """The node's answer about an actor (in a Reply's value, encoded)."""
    actor_id: bytes
    state: str  # 'pending', 'alive', 'restarting', 'dead'
    address: list
    incarnation: int
    death_cause: str
    spec: bytes
    node_id: Any  # the node hosting it (None until placed): its death ends the actor there
    control_address: Any  # the hosting worker's runtime (CancelTask goes there)


class FreeObjects(NamedTuple):
    object_ids: list


class GetObject(NamedTuple):
    """A borrower asks the owner for an object's value; answered when it is ready."""
    request_id: int
    object_id: bytes


class AddBorrower(NamedTuple):
    request_id: int
    object_id: bytes
    borrower: list


class RemoveBorrower(NamedTuple):
    object_id: bytes
    borrower: list


class ClusterInfo(NamedTuple):
    request_id: int
    what: str  # 'resources', 'available', 'nodes', 'status', 'metrics' (this node's)


class Log(NamedTuple):
    source: str
    stream: str
    lines: list


class Shutdown(NamedTuple):
    request_id: int


class WorkerBlocking(NamedTuple):
    """Worker to owner: the task `task_id` waits in `get`; take back what you pipelined behind
    it (RevokeTasks to `control_address`)."""
    worker_id: bytes
    task_id: bytes
    control_address: list


class RevokeTasks(NamedTuple):
    """Owner to worker: give up these pipelined tasks; the Reply lists those not started."""
    request_id: int
    task_ids: list


class ActorReady(NamedTuple):
    """A worker ran the actor's __init__: error is None, or the creation error's text."""
    actor_id: bytes
    error: Any


class PullObject(NamedTuple):
    """Node to node: send me this object (answered by ObjectChunk messages)."""
    request_id: int
    object_id: bytes


class ObjectChunk(NamedTuple):
    """Part of a pulled object: `length` raw bytes follow the frame (transport payload).
    total is -1 when the holder does not have it."""
    request_id: int
    offset: int
    total: int
    length: int


class Fetch(NamedTuple):
    """Runtime to its node: make this object, held by node `node_id`, present locally (when
    `node_id` is the node itself: read it back from its spill directory)."""
    request_id: int
    object_id: bytes
    node_id: bytes


class MakeRoom(NamedTuple):
    """Runtime to its node: the store has no block of `need_bytes`; spill objects to disk.
    Answered with [bytes freed, why nothing more could be spilled ('' if it could)]."""
    request_id: int
    need_bytes: int


class JoinCluster(NamedTuple):
    """A node joins the head; `node` is a cluster.NodeInfo in wire form."""
    node: list


class Heartbeat(NamedTuple):
    node: list
    view_version: int  # the cluster view's version this node holds (its acknowledgement)
    wants_load: bool  # send it the other nodes' load changes too (cluster.py)


class ClusterView(NamedTuple):
    """A node's table of nodes, to its runtimes (when a node appears or dies)."""
    nodes: list


class ViewDelta(NamedTuple):
    """Head to node: the rows changed and the ids removed after version `base` (cluster_view)."""
    base: int
    version: int
    rows: list  # [node_id, NodeInfo wire row]
    removed: list


class ViewSnapshot(NamedTuple):
    """Head to node: the whole view, on joining and when asked (PullView)."""
    version: int
    rows: list


class PullView(NamedTuple):
    """Node to head: a delta did not follow from what this node holds: send the whole view."""
    version: int


class HostActor(NamedTuple):
    """Head to node: start this actor in one of your workers."""
    actor_id: bytes
    spec: bytes
    demand: dict
    restarts: int


class ActorHosted(NamedTuple):
    """Node to head: the actor's __init__ ran (error None) at `address` (its worker's task
    endpoint; `control_address` is the worker's runtime, for cancellation), or raised."""
    actor_id: bytes
    address: Any
    error: Any
    control_address: Any


class ActorProcessDied(NamedTuple):
    actor_id: bytes
    cause: str


class ActorDeferred(NamedTuple):
    """Node to head: the actor (incarnation `restarts`) does not fit here now (the head placed
    it from an old view): place it again."""
    actor_id: bytes
    restarts: int


class KillActorProcess(NamedTuple):
    """Head to node: kill the process hosting this actor (it reports ActorProcessDied)."""
    actor_id: bytes


class OwnerExited(NamedTuple):
    """Node to head: this runtime disconnected; its non-detached actors go."""
    owner: list


class ConnectionsRejected(NamedTuple):
    """Runtime to its node: connections to this process's ports that failed the handshake
    since its last report (the node logs them, aggregated: see rejections.py)."""
    reasons: dict  # why -> how many
    peers: list  # a few of the addresses they came from


class GeneratorStart(NamedTuple):
    """Worker to owner: a generator task starts streaming; answered by a Reply with
    [backpressure threshold (0: none), stop] (see streaming.py)."""
    request_id: int
    task_id: bytes
    worker_address: list  # the producer's runtime, where GeneratorAck goes


class GeneratorItem(NamedTuple):
    """Worker to owner: the value yielded at `index` (returns-style [where, payload, node,
    contained]), or the pickled error raised there (the stream then ends)."""
    task_id: bytes
    index: int
    value: Any
    error: Any


class GeneratorAck(NamedTuple):
    """Owner to worker: the consumer took `consumed` items; stop=True: it dropped the stream."""
    task_id: bytes
    consumed: int
    stop: bool


class CreatePlacementGroup(NamedTuple):
    """Driver to head: reserve these bundles; answered at once (placing goes on after)."""
    request_id: int
    pg_id: bytes
    bundles: list  # one resource dict per bundle
    strategy: str
    name: str
    namespace: str
    detached: bool
    owner: list  # its groups are removed when this runtime exits, unless detached


class RemovePlacementGroup(NamedTuple):
    request_id: int
    pg_id: bytes


class PlacementGroupInfo(NamedTuple):
    """Ask the head for the table (pg_id and name empty), one group, or a group by name."""
    request_id: int
    pg_id: bytes
    name: str
    namespace: str


class LocateBundle(NamedTuple):
    """Owner to head: which node holds bundle `index` (-1: any that fits `demand`)? Answered
    with [node_id, node address] once the bundle is reserved."""
    request_id: int
    pg_id: bytes
    index: int
    demand: dict


class ReserveBundle(NamedTuple):
    """Head to node: set these resources aside as bundle `index` of the group."""
    pg_id: bytes
    index: int
    resources: dict


class BundleReserved(NamedTuple):
    """Node to head: the bundle is reserved (error None), or cannot be here (error says why)."""
    pg_id: bytes
    index: int
    node_id: bytes
    error: Any


class ReturnBundles(NamedTuple):
    """Head to node: the group is removed: kill its work here and give its bundles back."""
    pg_id: bytes


class StateQuery(NamedTuple):
    """Ask for observability state (state.py), answered by a Reply. To a node: 'node' (its
    workers, its store's objects and a snapshot of each of its processes; `options` names the
    sections), 'actors' and 'placement_groups' (the head's tables; other nodes forward). To a
    runtime, from its node: 'process' (its tasks, references, memory: process_state.py)."""
    request_id: int
    what: str
    options: dict


class CollectMetrics(NamedTuple):
    """Node to a runtime (worker or driver): answered by a Reply carrying the process's metrics
    snapshot (see _private/metrics.py), when the node's metrics endpoint is scraped."""
    request_id: int


_KINDS: list[type] = [
    Register, Reply, RequestLease, ReturnLease, WorkerBlocked, PushTask, ActorCall, TaskDone,
    CancelTask, CreateActor, StartActor, GetActor, KillActor, WaitActor, FreeObjects, GetObject,
    AddBorrower, RemoveBorrower, ClusterInfo, Log, Shutdown, WorkerBlocking, RevokeTasks, ActorReady,
    PullObject, ObjectChunk, Fetch, JoinCluster, Heartbeat, ClusterView, HostActor, ActorHosted,
    ActorProcessDied, KillActorProcess, OwnerExited, ConnectionsRejected,
    GeneratorStart, GeneratorItem, GeneratorAck,
    CreatePlacementGroup, RemovePlacementGroup, PlacementGroupInfo, LocateBundle, ReserveBundle,
    BundleReserved, ReturnBundles, ActorDeferred, ViewDelta, ViewSnapshot, PullView, MakeRoom,
    StateQuery, CollectMetrics,
]
KIND_OF: dict[type, int] = {cls: i for i, cls in enumerate(_KINDS)}
_ARITY = [len(cls._fields) for cls in _KINDS]


def encode(message: NamedTuple) -> list:
    return [KIND_OF[type(message)], *message]


def decode(raw: Any) -> NamedTuple:
    """Turn a received list into its message class; anything else is a ProtocolError."""
    if type(raw) is not list or not raw:
        raise ProtocolError(f"a message must be a non-empty list, got {type(raw).__name__}")
    kind = raw[0]
    if type(kind) is not int or not 0 <= kind < len(_KINDS):
        raise ProtocolError(f"unknown message kind {kind!r}")
    if len(raw) - 1 != _ARITY[kind]:
        raise ProtocolError(f"{_KINDS[kind].__name__} takes {_ARITY[kind]} fields, "
                            f"got {len(raw) - 1}")
    return _KINDS[kind](*raw[1:])
