"""Simulated nodes spread over several processes, so that the simulator is not the bottleneck.

One process of simulated nodes (sim_cluster.SimCluster) decodes every message its thousands of
nodes receive and answers every HostActor on one core; measured against a real head, it was the
simulator that fell behind. A `SimFleet` runs K child processes (`python -m
pyactor._private.sim_fleet`), each a SimCluster with its share of the nodes, and drives them from
the parent over their stdin/stdout, one JSON object a line:

    parent --{"op": "add", "count", "resources", "follow_load"}--> child: joins its share
    parent --{"op": "kill", "nodes", "silent"}--> child: closes (or silences) those nodes
    parent --{"op": "watch", "nodes"}--> child: answers once a survivor's view shows them dead
    parent --{"op": "spread" | "stats"}--> child: its nodes' actor counts, its own CPU
    child --{"op": "hosted", "items": [[actor, node, when], ...]}--> parent: batched every 10 ms

Every command is answered with its "id". Times are time.monotonic() of the child, which is the
same clock in every process of the host. Ids travel as hex.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time

from pyactor._private.sim_cluster import HeadProcess, SimCluster, SimNode, wait_for_change

HOSTED_FLUSH_S = 0.01


class SimFleet:
    """The parent side: K children, their nodes, and where each actor was last hosted."""

    def __init__(self, head: HeadProcess, processes: int = 2):
        self.head = head
        self.processes = processes
        self.children: list[asyncio.subprocess.Process] = []
        self.node_ids: list[bytes] = []  # in the order they joined
        self.child_of: dict[bytes, int] = {}
        self.alive: dict[bytes, bool] = {}
        self.placements: dict[bytes, bytes] = {}  # actor id -> node id hosting it now
        self.hosted_at: dict[bytes, float] = {}  # actor id -> when it was last hosted
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task] = []

    async def start(self) -> None:
        config = json.dumps({"host": self.head.host, "port": self.head.port,
                             "token": self.head.token.hex()}) + "\n"
        for _ in range(self.processes):
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pyactor._private.sim_fleet",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 24)
            child.stdin.write(config.encode())
            self.children.append(child)
            self._readers.append(asyncio.get_running_loop().create_task(self._read(child)))

    async def _read(self, child) -> None:
        while True:
            line = await child.stdout.readline()
            if not line:
                break
            message = json.loads(line)
            if message.get("op") == "hosted":
                for actor_hex, node_hex, when in message["items"]:
                    actor_id = bytes.fromhex(actor_hex)
                    self.placements[actor_id] = bytes.fromhex(node_hex)
                    self.hosted_at[actor_id] = when
                self._changed.set()
                continue
            future = self._pending.pop(message["id"], None)
            if future is None or future.done():
                continue
            if "error" in message:
                future.set_exception(RuntimeError(f"a simulator process failed: "
                                                  f"{message['error']}"))
            else:
                future.set_result(message)
        for future in list(self._pending.values()):  # the child is gone
            if not future.done():
                future.set_exception(RuntimeError("a simulator process exited"))

    async def _ask(self, index: int, op: str, **fields) -> dict:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        child = self.children[index]
        child.stdin.write((json.dumps({"id": request_id, "op": op, **fields}) + "\n").encode())
        return await future

    async def _ask_all(self, op: str, per_child: list[dict] | None = None) -> list[dict]:
        return await asyncio.gather(*(
            self._ask(i, op, **(per_child[i] if per_child else {}))
            for i in range(len(self.children))))

    async def add_nodes(self, count: int, resources: dict, follow_load: int = 0,
                        step: int = 100) -> list[bytes]:
        """Join `count` nodes, `step` at a time spread over the children (so the head's
        handshakes never queue past its limit); the first `follow_load` follow the load."""
        added: list[bytes] = []
        for start in range(0, count, step):
            size = min(step, count - start)
            shares = [size // self.processes + (1 if i < size % self.processes else 0)
                      for i in range(self.processes)]
            followers = max(0, min(size, follow_load - start))
            fields = []
            for share in shares:
                take = min(share, followers)
                followers -= take
                fields.append({"count": share, "resources": resources, "follow_load": take})
            answers = await self._ask_all("add", fields)
            for index, answer in enumerate(answers):
                for node_hex in answer["nodes"]:
                    node_id = bytes.fromhex(node_hex)
                    self.node_ids.append(node_id)
                    self.child_of[node_id] = index
                    self.alive[node_id] = True
                    added.append(node_id)
        return added

    async def kill(self, node_ids: list[bytes], silent: bool = False) -> None:
        by_child: list[list[str]] = [[] for _ in self.children]
        for node_id in node_ids:
            by_child[self.child_of[node_id]].append(node_id.hex())
            self.alive[node_id] = False
        await self._ask_all("kill", [{"nodes": ids, "silent": silent} for ids in by_child])

    async def watch_dead(self, node_ids: list[bytes], timeout_s: float) -> float | None:
        """When a surviving node's view (the last node of the first child) first showed every
        one of `node_ids` dead; None if not within timeout_s."""
        answer = await self._ask(0, "watch", nodes=[n.hex() for n in node_ids],
                                 timeout_s=timeout_s)
        return answer["when"]

    async def wait_for(self, predicate, timeout_s: float) -> bool:
        """Wait until predicate() holds (checked after each batch of hostings, every 50 ms)."""
        return await wait_for_change(predicate, self._changed, timeout_s)

    async def spread(self) -> dict:
        """Actors per alive node (max, min, stddev), nodes over their resources, offers sent
        back, snapshots pulled after a gap, view rows the nodes were sent (deltas and
        snapshots), nodes that lost the head."""
        answers = await self._ask_all("spread")
        counts = [c for answer in answers for c in answer["counts"]]
        mean = sum(counts) / len(counts)
        return {"total": sum(counts), "max": max(counts), "min": min(counts),
                "stddev": round((sum((c - mean) ** 2 for c in counts) / len(counts)) ** 0.5, 3),
                "over_resources": sum(a["over"] for a in answers),
                "deferred": sum(a["deferred"] for a in answers),
                "pulls": sum(a["pulls"] for a in answers),
                "view_rows_sent": sum(a["view_rows"] for a in answers),
                "join_retries": sum(a["join_retries"] for a in answers),
                "lost_nodes": sum(a["lost"] for a in answers)}

    async def cpu_seconds(self) -> float:
        """CPU time the simulator's children have used (user + system)."""
        return sum(answer["cpu_s"] for answer in await self._ask_all("stats"))

    async def close(self) -> None:
        for child in self.children:
            if child.stdin is not None and not child.stdin.is_closing():
                child.stdin.close()  # the lifeline: the child closes its nodes and exits
        for child in self.children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except asyncio.TimeoutError:
                child.kill()
                await child.wait()
        for reader in self._readers:
            reader.cancel()


