"""The public functions: init, shutdown, remote, get, put, wait, cancel, kill, get_actor..."""

from __future__ import annotations

import atexit
import pickle
import json
import logging
import os
import subprocess
import sys
import threading
from typing import Any

from pyactor._private import protocol as P
from pyactor._private import serialization
from pyactor._private.actor import ActorClass, ActorHandle
from pyactor._private.object_ref import ObjectRef
from pyactor._private.remote_function import RemoteFunction

_lock = threading.RLock()
_runtime = None  # the process's Runtime (imported lazily: see init)
_node_process: subprocess.Popen | None = None
_node_store_name = ""  # the segment of the node init started (removed here if it was killed)
_namespace = ""
_job_id = ""  # the driver's, set at init; in workers, the current task's or actor's
_is_worker = False
_call_sites_by_init = False  # init(record_ref_call_sites=True) turned recording on



# ---------------------------------------------------------------------- init / shutdown
def init(address: str | None = None, *, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, namespace: str | None = None,
         log_to_driver: bool = True, ignore_reinit_error: bool = False,
         token: str | bytes | None = None, logging_level: int | str | None = None,
         runtime_env: dict | None = None,
         spill_dir: str | os.PathLike | None = None, spill_limit_bytes: int | None = None,
         record_ref_call_sites: bool = False, **unsupported) -> dict:
    """Start pyactor in this process.

    With no address, a node (daemon, store and workers) starts in the background and stops with
    this process. With "host:port" or "auto", this process joins a running cluster.
    `logging_level` (logging.INFO, "DEBUG"...) is the level of pyactor's log lines in this
    process and, for the node started here, of the node's and its workers' log lines (user
    code's `logging` calls in tasks included), which reach this process's stderr.
    `runtime_env` ({"env_vars", "working_dir", "py_modules", "excludes"}) is the environment
    of every task and actor of this program (theirs are merged over it); folders are packed
    here, once, and reach the workers of every node through the object store.
    `spill_dir` is where the node started here writes objects when its store is full (default:
    a folder in the session's temporary directory), `spill_limit_bytes` the most it may write
    there (default: until the disk is 95% full); see docs/store.md.
    `record_ref_call_sites=True` notes where each ObjectRef is made, so `pyactor memory` shows
    the file:line keeping an object alive (in this process, and in the node started here and
    its workers); it costs about a microsecond per ref, so it is off by default.
    """
    global _runtime, _namespace, _job_id
    if unsupported:
        raise TypeError(f"init() got unexpected argument(s) {sorted(unsupported)}")
    with _lock:
        if _runtime is not None:
            if ignore_reinit_error:
                return _context_info()
            raise RuntimeError("pyactor.init() was already called; call pyactor.shutdown() "
                               "first or pass ignore_reinit_error=True")
        _validate_init(num_cpus, num_gpus, resources, object_store_memory)
        from pyactor._private import runtime_env as runtime_env_module
        job_env = runtime_env_module.validate(runtime_env)
        spill = _spill_options(spill_dir, spill_limit_bytes)
        if not isinstance(record_ref_call_sites, bool):
            raise TypeError(f"record_ref_call_sites must be a bool, "
                            f"got {type(record_ref_call_sites).__name__}")
        if record_ref_call_sites and os.environ.get("PYACTOR_RECORD_REF_CALL_SITES") != "1":
            global _call_sites_by_init
            from pyactor._private.object_ref import record_call_sites
            record_call_sites(True)
            os.environ["PYACTOR_RECORD_REF_CALL_SITES"] = "1"  # the node's workers inherit it
            _call_sites_by_init = True
        level = logging_level_number(logging_level) if logging_level is not None else None
        _namespace = namespace if namespace is not None else f"anonymous-{os.getpid()}"
        _job_id = os.urandom(4).hex()  # as Ray's: 4 bytes, in hex
        if address is None:
            host, port, token_bytes = _start_local_node(num_cpus, num_gpus, resources,
                                                        object_store_memory, level, spill)
            # Import the runtime while the node starts on the other core, not before.
            from pyactor._private.runtime import Runtime
            port = _wait_for_node()
        else:
            if num_cpus is not None or num_gpus is not None or resources or spill:
                raise ValueError("num_cpus, num_gpus, resources and spilling describe a new "
                                 "node; when joining a cluster (address=...) set them on "
                                 "`pyactor start`")
            host, port, token_bytes = _resolve_address(address, token)
            from pyactor._private.runtime import Runtime
        runtime = Runtime(node_host=host, node_port=port, token=token_bytes, kind="driver",
                          namespace=_namespace)
        if not log_to_driver:
            runtime.log_handler = lambda message: None
        try:
            runtime.start()
        except BaseException as error:
            runtime.shutdown()
            _stop_local_node()
            if address is not None and isinstance(error, OSError) and not isinstance(
                    error, (TimeoutError, PermissionError)):
                raise _not_listening(host, port, error) from None
            raise
        _runtime = runtime
        if job_env is not None:
            try:
                runtime_env_module.set_job_env(
                    runtime_env_module.to_wire(job_env, None, runtime))
            except BaseException:
                _runtime = None
                runtime.shutdown()
                _stop_local_node()
                raise
        if level is not None:
            _configure_driver_logging(level)
        atexit.register(shutdown)
        return _context_info()


