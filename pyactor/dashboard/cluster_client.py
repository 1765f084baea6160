"""The dashboard's view of a cluster: authenticated connections to its nodes, as a `cli` peer.

    dashboard --ClusterInfo('nodes')-----> head      (nodes, resources, store, metrics URL)
              --ClusterInfo('metrics')---> each node (its processes' merged metrics: task counts)
              --KillActor----------------> head      (POST /api/actors/{id}/kill)
              --CancelTask---------------> the task's owner (POST /api/tasks/{id}/cancel)

Each connection opens with the cluster's HMAC handshake (transport.py), so the dashboard holds the
token like any other peer. A connection that drops is reopened on the next request.
"""

from __future__ import annotations

import asyncio
import itertools
import os

from pyactor._private import protocol as P
from pyactor._private import transport

REQUEST_TIMEOUT_S = 10.0


class ClusterClient:
    def __init__(self, address: str, token: bytes):
        host, _, port = address.rpartition(":")
        self.head = (host, int(port))
        self.token = token
        self._conns: dict[tuple, transport.Connection] = {}
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)

    async def _connect(self, address: tuple, node: bool = True) -> transport.Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        conn = await transport.connect(address[0], address[1], self.token, self._on_message)
        if node:  # a node wants to know who calls; a runtime (a task's owner) does not
            conn.send(P.encode(P.Register(next(self._ids), "cli", os.getpid(), b"", ["", 0],
                                          "", [])))
        self._conns[address] = conn
        return conn

    def _on_message(self, _conn, raw) -> None:
        message = P.decode(raw)
        if isinstance(message, P.Reply):
            future = self._pending.pop(message.request_id, None)
            if future is not None and not future.done():
                if message.error is not None:
                    future.set_exception(RuntimeError(str(message.error)))
                else:
                    future.set_result(message.value)

    async def request(self, address: tuple, kind: type, *fields):
        conn = await self._connect(address)
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        conn.send(P.encode(kind(request_id, *fields)))
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        finally:
            self._pending.pop(request_id, None)

    async def nodes(self) -> list[dict]:
        return await self.request(self.head, P.ClusterInfo, "nodes")

    async def node_metrics(self, nodes: list[dict]) -> dict[str, list]:
        """node id (hex) -> that node's merged metrics snapshot; nodes that fail are left out."""
        alive = [n for n in nodes if n["Alive"]]
        answers = await asyncio.gather(*[
            self.request((n["NodeManagerAddress"], n["NodeManagerPort"]), P.ClusterInfo,
                         "metrics") for n in alive], return_exceptions=True)
        return {n["NodeID"]: a for n, a in zip(alive, answers) if isinstance(a, list)}

    async def kill_actor(self, actor_id: bytes, no_restart: bool = True) -> None:
        await self.request(self.head, P.KillActor, actor_id, no_restart)

    async def cancel_task(self, task_id: bytes, owner_address: list, force: bool) -> None:
        """Ask the task's owner to cancel it (as a borrower would); the owner answers nothing."""
        conn = await self._connect((owner_address[0], int(owner_address[1])), node=False)
        conn.send(P.encode(P.CancelTask(task_id, force, b"", True)))

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
