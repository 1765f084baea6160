"""Asking a cluster for its state: connect to a node, then to every node, gather the answers.

Used by pyactor/util/state.py (and so by the `pyactor list|summary|memory|logs` commands and
`pa.timeline`). The client opens its own authenticated connections, on an event loop of its own
(a thread of its own when the caller already runs one), so it works the same in a driver, in a
task, in the command line (no runtime) and under a web server's loop:

    client --ClusterInfo('nodes')--> the node it knows --> the nodes' addresses
    client --StateQuery('node', sections)--> every alive node, at once (state_service.py)
    client --StateQuery('actors')--> the node it knows (the head answers)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from typing import Any

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor.exceptions import PyActorError

QUERY_TIMEOUT_S = 30.0


def resolve(address: str | None, token=None) -> tuple[str, int, bytes]:
    """(host, port, token) of a node to ask: this process's node when pyactor is initialized
    and no address is given, else the address ("host:port" or "auto") as pa.init takes it."""
    from pyactor._private import api
    runtime = api._runtime
    if address is None and runtime is not None:
        return runtime.node_host, runtime.node_port, runtime.token
    return api._resolve_address(address or "auto", token)


class Link:
    """One authenticated connection with request/reply matching (also the dashboard's)."""

    def __init__(self):
        self.conn = None
        self.waiting: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)

    @property
    def closed(self) -> bool:
        return self.conn is None or self.conn.closed

    async def open(self, host: str, port: int, token: bytes, register: bool = True) -> "Link":
        """register: say who calls, as a node wants; a runtime (a task's owner) does not."""
        self.conn = await transport.connect(host, port, token, self._on_message,
                                            on_close=self._on_close)
        if register:
            self.conn.send(P.encode(P.Register(next(self.ids), "cli", os.getpid(), b"",
                                               ["", 0], "", [])))
        return self

    def _on_message(self, _conn, raw) -> None:
        message = P.decode(raw)
        if isinstance(message, P.Reply):
            future = self.waiting.pop(message.request_id, None)
            if future is not None and not future.done():
                if message.error is not None:
                    from pyactor._private.runtime import _error_from_reply
                    future.set_exception(_error_from_reply(message.error))
                else:
                    future.set_result(message.value)

    def _on_close(self, _conn, reason) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(f"the node closed the connection: "
                                                     f"{reason or 'closed'}"))
        self.waiting.clear()

    async def request(self, kind: type, *fields, timeout_s: float = QUERY_TIMEOUT_S) -> Any:
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        self.conn.send(P.encode(kind(request_id, *fields)))
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self.waiting.pop(request_id, None)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


async def _gather(host: str, port: int, token: bytes, sections: list[str], options: dict,
                  actors: bool, groups: bool) -> dict:
    first = await Link().open(host, port, token)
    links = [first]
    try:
        nodes = await first.request(P.ClusterInfo, "nodes")
        out: dict = {"nodes": nodes, "snapshots": [], "actors": None, "groups": None}
        if actors:
            out["actors"] = await first.request(P.StateQuery, "actors", {})
        if groups:
            out["groups"] = await first.request(P.PlacementGroupInfo, b"", "", "")
        if sections is not None:
            async def ask(node: dict) -> dict:
                address = (node["NodeManagerAddress"], node["NodeManagerPort"])
                try:
                    if address == (host, port):
                        link = first
                    else:
                        link = await Link().open(address[0], address[1], token)
                        links.append(link)
                    return await link.request(P.StateQuery, "node",
                                              {**options, "sections": sections})
                except Exception as error:  # noqa: BLE001 - one node down: say so, go on
                    return {"node_id": node["NodeID"], "error": f"{type(error).__name__}: "
                                                                f"{error}"}
            alive = [node for node in nodes if node["Alive"]]
            out["snapshots"] = list(await asyncio.gather(*(ask(node) for node in alive)))
        return out
    finally:
        for link in links:
            link.close()


async def gather_async(sections: list[str] | None, *, address: str | None = None,
                       token=None, options: dict | None = None, actors: bool = False,
                       groups: bool = False) -> dict:
    """`gather` on the caller's event loop."""
    host, port, token_bytes = resolve(address, token)
    try:
        return await _gather(host, port, token_bytes, sections, options or {}, actors, groups)
    except (ConnectionRefusedError, OSError) as error:
        if isinstance(error, (TimeoutError, PermissionError)):
            raise
        raise PyActorError(f"could not reach the cluster: {error}") from error


def gather(sections: list[str] | None, *, address: str | None = None, token=None,
           options: dict | None = None, actors: bool = False, groups: bool = False) -> dict:
    """Ask the cluster: {"nodes": pa.nodes() rows, "snapshots": one per alive node (when
    sections is not None), "actors": the head's actor rows, "groups": placement groups}."""
    coroutine = gather_async(sections, address=address, token=token, options=options,
                             actors=actors, groups=groups)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(coroutine)
    # Called from a running loop (a coroutine, a web handler): run ours in a thread.
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = _run(coroutine)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = error
    thread = threading.Thread(target=run, name="pyactor-state", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _run(coroutine):
    import uvloop
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()
