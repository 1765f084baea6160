"""`@pa.remote` on a class: actor classes, handles, and method calls."""

from __future__ import annotations

import inspect
import pickle
import weakref

from pyactor._private import protocol as P
from pyactor._private import runtime_env, signatures
from pyactor._private.ids import new_actor_id, new_task_id
from pyactor._private.references import FAILED, PENDING
from pyactor._private.remote_function import api_module, demand_of, validate_options
from pyactor._private.task_spec import TaskSpec, encode_args

ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "max_restarts",
                 "max_task_retries", "max_concurrency", "name", "namespace", "get_if_exists",
                 "lifetime", "scheduling_strategy", "runtime_env"}
# Like Ray: an actor holds no CPU while it lives unless asked to, so a 2-CPU host can hold many.
DEFAULT_ACTOR_OPTIONS = {"num_cpus": 0, "num_gpus": 0, "resources": None, "memory": None,
                         "max_restarts": 0, "max_task_retries": 0, "max_concurrency": None,
                         "name": None, "namespace": None, "get_if_exists": False,
                         "lifetime": None, "scheduling_strategy": None, "runtime_env": None}


STREAMING = "streaming"  # num_returns of a generator method (streaming.py)


def method(*, num_returns: int = 1):
    """Decorator for actor methods: `@pa.method(num_returns=2)`."""
    if not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"num_returns must be a positive int, got {num_returns!r}")

    def mark(function):
        function.__pyactor_num_returns__ = num_returns
        return function
    return mark


class ActorClass:
    """A class turned into an actor factory: `.remote(...)` starts one actor process."""

    def __init__(self, cls: type, options: dict):
        validate_options(options, ACTOR_OPTIONS, "actor")
        self._cls = cls
        self._options = {**DEFAULT_ACTOR_OPTIONS, **options}
        lifetime = self._options["lifetime"]
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', "
                             f"got {lifetime!r}")
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self._methods = {name: STREAMING if (inspect.isgeneratorfunction(member) or
                                             inspect.isasyncgenfunction(member))
                         else getattr(member, "__pyactor_num_returns__", 1)
                         for name, member in inspect.getmembers(cls, callable)
                         if not name.startswith("__")}
        self._signatures, self._init_check = _argument_checks(cls, self._methods)
        self._blob: bytes | None = None
        self._runtime_env_cache = [-1, None]  # runtime_env.effective's [generation, wire env]

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self.__name__} cannot be instantiated directly; "
                        f"use {self.__name__}.remote(...)")

    def options(self, **options) -> "ActorClass":
        validate_options(options, ACTOR_OPTIONS, "actor")
        merged = ActorClass(self._cls, {**self._options, **options})
        merged._blob = self._blob
        return merged

    def remote(self, *args, **kwargs) -> "ActorHandle":
        from pyactor._private.api import get_job_id, get_namespace, runtime_for_call
        if self._init_check is not None:
            try:
                self._init_check(*args, **kwargs)
            except TypeError as error:
                raise signatures.wrong_arguments(self.__qualname__, error) from None
        runtime = runtime_for_call()
        options = self._options
        if self._blob is None:
            from pyactor._private.serialization import dumps_function  # with sys.path
            try:
                self._blob = dumps_function(self._cls)
            except Exception as error:
                from pyactor._private.pickling_errors import describe_code_failure
                raise TypeError(describe_code_failure(self._cls, error)) from error
        demand, placement = demand_of(options), None
        if options["scheduling_strategy"] is not None:
            from pyactor.util.placement_group import resolve_scheduling_strategy
            demand, placement = resolve_scheduling_strategy(options["scheduling_strategy"],
                                                            demand)
        held: list = []
        wire_args, wire_kwargs = encode_args(runtime, args, kwargs, held)
        wire_args = [_resolve_now(runtime, a) for a in wire_args]
        wire_kwargs = {k: _resolve_now(runtime, v) for k, v in wire_kwargs.items()}
        spec = pickle.dumps({
            "class_blob": self._blob, "args": wire_args, "kwargs": wire_kwargs,
            "class_name": self.__name__,
            "namespace": get_namespace(),  # the actor's code runs in its creator's namespace
            "job_id": get_job_id(), "resources": demand_of(options), "name": options["name"] or "",
            "methods": self._methods,  # for get_actor(), which need not import the class
            "signatures": self._signatures,
            "options": {"max_restarts": options["max_restarts"],
                        "max_task_retries": options["max_task_retries"],
                        "max_concurrency": options["max_concurrency"],
                        "placement_group": placement},
            "max_concurrency": options["max_concurrency"],
            # the node reads it to pick (or start) a worker of that environment
            "runtime_env": runtime_env.effective(options["runtime_env"],
                                                 self._runtime_env_cache, runtime)})
        namespace = options["namespace"] if options["namespace"] is not None else \
            get_namespace()
        name = options["name"] or ""
        if options["get_if_exists"] and not name:
            raise ValueError("get_if_exists=True needs a name")
        requested_id = new_actor_id()
        state = runtime.node_request(P.CreateActor, requested_id, spec, demand,
                                     name, namespace, bool(options["get_if_exists"]),
                                     options["lifetime"] == "detached", runtime.address)
        actor_id = state[0]
        token = None
        if actor_id == requested_id:  # not an existing actor (get_if_exists): keep its args
            runtime.actors_created[actor_id] = held  # args stay alive while it may restart
            if not name and options["lifetime"] != "detached":
                # Like Ray: an unnamed, non-detached actor ends when no handle to it is left.
                token = runtime.actor_token(actor_id)
        return ActorHandle(actor_id, self.__name__, self._methods, options["max_task_retries"],
                           token, self._signatures)


