"""`@pa.remote` on a function: options, and turning a call into a TaskSpec."""

from __future__ import annotations

import hashlib
import inspect

from pyactor._private import runtime_env, serialization, signatures
from pyactor._private.resources import ResourceSet, check_gpu_demand
from pyactor._private.ids import new_task_id
from pyactor._private.task_spec import TaskSpec

# pyactor._private.api, bound at the first call: it imports this module, and an import statement
# in .remote() itself cost ~1-4 us per call (measured with timeit), a tenth of a small task's
# whole submit path.
_api = None


def api_module():
    """pyactor._private.api (imported once, then kept: see _api)."""
    global _api
    if _api is None:
        from pyactor._private import api
        _api = api
    return _api


TASK_OPTIONS = {"num_cpus", "num_gpus", "resources", "num_returns", "max_retries",
                "retry_exceptions", "name", "memory", "_generator_backpressure_num_objects",
                "scheduling_strategy", "runtime_env"}
DEFAULT_TASK_OPTIONS = {"num_cpus": 1, "num_gpus": 0, "resources": None, "num_returns": 1,
                        "max_retries": 3, "retry_exceptions": False, "name": None, "memory": None,
                        "_generator_backpressure_num_objects": None,
                        "scheduling_strategy": None, "runtime_env": None}


def validate_options(options: dict, allowed: set, what: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown {what} option(s) {sorted(unknown)}; "
                         f"valid ones are {sorted(allowed)}")
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    num_returns = options.get("num_returns")
    if num_returns is not None and (not isinstance(num_returns, int) or num_returns < 1):
        raise ValueError(f"num_returns must be a positive int, got {num_returns!r}")
    if "_generator_backpressure_num_objects" in options:
        from pyactor._private.streaming import check_backpressure
        check_backpressure(options["_generator_backpressure_num_objects"])
    retry_exceptions = options.get("retry_exceptions")
    if retry_exceptions is not None and not isinstance(retry_exceptions, bool) and not (
            isinstance(retry_exceptions, (list, tuple)) and all(
                isinstance(c, type) and issubclass(c, BaseException) for c in retry_exceptions)):
        raise TypeError(f"retry_exceptions must be a bool or a list of exception classes, "
                        f"got {retry_exceptions!r}")
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict, got {type(resources).__name__}")
        for name in ("CPU", "GPU"):
            if name in resources:
                raise ValueError(f"use num_cpus/num_gpus instead of resources={{{name!r}: ...}}")
    if options.get("runtime_env") is not None:
        options["runtime_env"] = runtime_env.validate(options["runtime_env"])
    # The scheduler's own checks (exact amounts, whole GPUs above 1), at the call site.
    demand = ResourceSet.from_dict(demand_of(options))
    check_gpu_demand(demand)


def demand_of(options: dict) -> dict:
    demand = {}
    if options.get("num_cpus"):
        demand["CPU"] = options["num_cpus"]
    if options.get("num_gpus"):
        demand["GPU"] = options["num_gpus"]
    if options.get("memory"):
        demand["memory"] = options["memory"]
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            demand[name] = amount
    return demand


class RemoteFunction:
    """A function turned into a task: call `.remote(...)` to run it in a worker."""

    def __init__(self, function, options: dict):
        validate_options(options, TASK_OPTIONS, "task")
        self._function = function
        self._options = {**DEFAULT_TASK_OPTIONS, **options}
        self._blob: bytes | None = None
        self._function_id: bytes | None = None
        self._check_args = None  # a stub with the function's parameters: see signatures.py
        self._demand = demand_of(self._options)
        self._placement = None  # (pg_id, bundle index) when scheduled into a placement group
        if self._options["scheduling_strategy"] is not None:
            from pyactor.util.placement_group import resolve_scheduling_strategy
            self._demand, self._placement = resolve_scheduling_strategy(
                self._options["scheduling_strategy"], self._demand)
        self._scheduling_key = repr(sorted(self._demand.items())).encode()
        self._runtime_env_cache = [-1, None]  # runtime_env.effective's [generation, wire env]
        self.__name__ = getattr(function, "__name__", "remote_function")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__doc__ = getattr(function, "__doc__", None)
        self.__wrapped__ = function
        # A generator function streams its items (streaming.py), as Ray's num_returns="streaming".
        self._streaming = inspect.isgeneratorfunction(function) or \
            inspect.isasyncgenfunction(function)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self.__name__} cannot be called directly; "
                        f"use {self.__name__}.remote(...)")

    def options(self, **options) -> "RemoteFunction":
        validate_options(options, TASK_OPTIONS, "task")
        merged = RemoteFunction(self._function, {**self._options, **options})
        merged._blob, merged._function_id = self._blob, self._function_id
        merged._check_args = self._check_args
        return merged

    def _export(self) -> None:
        # Pickled once per RemoteFunction (at first call: the function's globals may be defined
        # after the decorator ran); workers cache it by id.
        try:
            blob = serialization.dumps_function(self._function)
        except Exception as error:
            from pyactor._private.pickling_errors import describe_code_failure
            raise TypeError(describe_code_failure(self._function, error)) from error
        self._function_id = hashlib.blake2b(blob, digest_size=16).digest()
        self._blob = blob
        self._check_args = signatures.stub(self.__name__, signatures.signature_text(
            self._function))

    def remote(self, *args, **kwargs):
        api = _api or api_module()
        runtime = api.runtime_for_call()
        if self._blob is None:
            self._export()
        if self._check_args is not None:
            try:
                self._check_args(*args, **kwargs)
            except TypeError as error:
                raise signatures.wrong_arguments(self.__qualname__, error) from None
        options = self._options
        spec = TaskSpec()
        spec.task_id = new_task_id()
        spec.function_id = self._function_id
        spec.function_blob = self._blob
        spec.name = options["name"] or self.__qualname__
        spec.encode_call(runtime, args, kwargs)
        spec.num_returns = options["num_returns"]
        spec.demand = self._demand
        spec.scheduling_key = self._scheduling_key
        if options["runtime_env"] is not None or runtime_env.job_env is not None:
            wire = runtime_env.effective(options["runtime_env"], self._runtime_env_cache, runtime)
            if wire is not None:  # its own workers: its own queue
                spec.runtime_env = wire
                spec.scheduling_key = self._scheduling_key + wire["key"].encode()
        spec.placement = self._placement
        spec.retries_left = options["max_retries"]
        spec.namespace = api._namespace  # (its globals: get_namespace() is a call per task)
        spec.job_id = api._job_id
        spec.retry_exceptions = options["retry_exceptions"]
        if self._streaming:
            return self._submit_streaming(runtime, spec)
        refs = runtime.submit(spec)
        return refs[0] if spec.num_returns == 1 else refs

    def _submit_streaming(self, runtime, spec):
        from pyactor._private import streaming
        threshold = streaming.check_backpressure(
            self._options["_generator_backpressure_num_objects"])
        spec.num_returns = 1  # the item count (or the task's failure)
        spec.retries_left = 0  # a rerun would yield its items twice
        return streaming.submit_streaming(runtime, spec, threshold, runtime.submit)
