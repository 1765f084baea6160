"""The dashboard's rows of actors, tasks, objects, workers and placement groups: the state API
(pyactor/util/state.py, its async variant, on the server's loop) as JSON-ready dicts.

    GET /api/actors?filter=state=ALIVE&limit=50 --> rows("actors", [("state", "ALIVE")], 50)
        --> await state.list_async("actors", filters=["state=ALIVE"], limit=50, address=...)

The state API reads the token from $PYACTOR_TOKEN when given an address: the dashboard's process
sets it to the token it was started with (its own environment, readable only by this user).
"""

from __future__ import annotations

import dataclasses
import os

KINDS = ("actors", "tasks", "objects", "workers", "placement_groups")


class StateSource:
    def __init__(self, address: str, token: bytes):
        self.address = address
        os.environ["PYACTOR_TOKEN"] = token.hex()

    async def rows(self, kind: str, filters: list[tuple[str, str]], limit: int) -> list[dict]:
        if kind not in KINDS:
            raise ValueError(f"no state rows of kind {kind!r}")
        from pyactor.util import state
        rows = await state.list_async(kind.replace("_", "-"),
                                      filters=[f"{k}={v}" for k, v in filters] or None,
                                      limit=limit, address=self.address)
        return [_jsonable(dataclasses.asdict(row)) for row in rows]

    async def task_owner(self, task_id: bytes) -> list | None:
        """The runtime address of the process that owns an unfinished task, or None."""
        from pyactor.util import state
        tasks = await state.list_async("tasks", filters=[f"task_id={task_id.hex()}"], limit=1,
                                       address=self.address)
        if not tasks or tasks[0].state in ("FINISHED", "FAILED", "CANCELLED"):
            return None
        owners = await state.list_async("workers", filters=[f"pid={tasks[0].owner_pid}"],
                                        limit=None, address=self.address)
        return list(owners[0].address) if owners and owners[0].address else None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and value != value:
        return None
    return value