def _validate_init(num_cpus, num_gpus, resources, object_store_memory) -> None:
    def is_amount(value) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value < float("inf"))  # also refuses NaN

    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and not is_amount(value):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if resources is not None and not isinstance(resources, dict):
        raise TypeError(f"resources must be a dict, got {type(resources).__name__}")
    for name, amount in (resources or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"resource names must be non-empty strings, got {name!r}")
        if name in ("CPU", "GPU"):
            raise ValueError(f"set {name} with num_{name.lower()}s=..., not resources=")
        if not is_amount(amount):
            raise ValueError(f"resource {name!r} must be a non-negative number, got {amount!r}")
    if object_store_memory is not None and (not isinstance(object_store_memory, int) or
                                            object_store_memory < 1 << 20):
        raise ValueError(f"object_store_memory must be an int of at least 1 MiB, "
                         f"got {object_store_memory!r}")


def _spill_options(spill_dir, spill_limit_bytes) -> dict:
    """The node config entries for spilling (only those given)."""
    options = {}
    if spill_dir is not None:
        if not isinstance(spill_dir, (str, os.PathLike)) or not os.fspath(spill_dir):
            raise TypeError(f"spill_dir must be a path, got {spill_dir!r}")
        options["spill_dir"] = os.path.abspath(os.fspath(spill_dir))
    if spill_limit_bytes is not None:
        if not isinstance(spill_limit_bytes, int) or isinstance(spill_limit_bytes, bool) or \
                spill_limit_bytes < 0:
            raise ValueError(f"spill_limit_bytes must be an int >= 0, got {spill_limit_bytes!r}")
        options["spill_limit_bytes"] = spill_limit_bytes
    return options


def logging_level_number(level) -> int:
    """A logging level given as a number or a name ("info", "DEBUG"), as a number."""
    if isinstance(level, str):
        name = level.strip().upper()
        number = int(name) if name.isdigit() else logging.getLevelName(name)
    else:
        number = level
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise ValueError(f"logging_level must be a logging level (logging.INFO, 'DEBUG', ...), "
                         f"got {level!r}")
    return number


