"""pyactor: remote tasks and actors for Python, with a shared-memory object store.

    import pyactor as pa

    @pa.remote
    def square(x):
        return x * x

    print(pa.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]

The names mirror Ray's core API; see ../shared/API.md for the contract.
"""

from pyactor import exceptions
from pyactor._private.actor import ActorClass, ActorHandle, method
from pyactor._private.api import (available_resources, cancel, cluster_resources, get,
                                  get_actor, get_runtime_context, init, is_initialized, kill,
                                  nodes, put, remote, shutdown, wait)
from pyactor._private.object_ref import ObjectRef
from pyactor.exceptions import (ActorDiedError, GetTimeoutError, ObjectLostError,
                                ObjectStoreFullError, TaskCancelledError, TaskError,
                                WorkerCrashedError)

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait", "cancel",
    "kill", "get_actor", "cluster_resources", "available_resources", "nodes",
    "get_runtime_context", "ObjectRef", "ActorClass", "ActorHandle", "exceptions", "TaskError",
    "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError", "ActorDiedError",
    "ObjectLostError", "ObjectStoreFullError",
]
