"""pyactor: remote tasks and actors for Python, with a shared-memory object store.

    import pyactor as pa

    @pa.remote
    def square(x):
        return x * x

    print(pa.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]

The names mirror Ray's core API; docs/guide.md (in the repository) shows each of them with an
example. They are loaded on first use (PEP 562), so that processes which only need the internals
(the node daemon) start without importing the whole API: that keeps `pa.init()` fast.
"""

from __future__ import annotations

from pyactor._private.lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "init": "pyactor._private.api", "shutdown": "pyactor._private.api",
    "is_initialized": "pyactor._private.api", "remote": "pyactor._private.api",
    "get": "pyactor._private.api", "put": "pyactor._private.api",
    "put_async": "pyactor._private.api",
    "wait": "pyactor._private.api", "cancel": "pyactor._private.api",
    "kill": "pyactor._private.api", "get_actor": "pyactor._private.api",
    "cluster_resources": "pyactor._private.api", "available_resources": "pyactor._private.api",
    "nodes": "pyactor._private.api", "get_runtime_context": "pyactor._private.api",
    "timeline": "pyactor._private.timeline",
    "method": "pyactor._private.actor", "ActorClass": "pyactor._private.actor",
    "ActorHandle": "pyactor._private.actor", "ObjectRef": "pyactor._private.object_ref",
    "ObjectRefGenerator": "pyactor._private.streaming",
    "TaskError": "pyactor.exceptions", "GetTimeoutError": "pyactor.exceptions",
    "TaskCancelledError": "pyactor.exceptions", "WorkerCrashedError": "pyactor.exceptions",
    "ActorDiedError": "pyactor.exceptions", "ObjectLostError": "pyactor.exceptions",
    "ObjectStoreFullError": "pyactor.exceptions", "AuthenticationError": "pyactor.exceptions",
    "InfeasibleResourcesError": "pyactor.exceptions",
}

__all__ = sorted(_EXPORTS) + ["exceptions"]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, submodules=("exceptions",))