def _configure_driver_logging(level: int) -> None:
    logger = logging.getLogger("pyactor")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[pyactor] %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _start_local_node(num_cpus, num_gpus, resources, object_store_memory, logging_level=None,
                      spill=None):
    global _node_process
    token = os.urandom(32)
    config = {"token_hex": token.hex(), "num_cpus": num_cpus, "num_gpus": num_gpus,
              "resources": resources or {}, "object_store_memory": object_store_memory,
              "embedded": True, **(spill or {})}
    # The token goes through the pipe, never on a command line; the pipe stays open as the
    # node's lifeline (it stops when this process exits, however it exits).
    env = None
    if logging_level is not None:  # the node passes its environment on to its workers
        env = {**os.environ, "PYACTOR_LOG_LEVEL": str(logging_level)}
    process = subprocess.Popen([sys.executable, "-m", "pyactor._private.node_main"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               start_new_session=True, env=env)
    process.stdin.write((json.dumps(config) + "\n").encode())
    process.stdin.flush()
    _node_process = process
    return "127.0.0.1", None, token


def _wait_for_node() -> int:
    """The port the node printed once it listens."""
    process = _node_process
    line = process.stdout.readline()
    process.stdout.close()
    if not line:
        _stop_local_node()
        raise RuntimeError(f"the pyactor node failed to start (exit code {process.returncode}); "
                           f"its error is printed above")
    ready = json.loads(line)
    global _node_store_name
    _node_store_name = ready.get("store_name", "")
    return ready["port"]


def _resolve_address(address: str, token) -> tuple[str, int, bytes]:
    """(host, port, token bytes) of the cluster to join; every way of getting it wrong raises
    an error that names what was tried."""
    from pyactor._private import session
    source = "token="
    if address == "auto":
        address = os.environ.get("PYACTOR_ADDRESS", "")
        if not address:
            saved = session.read_cluster_address()
            if saved is None:
                raise ConnectionError("address='auto' found no cluster: start one with "
                                      "`pyactor start --head` or set PYACTOR_ADDRESS")
            address = saved["address"]
            if not token:
                token, source = saved.get("token"), f"the token file in {session.session_dir()}"
    if not isinstance(address, str):
        raise TypeError(f"address must be a str 'host:port', got {type(address).__name__}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must be 'host:port', got {address!r}")
    if not token:
        token, source = os.environ.get("PYACTOR_TOKEN"), "$PYACTOR_TOKEN"
    if not token:
        # Say first whether anything is there at all: a missing token is not the problem when
        # the address is wrong.
        _check_listening(host, int(port))
        from pyactor._private.transport import _TOKEN_HINT
        from pyactor.exceptions import AuthenticationError
        raise AuthenticationError(f"joining {address} needs the cluster token; {_TOKEN_HINT}")
    return host, int(port), session.parse_token(token, source)


def _check_listening(host: str, port: int) -> None:
    import socket
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise _not_listening(host, port, error) from None


def _not_listening(host: str, port: int, error: OSError) -> OSError:
    if isinstance(error, ConnectionRefusedError):
        return ConnectionRefusedError(
            f"nothing is listening at {host}:{port}: check the address (`pyactor start --head` "
            f"prints it; `pyactor status` shows the cluster on this host)")
    return ConnectionError(f"could not reach {host}:{port}: {error}")


def shutdown() -> None:
    """Stop pyactor in this process (and the node, when init started one)."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
        from pyactor._private import runtime_env
        runtime_env.set_job_env(None)
        runtime_env.forget_packages()
        if runtime is not None:
            runtime.shutdown()
        _stop_local_node()
        _stop_recording_call_sites()


def _stop_recording_call_sites() -> None:
    """What init(record_ref_call_sites=True) turned on ends with this session."""
    global _call_sites_by_init
    if _call_sites_by_init:
        from pyactor._private.object_ref import record_call_sites
        record_call_sites(False)
        os.environ.pop("PYACTOR_RECORD_REF_CALL_SITES", None)
        _call_sites_by_init = False


def _stop_local_node() -> None:
    global _node_process
    process, _node_process = _node_process, None
    if process is None:
        return
    try:
        process.stdin.close()  # the node's lifeline: it stops and removes its store
    except OSError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _remove_segment_of(process)


def _remove_segment_of(process: subprocess.Popen) -> None:
    """A node that was killed (SIGKILL, OOM) could not remove its store's segment: do it here."""
    global _node_store_name
    name, _node_store_name = _node_store_name, ""
    if name and process.returncode is not None:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass


def is_initialized() -> bool:
    return _runtime is not None


def attach_worker_runtime(runtime) -> None:
    """Called in worker processes: user code there uses the worker's runtime."""
    global _runtime, _is_worker
    _runtime = runtime
    _is_worker = True


def runtime_for_call():
    runtime = _runtime
    if runtime is None:
        with _lock:
            if _runtime is None:
                init()  # like Ray: the first remote call starts pyactor
            runtime = _runtime
    return runtime


def get_namespace() -> str:
    return _namespace


def get_job_id() -> str:
    return _job_id


def _context_info() -> dict:
    runtime = _runtime
    return {"node_id": runtime.node_id.hex(), "address": runtime.address,
            "namespace": _namespace}


# ---------------------------------------------------------------------- remote
def remote(*args, **options):
    """`@pa.remote` or `@pa.remote(num_cpus=..., ...)` on a function or class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@pyactor.remote takes keyword options only, e.g. "
                        "@pyactor.remote(num_cpus=2)")
    return lambda target: _make_remote(target, options)


def _make_remote(target, options: dict):
    if isinstance(target, type):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@pyactor.remote needs a function or a class, got {type(target).__name__}")


# ---------------------------------------------------------------------- objects
def get(refs, *, timeout: float | None = None):
    """The value of a ref, or the values of a list of refs (raising the first error)."""
    runtime = runtime_for_call()
    if type(refs) is ObjectRef:
        return runtime.get([refs], _check_timeout(timeout))[0]
    if isinstance(refs, (list, tuple)):
        for ref in refs:
            if type(ref) is not ObjectRef:
                raise TypeError(f"get() takes ObjectRefs, got a {type(ref).__name__} in the list")
        return runtime.get(list(refs), _check_timeout(timeout))
    raise TypeError(f"get() takes an ObjectRef or a list of them, got {type(refs).__name__}")


def _check_timeout(timeout):
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be None or a non-negative number, got {timeout!r}")
    return timeout


def put(value: Any, *, timeout: float | None = 0) -> ObjectRef:
    """Store a value once; pass the ref to tasks instead of the value.

    When the store is full of referenced objects, a put fails at once with
    ObjectStoreFullError (timeout=0, the default, as in Ray); with timeout=S it waits up to S
    seconds for room, with timeout=None as long as it takes."""
    if type(value) is ObjectRef:
        raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself")
    runtime = runtime_for_call()
    timeout_s = 0.0
    if timeout != 0:
        from pyactor._private.put_wait import check_put_timeout
        timeout_s = check_put_timeout(timeout)
    try:
        serialized = serialization.serialize(value)
    except Exception as error:  # PicklingError is no TypeError: give callers one clear type
        from pyactor._private.pickling_errors import describe_failure
        raise TypeError(describe_failure(value, "the value passed to put()", error)) from error
    return runtime.put_serialized(serialized, timeout_s)


async def put_async(value: Any, *, timeout: float | None = 0) -> ObjectRef:
    """`put` for asyncio code: waiting for room in a full store does not block the loop."""
    if type(value) is ObjectRef:
        raise TypeError("put_async() of an ObjectRef is not allowed; pass the ref itself")
    from pyactor._private.put_wait import check_put_timeout
    return await runtime_for_call().put_async(value, check_put_timeout(timeout))


def wait(refs, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list, list]:
    """Split refs into (ready, not_ready) once num_returns are ready or the timeout passes."""
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError("wait() takes a list of ObjectRefs")
    refs = list(refs)
    # Few passes over the refs, most of them C-level (map, set): a Python loop per check would
    # cost as much as the whole wait on 1,000 ready refs.
    if refs and set(map(type, refs)) != _ONLY_REFS:
        bad = next(ref for ref in refs if type(ref) is not ObjectRef)
        raise TypeError(f"wait() takes ObjectRefs, got a {type(bad).__name__}")
    ids = [ref.id for ref in refs]
    if len(set(ids)) != len(ids):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not isinstance(num_returns, int) or not 1 <= num_returns <= max(1, len(refs)):
        raise ValueError(f"num_returns must be between 1 and len(refs)={len(refs)}, "
                         f"got {num_returns!r}")
    if not refs:
        return [], []
    return runtime_for_call().wait(refs, num_returns, _check_timeout(timeout), ids)


_ONLY_REFS = {ObjectRef}


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task behind `ref`: dropped if queued, interrupted if running, its worker
    killed if force=True; with recursive=True (the default) the tasks it submitted are
    cancelled too. `get` on it then raises TaskCancelledError."""
    if type(ref) is not ObjectRef:
        from pyactor._private.streaming import ObjectRefGenerator
        if isinstance(ref, ObjectRefGenerator):  # stops the producer (streaming.py)
            ref.cancel()
            return
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    runtime_for_call().cancel(ref, force, recursive)


# ---------------------------------------------------------------------- actors
def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, got {type(actor).__name__}")
    runtime = runtime_for_call()
    # Wait for the node's answer: the process is dead once it comes, so a call made after
    # kill() returns cannot be run by it (it fails with ActorDiedError).
    killed = runtime.node_request(P.KillActor, actor._actor_id, no_restart)
    runtime.actors.note_killed(actor._actor_id)  # before any later call can go out directly
    runtime.run_in_loop(runtime.actors.on_killed, actor._actor_id, killed)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name")
    runtime = runtime_for_call()
    namespace = namespace if namespace is not None else _namespace
    state = runtime.node_request(P.GetActor, name, namespace)
    spec = pickle.loads(state[5])
    return ActorHandle(state[0], spec["class_name"], spec["methods"],
                       spec["options"].get("max_task_retries", 0),
                       signatures=spec.get("signatures"))


# ---------------------------------------------------------------------- cluster
def cluster_resources() -> dict:
    return runtime_for_call().node_request(P.ClusterInfo, "resources")


def available_resources() -> dict:
    return runtime_for_call().node_request(P.ClusterInfo, "available")


def nodes() -> list[dict]:
    return runtime_for_call().node_request(P.ClusterInfo, "nodes")


def get_runtime_context():
    """Where the calling code runs (a RuntimeContext, as Ray's)."""
    import sys

    from pyactor._private.runtime_context import RuntimeContext
    runtime_for_call()
    return RuntimeContext(sys.modules[__name__])
