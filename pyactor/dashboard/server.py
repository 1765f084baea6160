"""The dashboard's web server: a static page and the JSON API it reads.

    browser --GET / , /static/*-----------------------> the page (package data, no build step)
            --GET /api/* (every 2 s, cookie)----------> Dashboard --ClusterClient--> the nodes
                                                                 --state API-----> list_* rows
                                                                 --runs.py-------> run folders
            --POST /api/actors/{id}/kill, /api/tasks/{id}/cancel (token) --> the cluster

Every route sits behind auth.py's token check. A sampler task asks every node for its metrics
once a second while the server runs, and keeps the last THROUGHPUT_SAMPLES totals of finished
calls: the page's throughput graph is their differences.

The API (all GET unless said; JSON; `limit` caps list lengths):
    /api/cluster        address, node and actor counts, task totals by state, store totals
    /api/nodes          the nodes with resources, store use, workers, actors, metrics URL
    /api/actors /api/tasks /api/objects /api/workers /api/placement_groups   state API rows
    /api/throughput     [[unix time, finished calls per second], ...]
    /api/metrics        every node's merged metrics (the rows of its Prometheus endpoint)
    /api/runs           RL runs and Tune experiments; /api/runs/{id}: curves and trial table
    POST /api/actors/{actor_id}/kill    POST /api/tasks/{task_id}/cancel[?force=1]
"""

from __future__ import annotations

import asyncio
import collections
import importlib.resources
import time

from aiohttp import web

from pyactor.dashboard import auth, runs, state_source
from pyactor.dashboard.cluster_client import ClusterClient
from pyactor.exceptions import PyActorError

THROUGHPUT_SAMPLES = 300
SAMPLE_INTERVAL_S = 1.0
STATIC_FILES = {"index.html": "text/html", "app.js": "application/javascript",
                "style.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Dashboard:
    """What the handlers read: the cluster client, the state source and the samples."""

    def __init__(self, address: str, token: bytes):
        self.address = address
        self.client = ClusterClient(address, token)
        self.state = state_source.StateSource(address, token)
        self.samples: collections.deque = collections.deque(maxlen=THROUGHPUT_SAMPLES)
        self.task_totals: dict[str, float] = {}
        self._sampler: asyncio.Task | None = None

    async def start(self) -> None:
        await self.client.nodes()  # fails here, before serving, if the cluster is unreachable
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        self.client.close()

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except (OSError, PyActorError, asyncio.TimeoutError):
                pass  # the cluster is away for a moment: the graph shows a gap
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def sample(self) -> None:
        metrics = await self.client.node_metrics(await self.client.nodes())
        totals: dict[str, float] = {}
        for snapshot in metrics.values():
            for name, _kind, _description, _keys, _bounds, values in snapshot:
                if name == "pyactor_tasks":
                    for (kind, state), value in values:
                        totals[state] = totals.get(state, 0) + value[0]
        self.task_totals = totals
        self.samples.append((time.time(), totals.get("FINISHED", 0) + totals.get("FAILED", 0)))

    def throughput(self) -> list[list[float]]:
        samples = list(self.samples)
        return [[t1, max(0.0, (n1 - n0) / (t1 - t0))]
                for (t0, n0), (t1, n1) in zip(samples, samples[1:]) if t1 > t0]


def make_app(address: str, token: bytes) -> web.Application:
    dashboard = Dashboard(address, token)
    app = web.Application(middlewares=[auth.make_middleware(token)], client_max_size=64 * 1024)
    app["dashboard"] = dashboard

    async def on_startup(_app):
        await dashboard.start()

    async def on_cleanup(_app):
        await dashboard.close()

    async def on_prepare(_request, response):
        response.headers.pop("Server", None)  # no version banner, for anyone
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.on_response_prepare.append(on_prepare)
    app.add_routes([
        web.get("/", _static), web.get("/static/{name}", _static),
        web.get("/api/cluster", _cluster), web.get("/api/nodes", _nodes),
        web.get("/api/throughput", _throughput), web.get("/api/metrics", _metrics),
        web.get("/api/runs", _runs), web.get("/api/runs/{run_id}", _run),
        web.get("/api/{kind:actors|tasks|objects|workers|placement_groups}", _state_rows),
        web.post("/api/actors/{actor_id}/kill", _kill_actor),
        web.post("/api/tasks/{task_id}/cancel", _cancel_task),
    ])
    return app


def _dashboard(request) -> Dashboard:
    return request.app["dashboard"]


def _limit(request, default: int = 100) -> int:
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer") from None
    if not 1 <= limit <= 10_000:
        raise web.HTTPBadRequest(text="limit must be between 1 and 10000")
    return limit


async def _static(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    body = importlib.resources.files("pyactor.dashboard").joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC_FILES[name], charset="utf-8")


async def _cluster(request: web.Request) -> web.Response:
    dashboard = _dashboard(request)
    nodes = await dashboard.client.nodes()
    alive = [n for n in nodes if n["Alive"]]
    stores = [n.get("ObjectStore") or {} for n in alive]
    return web.json_response({
        "address": dashboard.address, "nodes_alive": len(alive), "nodes": len(nodes),
        "actors": sum(n.get("Actors", 0) for n in alive),
        "workers": sum(n.get("Workers", 0) for n in alive),
        "tasks": dashboard.task_totals,
        "store_used_bytes": sum(s.get("used_bytes", 0) for s in stores),
        "store_capacity_bytes": sum(s.get("capacity_bytes", 0) for s in stores),
        "store_objects": sum(s.get("object_count", 0) for s in stores)})


async def _nodes(request: web.Request) -> web.Response:
    return web.json_response(await _dashboard(request).client.nodes())


async def _throughput(request: web.Request) -> web.Response:
    return web.json_response(_dashboard(request).throughput())


async def _metrics(request: web.Request) -> web.Response:
    client = _dashboard(request).client
    return web.json_response(await client.node_metrics(await client.nodes()))


async def _runs(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(runs.list_runs))


async def _run(request: web.Request) -> web.Response:
    detail = await asyncio.to_thread(runs.run_detail, request.match_info["run_id"])
    if detail is None:
        raise web.HTTPNotFound(text="no such run")
    return web.json_response(detail)


async def _state_rows(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    filters = [tuple(f.split("=", 1)) for f in request.query.getall("filter", []) if "=" in f]
    try:
        rows = await _dashboard(request).state.rows(kind, filters, _limit(request))
    except (TypeError, ValueError) as error:
        raise web.HTTPBadRequest(text=str(error)) from None
    return web.json_response(rows)


def _hex_id(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{what} must be hex") from None


async def _kill_actor(request: web.Request) -> web.Response:
    actor_id = _hex_id(request.match_info["actor_id"], "actor id")
    no_restart = request.query.get("no_restart", "1") != "0"
    try:
        await _dashboard(request).client.kill_actor(actor_id, no_restart)
    except PyActorError as error:  # e.g. the node lost its head
        raise web.HTTPServiceUnavailable(text=str(error)) from None
    return web.json_response({"killed": actor_id.hex(), "no_restart": no_restart})


async def _cancel_task(request: web.Request) -> web.Response:
    task_id = _hex_id(request.match_info["task_id"], "task id")
    dashboard = _dashboard(request)
    owner = await dashboard.state.task_owner(task_id)
    if owner is None:
        raise web.HTTPNotFound(text="no unfinished task with that id")
    force = request.query.get("force", "0") == "1"
    await dashboard.client.cancel_task(task_id, owner, force)
    return web.json_response({"cancelled": task_id.hex(), "force": force})