_checks_by_class: "weakref.WeakKeyDictionary[type, tuple]" = weakref.WeakKeyDictionary()


def _argument_checks(cls: type, methods: dict) -> tuple[dict, object]:
    """(method name -> signature text, constructor stub), checked at .remote() (signatures.py);
    text, so that handles carry them anywhere. Once per class: `.options()` makes new
    ActorClasses of the same class (a Pool does, per worker)."""
    checks = _checks_by_class.get(cls)
    if checks is None:
        checks = ({name: signatures.method_signature_text(cls, name) for name in methods},
                  signatures.stub(cls.__name__, signatures.signature_text(cls)))
        try:
            _checks_by_class[cls] = checks
        except TypeError:  # a class that cannot be weakly referenced: just not cached
            pass
    return checks


def _resolve_now(runtime, arg: list) -> list:
    """Actor creation arguments are resolved before the actor is started (blocking)."""
    if arg[0] != P.VALUE_REF:
        return arg
    from pyactor._private.object_ref import ObjectRef
    ref = ObjectRef(arg[1], arg[2])
    entry = runtime._entries_of([ref])[0]
    if entry.state == PENDING:
        runtime.get([ref], None)
    if entry.state == FAILED:
        raise pickle.loads(entry.inline)
    if entry.inline is not None:
        return [P.VALUE_INLINE, entry.inline]
    return [P.VALUE_IN_STORE, arg[1], entry.node_id]


class ActorHandle:
    """A handle to a running actor; picklable, so it can be passed to tasks and actors.

    `_token` is an ObjectRef the creator owns, travelling with every copy of the handle: the
    object reference counting then tells the creator when no handle is left anywhere, and the
    actor is ended (unnamed, non-detached actors only; named ones live until killed).
    """

    def __init__(self, actor_id: bytes, class_name: str, methods: dict, max_task_retries: int,
                 token=None, signatures: dict | None = None):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._max_task_retries = max_task_retries
        self._token = token
        self._signatures = signatures or {}  # method name -> parameters as text

    def __getattr__(self, name: str) -> "ActorMethod":
        # Not cached on the handle: a handle -> method -> handle cycle would keep the handle
        # (and so the actor, see _token) alive until a garbage collection.
        methods = self.__dict__.get("_methods")
        if name.startswith("__") or methods is None or name not in methods:
            raise AttributeError(f"actor {self._class_name if methods else 'handle'} has no "
                                 f"method {name!r}")
        return ActorMethod(self, name, methods[name])

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._class_name, self._methods,
                              self._max_task_retries, self._token, self._signatures))

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


class ActorMethod:
    __slots__ = ("_handle", "_name", "_num_returns", "_backpressure")

    def __init__(self, handle: ActorHandle, name: str, num_returns, backpressure: int = 0):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._backpressure = backpressure

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._name} cannot be called directly; "
                        f"use .{self._name}.remote(...)")

    def options(self, *, num_returns: int | None = None, name: str | None = None,
                _generator_backpressure_num_objects: int | None = None) -> "ActorMethod":
        from pyactor._private.streaming import check_backpressure
        return ActorMethod(self._handle, self._name,
                           num_returns if num_returns is not None else self._num_returns,
                           check_backpressure(_generator_backpressure_num_objects))

    def remote(self, *args, **kwargs):
        handle = self._handle
        check = signatures.stub(self._name, handle._signatures.get(self._name))
        if check is not None:
            try:
                check(*args, **kwargs)
            except TypeError as error:
                raise signatures.wrong_arguments(f"{handle._class_name}.{self._name}",
                                                 error) from None
        runtime = api_module().runtime_for_call()
        spec = TaskSpec()
        spec.task_id = new_task_id()
        spec.actor = handle._actor_id
        spec.method = self._name
        spec.name = f"{handle._class_name}.{self._name}"
        spec.encode_call(runtime, args, kwargs)
        spec.retry_exceptions = False
        if self._num_returns == STREAMING:
            return self._submit_streaming(runtime, spec)
        spec.num_returns = self._num_returns
        refs = runtime.submit_actor_call(spec, handle._max_task_retries)
        return refs[0] if spec.num_returns == 1 else refs

    def _submit_streaming(self, runtime, spec):
        from pyactor._private import streaming
        spec.num_returns = 1  # the item count (or the call's failure)
        return streaming.submit_streaming(  # no retries: a rerun would yield its items twice
            runtime, spec, self._backpressure, lambda s: runtime.submit_actor_call(s, 0))
