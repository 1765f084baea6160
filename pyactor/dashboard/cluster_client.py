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

from pyactor._private import protocol as P
from pyactor._private.state_client import Link

REQUEST_TIMEOUT_S = 10.0


class ClusterClient:
    def __init__(self, address: str, token: bytes):
        host, _, port = address.rpartition(":")
        self.head = (host, int(port))
        self.token = token
        self._links: dict[tuple, Link] = {}

    async def _link(self, address: tuple, register: bool = True) -> Link:
        link = self._links.get(address)
        if link is None or link.closed:
            link = await Link().open(address[0], address[1], self.token, register=register)
            self._links[address] = link
        return link

    async def request(self, address: tuple, kind: type, *fields):
        link = await self._link(address)
        return await link.request(kind, *fields, timeout_s=REQUEST_TIMEOUT_S)

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
        link = await self._link((owner_address[0], int(owner_address[1])), register=False)
        link.conn.send(P.encode(P.CancelTask(task_id, force, b"", True)))

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
