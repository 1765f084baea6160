"""The node's side of the state API (pyactor/util/state.py): answers StateQuery messages.

A client (a driver's state call, the `pyactor` command) asks every node of the cluster; each
node answers for itself, and the head also for the cluster-wide tables:

    client --StateQuery('node', sections)--> each node --StateQuery('process')--> its drivers
                                                                                 and workers
           <--Reply(snapshot)---------------  node: its workers, its store's objects (with the
                                              pids pinning them), each process's USS/PSS and
                                              the store bytes it maps, + the processes' answers
    client --StateQuery('actors')--> any node (forwarded to the head): the head's actor table

Nothing here runs unless someone asks: the processes answer from what they record anyway
(task_events.py, their reference tables; process_state.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time

from pyactor._private import protocol as P

logger = logging.getLogger("pyactor.node")

# How long a node waits for each of its processes to answer (a process whose IO thread is
# stuck is reported as not answering rather than holding the whole query).
PROCESS_ANSWER_TIMEOUT_S = 5.0


class NodeStateService:
    def __init__(self, node):
        self.node = node
        self._pending: dict[int, asyncio.Future] = {}

    # ------------------------------------------------------------------ messages
    def on_query(self, conn, message: P.StateQuery) -> None:
        if type(message.options) is not dict:
            raise P.ProtocolError("a StateQuery's options must be a map")
        node = self.node
        if message.what in ("actors",):
            if node.directory is None:
                node._forward_to_head(conn, message)
                return
            node._reply(conn, message.request_id, self.actor_rows())
        elif message.what == "node":
            asyncio.get_running_loop().create_task(self._answer_node(conn, message))
        else:
            node._reply(conn, message.request_id,
                        error=["ValueError", f"unknown state query {message.what!r}"])

    def on_reply(self, message: P.Reply) -> bool:
        """A process answered one of our queries (True), or the reply is someone else's."""
        future = self._pending.pop(message.request_id, None)
        if future is None:
            return False
        if not future.done():
            if message.error is not None:
                future.set_exception(RuntimeError(str(message.error)))
            else:
                future.set_result(message.value)
        return True

    # ------------------------------------------------------------------ the head's tables
    def actor_rows(self) -> list[dict]:
        rows = []
        for actor in self.node.directory.actors.values():
            try:
                spec = pickle.loads(actor.spec)
            except Exception:  # noqa: BLE001 - a spec from another version: show what we have
                spec = {}
            rows.append({
                "actor_id": actor.actor_id.hex(), "state": actor.state.upper(),
                "name": actor.name, "namespace": actor.namespace,
                "class_name": spec.get("class_name", ""),
                "node_id": actor.node_id.hex() if actor.node_id else "",
                "address": actor.address, "incarnation": actor.incarnation,
                "restarts": actor.restarts, "max_restarts": actor.max_restarts,
                "death_cause": actor.death_cause, "detached": actor.detached,
                "owner": list(actor.owner), "resources": actor.demand,
                "placement_group_id": actor.placement[0].hex() if actor.placement else "",
                "created_at": actor.created_at, "started_at": actor.started_at,
                "ended_at": actor.ended_at})
        return rows

    # ------------------------------------------------------------------ this node
    async def _answer_node(self, conn, message: P.StateQuery) -> None:
        try:
            value = await self.node_snapshot(message.options)
        except Exception as error:  # noqa: BLE001 - the asker gets the reason
            logger.exception("state query failed")
            self.node._reply(conn, message.request_id,
                             error=["PyActorError", f"state query failed: {error}"])
            return
        self.node._reply(conn, message.request_id, value)

    async def node_snapshot(self, options: dict) -> dict:
        node = self.node
        sections = set(options.get("sections") or ())
        snapshot = {"node_id": node.node_id.hex(), "address": node.address,
                    "is_head": node.is_head, "store_name": node.store_name,
                    "time": time.time(), "workers": self.worker_rows()}
        if node.store is not None:
            import dataclasses
            snapshot["store"] = dataclasses.asdict(node.store.stats())
        if "store_objects" in sections and node.store is not None:
            snapshot["store_objects"] = [
                {**row, "object_id": row["object_id"].hex(),
                 "pins": [[pid, count] for pid, count in row["pins"].items()]}
                for row in node.store.list_objects()]
            spiller = getattr(node, "spiller", None)
            if spiller is not None:  # on this node's disk, out of its store (spilling.py)
                snapshot["spilled_objects"] = {object_id.hex(): size for object_id, size
                                               in list(spiller.spilled.items())}
        if "process_memory" in sections:
            snapshot["process_memory"] = {
                str(row["pid"]): process_memory(row["pid"], node.store_name)
                for row in snapshot["workers"] if row["pid"] > 0 and row["state"] != "DEAD"}
        process_sections = sorted(sections & {"tasks", "objects"})
        if process_sections:
            snapshot["processes"] = await self._ask_processes(
                {**options, "sections": process_sections})
        return snapshot

    def worker_rows(self) -> list[dict]:
        node = self.node
        now_wall, now_mono = time.time(), time.monotonic()
        rows = []
        for worker in node.workers.values():
            rows.append({
                "worker_id": worker.worker_id.hex(), "kind": "worker", "pid": worker.pid,
                "state": worker.state.upper(),
                "actor_id": worker.actor_id.hex() if worker.actor_id else "",
                "address": worker.runtime_address or [],
                "started_at": now_wall - (now_mono - worker.started_at),
                "log_files": worker_log_files(node.log_dir, worker.pid)})
        for conn, kind in node.clients.items():
            if kind == "driver" and not conn.closed:
                rows.append({"worker_id": "", "kind": "driver",
                             "pid": node.client_pid.get(conn, 0), "state": "ALIVE",
                             "actor_id": "", "address": node.client_address.get(conn) or [],
                             "started_at": 0.0, "log_files": []})
        return rows

    async def _ask_processes(self, options: dict) -> list[dict]:
        node = self.node
        conns = [conn for conn, kind in node.clients.items()
                 if kind in ("driver", "worker") and not conn.closed]
        answers = await asyncio.gather(*(self._ask(conn, options) for conn in conns))
        return [answer for answer in answers if answer is not None]

    async def _ask(self, conn, options: dict) -> dict | None:
        request_id = next(self.node._forward_ids)  # shared: replies from the head use it too
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            conn.send(P.encode(P.StateQuery(request_id, "process", options)))
            return await asyncio.wait_for(future, PROCESS_ANSWER_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - a process that died or hangs
            return {"pid": self.node.client_pid.get(conn, 0), "error": str(error) or
                    type(error).__name__, "kind": self.node.clients.get(conn, "")}
        finally:
            self._pending.pop(request_id, None)


def process_memory(pid: int, store_name: str) -> dict:
    """A process's memory from /proc: USS (pages only it maps), PSS (shared pages divided
    among their mappers), RSS, and how much of the store's segment it has touched (RSS and
    PSS of that mapping), so store pages are not counted once per process."""
    out = {"rss": 0, "pss": 0, "uss": 0, "swap": 0, "store_rss": 0, "store_pss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = _smaps_fields(f)
        out["rss"] = fields.get("Rss", 0)
        out["pss"] = fields.get("Pss", 0)
        out["uss"] = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        out["swap"] = fields.get("Swap", 0)
        if store_name:
            out["store_rss"], out["store_pss"] = _store_mapping(pid, store_name)
    except OSError as error:
        out["error"] = str(error)
    return out


def _smaps_fields(lines) -> dict:
    fields = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = fields.get(name, 0) + int(parts[0]) * 1024
    return fields


def _store_mapping(pid: int, store_name: str) -> tuple[int, int]:
    """(RSS, PSS) bytes of the store segment's mapping in process `pid`."""
    rss = pss = 0
    inside = False
    suffix = "/" + store_name
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(suffix) or line.rstrip().endswith(
                    suffix + " (deleted)")
                continue
            if inside:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
    return rss, pss


def worker_log_files(log_dir: str | None, pid: int) -> list[str]:
    """The log files of a worker (its stdout and stderr, and their rotated halves)."""
    if not log_dir or pid <= 0:
        return []
    names = [f"worker-{pid}.{stream}{suffix}" for stream in ("out", "err")
             for suffix in (".1", "")]
    return [os.path.join(log_dir, name) for name in names
            if os.path.exists(os.path.join(log_dir, name))]
