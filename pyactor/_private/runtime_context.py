"""`pa.get_runtime_context()`: where the calling code runs, as Ray's RuntimeContext tells it.

Read on demand from the process's runtime (its node), and, in a worker, from the Executor (the
task or actor it is running now); nothing is copied, so a context kept across calls answers for
the moment it is asked. The old dict form (`ctx["node_id"]`, `"address"`, `"namespace"`) still
works, for code written against it.
"""

from __future__ import annotations

import threading


class RuntimeContext:
    """What `get_runtime_context()` returns; the getters follow Ray's (ids as hex strings)."""

    def __init__(self, api_module):
        self._api = api_module

    # ------------------------------------------------------------------ Ray's getters
    def get_node_id(self) -> str:
        return self._api._runtime.node_id.hex()

    def get_worker_id(self) -> str:
        """This process's id (the driver's, or the worker's)."""
        return (self._api._runtime.worker_id or b"").hex()

    def get_job_id(self) -> str:
        """The driver this code works for: its id, as the driver set it at init and as its
        actors and tasks carry it."""
        return self._api._job_id

    def get_actor_id(self) -> str | None:
        """The actor this code runs in, or None in a driver or a plain task."""
        executor = self._executor()
        return executor.actor_id.hex() if executor is not None and executor.actor_id else None

    def get_actor_name(self) -> str | None:
        executor = self._executor()
        return executor.actor_name or None if executor is not None else None

    def get_task_id(self) -> str | None:
        """The task (or actor call) running on this thread, or None in a driver, or in an
        actor's thread pool / event loop where calls interleave."""
        executor = self._executor()
        if executor is None or threading.get_ident() != executor.main_thread_id:
            return None
        task_id = executor.current_task
        return task_id.hex() if task_id else None

    def get_assigned_resources(self) -> dict:
        """The resources this actor was given (its demand, GPU ids as CUDA sees them); {} in a
        driver. A plain task gets its owner's lease, whose size the worker is not told, so
        {} there too, except its GPUs."""
        executor = self._executor()
        if executor is None:
            return {}
        resources = dict(executor.assigned) if executor.actor_id else {}
        if executor.gpu_ids:
            resources["GPU"] = resources.get("GPU", len(executor.gpu_ids))
        return resources

    def get_accelerator_ids(self) -> dict:
        executor = self._executor()
        gpu_ids = executor.gpu_ids if executor is not None and executor.gpu_ids else []
        return {"GPU": [str(g) for g in gpu_ids]}

    def get_placement_group_id(self) -> str | None:
        executor = self._executor()
        placement = executor.placement if executor is not None else None
        return placement[0].hex() if placement else None

    def was_current_actor_reconstructed(self) -> bool:
        executor = self._executor()
        return bool(executor is not None and executor.actor_restarts)

    @property
    def namespace(self) -> str:
        return self._api._namespace

    def get_namespace(self) -> str:
        return self._api._namespace

    @property
    def gcs_address(self) -> str:
        host, port = self._api._runtime.node_host, self._api._runtime.node_port
        return f"{host}:{port}"

    # ------------------------------------------------------------------ the old dict form
    _KEYS = ("node_id", "address", "namespace")

    def __getitem__(self, key: str):
        if key == "node_id":
            return self.get_node_id()
        if key == "address":
            return self._api._runtime.address
        if key == "namespace":
            return self.namespace
        raise KeyError(key)

    def keys(self):
        return list(self._KEYS)

    def get(self, key: str, default=None):
        return self[key] if key in self._KEYS else default

    def __repr__(self) -> str:
        return (f"RuntimeContext(node_id={self.get_node_id()[:12]}..., "
                f"job_id={self.get_job_id()}, actor_id={self.get_actor_id()}, "
                f"namespace={self.namespace!r})")

    def _executor(self):
        return getattr(self._api._runtime, "executor", None)
