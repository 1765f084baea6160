"""The errors pyactor raises, in one place.

Every error a user can catch from the runtime derives from `PyActorError`. The classes below say
when each is raised and how it differs from its siblings, so that `except` clauses can be precise.
"""

from __future__ import annotations

import builtins


class PyActorError(Exception):
    """Base of every error raised by the pyactor runtime itself."""


class TaskError(PyActorError):
    """A task or actor method raised; `get` re-raises it in the caller.

    The raised object is an instance of both `TaskError` and the original exception's class, so
    `except ValueError:` still catches a remote `ValueError`. Its message carries the remote
    traceback, and `cause` holds the original exception when it could be unpickled.
    """

    # Classes made by `for_exception`, cached so a repeated remote error type reuses one class.
    _dual_classes: dict[type, type] = {}

    def __init__(self, message: str = "", *, cause: BaseException | None = None,
                 remote_traceback: str = "", function_name: str = ""):
        # Not super(): in a dual class the next __init__ is the user's exception's, which may
        # take other arguments.
        Exception.__init__(self, message)
        self.cause = cause
        self.remote_traceback = remote_traceback
        self.function_name = function_name

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __reduce__(self):
        # The cause travels as (class, args, __dict__): many exception classes cannot be
        # rebuilt by calling them with `args` (an __init__ with extra or keyword arguments).
        cause = self.cause
        cause_parts = None if cause is None else (type(cause), cause.args,
                                                  getattr(cause, "__dict__", None) or None)
        return (_rebuild_task_error, (cause_parts, self.remote_traceback, self.function_name,
                                      str(self)))

    @classmethod
    def for_exception(cls, cause: BaseException | None, remote_traceback: str,
                      function_name: str = "") -> "TaskError":
        """Build the error `get` raises for `cause`, raised remotely with `remote_traceback`."""
        message = (f"{function_name or 'task'} failed remotely:\n{remote_traceback.rstrip()}"
                   if remote_traceback else f"{function_name or 'task'} failed remotely")
        error_class = cls._dual_class(type(cause)) if cause is not None else cls
        try:
            error = error_class.__new__(error_class)
            TaskError.__init__(error, message, cause=cause, remote_traceback=remote_traceback,
                               function_name=function_name)
            if cause is not None:
                # Keep the original's attributes (errno, filename, custom fields) reachable.
                for key, value in getattr(cause, "__dict__", {}).items():
                    error.__dict__.setdefault(key, value)
        except Exception:  # an exotic exception class that cannot be mixed in
            error = cls(message, cause=cause, remote_traceback=remote_traceback,
                        function_name=function_name)
        error.__cause__ = cause
        return error

    @classmethod
    def _dual_class(cls, original: type) -> type:
        if issubclass(original, TaskError) or not issubclass(original, Exception):
            return cls
        dual = cls._dual_classes.get(original)
        if dual is None:
            try:
                dual = type(f"TaskError({original.__name__})", (cls, original),
                            {"__module__": original.__module__,
                             "__init__": TaskError.__init__, "__str__": TaskError.__str__,
                             "__reduce__": TaskError.__reduce__})
            except TypeError:  # incompatible layouts (e.g. some C exception types)
                dual = cls
            cls._dual_classes[original] = dual
        return dual


def _rebuild_task_error(cause, remote_traceback, function_name, message):
    if isinstance(cause, tuple):
        cause_class, args, state = cause
        cause = cause_class.__new__(cause_class, *args)  # no __init__: see __reduce__
        cause.args = args
        if state:
            cause.__dict__.update(state)
    error = TaskError.for_exception(cause, remote_traceback, function_name)
    error.args = (message,)
    return error


class GetTimeoutError(PyActorError, builtins.TimeoutError):
    """`get` (or `AsyncResult.get`) gave up after its timeout; the work itself goes on."""


class TaskCancelledError(PyActorError):
    """The task was cancelled with `pa.cancel` before it produced a value."""


class WorkerCrashedError(PyActorError):
    """The process running a task died (os._exit, a signal, the OOM killer) and retries ran out.

    Differs from `TaskError`: the task did not raise, its process vanished.
    """


class ActorDiedError(PyActorError):
    """The actor is dead: killed, crashed past `max_restarts`, its `__init__` failed, or its node
    was lost. Calls to it fail with this error instead of hanging."""


class ObjectLostError(PyActorError):
    """An object's only copy is gone (its node died) and it could not be rebuilt from lineage."""


class ObjectStoreFullError(PyActorError, MemoryError):
    """The shared-memory store cannot fit an object even after evicting what may be evicted.

    `requested_bytes`, `used_bytes` and `capacity_bytes` say how far off it was.
    """

    def __init__(self, message: str, requested_bytes: int = 0, used_bytes: int = 0,
                 capacity_bytes: int = 0):
        super().__init__(message)
        self.requested_bytes = requested_bytes
        self.used_bytes = used_bytes
        self.capacity_bytes = capacity_bytes

    def __reduce__(self):
        return (type(self), (self.args[0], self.requested_bytes, self.used_bytes,
                             self.capacity_bytes))


class ObjectStoreError(PyActorError):
    """The store refused an operation for a reason other than space (unknown id, an object in the
    wrong state, a corrupt or missing segment). The message names the operation and the reason."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return (type(self), (self.args[0], self.code))


class InfeasibleResourcesError(PyActorError, ValueError):
    """A task or actor asks for resources that no node has in total (more CPUs, GPUs or custom
    resources than exist), so it could never run; the message names what it asked for and what
    exists. Differs from waiting: resources that exist but are busy just make the task queue."""


class PlacementGroupRemovedError(PyActorError):
    """The placement group a task or actor was scheduled into was removed (or never existed):
    work still waiting for its bundles fails with this; work running in them was killed."""


class RuntimeEnvSetupError(PyActorError):
    """A worker could not set up the runtime_env its task or actor asked for (a package that
    could not be fetched or unpacked); the work fails with this instead of running elsewhere."""


class AuthenticationError(PyActorError):
    """A connection did not prove it holds the cluster token (a wrong or missing token)."""


class ProtocolError(PyActorError):
    """A peer sent a frame that is not a valid pyactor message; that connection is closed."""


__all__ = [
    "PyActorError", "TaskError", "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError",
    "ActorDiedError", "ObjectLostError", "ObjectStoreFullError", "ObjectStoreError",
    "AuthenticationError", "ProtocolError", "InfeasibleResourcesError",
    "PlacementGroupRemovedError", "RuntimeEnvSetupError",
]