# ---------------------------------------------------------------------- the child
class _Child:
    def __init__(self, head: HeadProcess):
        self.cluster = SimCluster(head)
        self.cluster.on_hosted_hook = self._hosted
        self.by_id: dict[bytes, SimNode] = {}
        self.killed: set[bytes] = set()  # closed on command (not lost)
        self._hosted_items: list = []
        self._flush_scheduled = False

    def _send(self, message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def _hosted(self, node: SimNode, actor_id: bytes, when: float) -> None:
        self._hosted_items.append([actor_id.hex(), node.node_id.hex(), when])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(HOSTED_FLUSH_S, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        items, self._hosted_items = self._hosted_items, []
        if items:
            self._send({"op": "hosted", "items": items})

    async def handle(self, message: dict) -> None:
        try:
            reply = await self._answer(message)
        except Exception as error:  # noqa: BLE001 - the parent must hear of it, not wait
            reply = {"error": f"{type(error).__name__}: {error}"}
        self._send({"id": message["id"], **reply})

    async def _answer(self, message: dict) -> dict:
        op, reply = message["op"], {}
        if op == "add":
            nodes = await self.cluster.add_nodes(message["count"], message["resources"],
                                                 follow_load=message["follow_load"])
            for node in nodes:
                self.by_id[node.node_id] = node
            reply["nodes"] = [node.node_id.hex() for node in nodes]
        elif op == "kill":
            for node_hex in message["nodes"]:
                node = self.by_id[bytes.fromhex(node_hex)]
                self.killed.add(node.node_id)
                if message["silent"]:  # the process hangs: heartbeats stop, connection open
                    node.alive = False
                else:
                    node.die()
        elif op == "watch":
            dead = [bytes.fromhex(n) for n in message["nodes"]]
            watcher = self.cluster.alive_nodes()[-1]
            seen = await self.cluster.wait_for(lambda: all(
                not watcher.view.rows.get(node_id, [0] * 5)[4] for node_id in dead),
                message["timeout_s"])
            reply["when"] = time.monotonic() if seen else None
        elif op == "spread":
            self._flush()  # every hosting before the counts
            alive = self.cluster.alive_nodes()
            reply.update(counts=[len(node.hosted) for node in alive],
                         over=sum(1 for node in alive
                                  if any(v < 0 for v in node.available.values())),
                         deferred=sum(node.deferred for node in self.cluster.nodes),
                         pulls=sum(node.pulls for node in self.cluster.nodes),
                         view_rows=sum(node.view_rows for node in self.cluster.nodes),
                         join_retries=self.cluster.join_retries,
                         lost=sum(1 for node in self.cluster.nodes
                                  if not node.alive and node.node_id not in self.killed))
        elif op == "stats":
            reply["cpu_s"] = time.process_time()
        return reply


async def _child_main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = json.loads(await reader.readline())
    head = HeadProcess(None, config["port"], bytes.fromhex(config["token"]))
    head.host = config["host"]
    child = _Child(head)
    tasks = set()
    while True:
        line = await reader.readline()
        if not line:
            break
        task = loop.create_task(child.handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    child.cluster.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(_child_main())
