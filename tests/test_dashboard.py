"""The dashboard (`pyactor start --head --dashboard-port`): the token guards every route, the
link sets a cookie and drops the token from the URL, the JSON API shows the cluster, kill and
cancel work for token holders only, RL runs and Tune experiments are listed with curves, and in
a real browser (headless Chromium) the page shows the node, an actor and growing task counts,
saved as test-artifacts/dashboard.png."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

import pyactor as pa
from pyactor.exceptions import TaskCancelledError

aiohttp = pytest.importorskip("aiohttp")
from pyactor.dashboard import auth  # noqa: E402

from chromium import HeadlessChromium, find_chromium  # noqa: E402
from conftest import wait_until  # noqa: E402
from dashboard_cluster import browser_session, head_with_dashboard, request  # noqa: E402

pytestmark = pytest.mark.slow
ARTIFACTS = os.path.join(os.path.dirname(__file__), os.pardir, "test-artifacts")

GET_ROUTES = ["/", "/static/index.html", "/static/app.js", "/static/style.css", "/api/cluster",
              "/api/nodes", "/api/actors", "/api/tasks", "/api/objects", "/api/workers",
              "/api/placement_groups", "/api/throughput", "/api/metrics", "/api/runs",
              "/api/runs/abc", "/no/such/page"]
POST_ROUTES = ["/api/actors/00ff/kill", "/api/tasks/00ff/cancel"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with head_with_dashboard(str(tmp_path_factory.mktemp("session"))) as running:
        yield running


@pa.remote
class DashCounter:
    def add(self, n):
        return n


@pa.remote
def dash_square(x):
    return x * x


@pa.remote
def wait_to_be_cancelled():
    time.sleep(60)  # the workload: it runs until the dashboard cancels it


def _assert_reveals_nothing(status, headers, body, what):
    assert status == 401, what
    assert body.decode() == auth.UNAUTHORIZED_BODY, what
    assert "Server" not in headers and "Set-Cookie" not in headers, what


def test_every_route_without_the_token_gets_401_and_nothing_else(cluster):
    """The page, its static files, every API route, unknown paths and the POSTs answer 401 with
    one fixed body, without a server banner or cookie, to no token and to wrong ones."""
    wrong = "00" * 32
    for path in GET_ROUTES:
        url = cluster.base + path
        _assert_reveals_nothing(*request(url), path)
        _assert_reveals_nothing(*request(url + "?token=" + wrong), path + " wrong ?token")
        _assert_reveals_nothing(*request(url, headers={"Authorization": f"Bearer {wrong}"}),
                                path + " wrong bearer")
        _assert_reveals_nothing(*request(url, headers={"Cookie": f"{auth.COOKIE}={wrong}"}),
                                path + " forged cookie")
    for path in POST_ROUTES:
        _assert_reveals_nothing(*request(cluster.base + path, "POST"), path)
        _assert_reveals_nothing(*request(cluster.base + path, "POST", headers={
            auth.POST_HEADER: "1", "Cookie": f"{auth.COOKIE}={wrong}"}), path)


def test_the_link_sets_an_httponly_cookie_and_redirects_to_a_url_without_the_token(cluster):
    """The printed link answers 302 to the same page without ?token=, with an HttpOnly,
    SameSite=Strict cookie that is not the token itself; the cookie then opens the page."""
    status, headers, _ = request(cluster.link)
    assert status == 302 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert cluster.token not in cookie
    value = cookie.split(";")[0]
    status, headers, body = request(cluster.base + "/", headers={"Cookie": value})
    assert status == 200 and b"<title>pyactor dashboard</title>" in body
    assert "Server" not in headers and "default-src 'self'" in headers["Content-Security-Policy"]


def test_scripts_read_the_api_with_a_bearer_token(cluster):
    """`Authorization: Bearer <token>` opens the JSON API: /api/nodes lists the head."""
    status, _, body = request(cluster.base + "/api/nodes",
                              headers={"Authorization": f"Bearer {cluster.token}"})
    assert status == 200
    nodes = json.loads(body)
    assert [n["IsHead"] for n in nodes] == [True]
    assert nodes[0]["MetricsExportURL"].startswith("http://127.0.0.1:")


def _get(opener, base, path):
    with opener.open(base + path, timeout=20) as response:
        return json.loads(response.read())


def test_api_shows_actors_tasks_objects_and_task_counts(cluster):
    """A named actor, finished tasks, a stored object and the task totals appear in the API."""
    opener = browser_session(cluster)
    counter = DashCounter.options(name="dash-counter").remote()
    assert pa.get(counter.add.remote(1)) == 1
    assert pa.get([dash_square.remote(i) for i in range(10)]) == [i * i for i in range(10)]
    big = pa.put(b"x" * (1 << 20))

    actors = _get(opener, cluster.base, "/api/actors")
    row = next(a for a in actors if a["name"] == "dash-counter")
    assert row["class_name"].endswith("DashCounter") and row["state"] == "ALIVE"
    tasks = _get(opener, cluster.base, "/api/tasks?limit=1000")
    assert len({t["task_id"] for t in tasks if t["func_or_class_name"].endswith("dash_square")
                and t["state"] == "FINISHED"}) == 10
    objects = _get(opener, cluster.base, "/api/objects?limit=1000")
    assert big.hex() in {o["object_id"] for o in objects}
    assert wait_until(lambda: _get(opener, cluster.base, "/api/cluster")["tasks"].get(
        "FINISHED", 0) >= 11, 10)
    summary = _get(opener, cluster.base, "/api/cluster")
    assert summary["nodes_alive"] == 1 and summary["actors"] >= 1
    status, _, _ = request(cluster.base + "/api/tasks?limit=nope",
                           headers={"Authorization": f"Bearer {cluster.token}"})
    assert status == 400
    pa.kill(counter)


def test_kill_and_cancel_need_the_token_and_work(cluster):
    """A cookie POST without the dashboard's header is refused (no cross-site kill); with it
    the actor dies; a Bearer POST cancels a running task, whose caller gets the error."""
    opener = browser_session(cluster)
    victim = DashCounter.options(name="dash-victim").remote()
    pa.get(victim.add.remote(1))
    actor_id = next(a["actor_id"] for a in _get(opener, cluster.base, "/api/actors")
                    if a["name"] == "dash-victim")
    cookie = next(c for c in opener.handlers if hasattr(c, "cookiejar")).cookiejar
    cookie_header = "; ".join(f"{c.name}={c.value}" for c in cookie)
    kill = f"{cluster.base}/api/actors/{actor_id}/kill"
    assert request(kill, "POST", headers={"Cookie": cookie_header})[0] == 401
    status, _, body = request(kill, "POST", headers={"Cookie": cookie_header,
                                                     auth.POST_HEADER: "1"})
    assert status == 200, body
    assert wait_until(lambda: any(a["actor_id"] == actor_id and a["state"] == "DEAD"
                                  for a in _get(opener, cluster.base, "/api/actors")), 10)

    ref = wait_to_be_cancelled.remote()
    task_id = None

    def running():
        nonlocal task_id
        rows = _get(opener, cluster.base, "/api/tasks?filter=state=RUNNING")
        task_id = next((t["task_id"] for t in rows
                        if t["func_or_class_name"].endswith("wait_to_be_cancelled")), None)
        return task_id is not None
    assert wait_until(running, 10)
    status, _, body = request(f"{cluster.base}/api/tasks/{task_id}/cancel", "POST",
                              headers={"Authorization": f"Bearer {cluster.token}"})
    assert status == 200, body
    with pytest.raises(TaskCancelledError):
        pa.get(ref, timeout=20)


def _trainable(config):
    from pyactor import tune
    for step in range(3):
        tune.report({"loss": config["x"] / (step + 1)})


def test_runs_lists_tune_experiments_and_rl_runs_with_curves(cluster, tmp_path, monkeypatch):
    """A Tune experiment and an RL run register their folders with the session; /api/runs
    lists them and /api/runs/{id} gives the trial table and the curves of their results."""
    from pyactor import tune
    monkeypatch.setenv("PYACTOR_SESSION_DIR", cluster.session_dir)
    tune.Tuner(_trainable, param_space={"x": tune.grid_search([1.0, 2.0])},
               tune_config=tune.TuneConfig(metric="loss", mode="min"),
               run_config=tune.RunConfig(storage_path=str(tmp_path), name="dash-exp",
                                         verbose=0)).fit()

    from pyactor.rl.logger import RunLogger, make_run_dir
    run_dir = make_run_dir(str(tmp_path / "rl"), "PPO", "CartPole-v1")  # as Algorithm does
    logger = RunLogger(run_dir, {"lr": 0.1}, tensorboard=False)
    for i in range(1, 6):
        logger.log({"training_iteration": i, "episode_return_mean": 10.0 * i})
    logger.close()
    with open(os.path.join(run_dir, "result.json"), "a") as f:
        f.write('{"training_iteration": 6, "episode_ret')  # a line being written

    opener = browser_session(cluster)
    runs = {r["name"]: r for r in _get(opener, cluster.base, "/api/runs")}
    assert runs["dash-exp"]["kind"] == "tune" and runs["dash-exp"]["trials"] == 2
    rl_run = runs[os.path.basename(run_dir)]
    assert rl_run["kind"] == "rl"
    experiment = _get(opener, cluster.base, f"/api/runs/{runs['dash-exp']['id']}")
    assert sorted(t["config"]["x"] for t in experiment["trials"]) == [1.0, 2.0]
    for trial in experiment["trials"]:
        assert trial["iterations"] == 3 and trial["curve"]["y"] == "loss"
        assert [p[1] for p in trial["curve"]["points"]] == pytest.approx(
            [trial["config"]["x"] / s for s in (1, 2, 3)])
    detail = _get(opener, cluster.base, f"/api/runs/{rl_run['id']}")
    assert detail["curve"]["points"] == [[i, 10.0 * i] for i in range(1, 6)]
    assert detail["curve"]["x"] == "training_iteration"
    assert request(cluster.base + "/api/runs/nope",
                   headers={"Authorization": f"Bearer {cluster.token}"})[0] == 404


def test_without_aiohttp_the_command_says_how_to_get_it(monkeypatch, capsys):
    """`pyactor dashboard` without aiohttp exits 1 naming the extra to install."""
    import sys

    from pyactor import cli
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    assert cli.main(["dashboard", "--address", "127.0.0.1:1", "--token", "00" * 32]) == 1
    assert "pip install 'pyactor[dashboard]'" in capsys.readouterr().err


def test_import_pyactor_loads_neither_the_dashboard_nor_its_web_library():
    """The dashboard stays out of `import pyactor` (and of every worker)."""
    from conftest import run_python
    result = run_python("import sys, pyactor, pyactor.util\n"
                        "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', "
                        "'pyactor.dashboard', 'prometheus_client'))))")
    assert result.stdout.strip() == "[]", result.stderr


async def test_in_a_browser_a_person_sees_the_node_an_actor_and_task_counts_grow(cluster):
    """Chromium opens the printed link: the token leaves the address bar, and the page shows
    the head node, the named actor with its class, and a finished-task count that is higher on
    a second load (by the cookie alone) after more tasks ran; a screenshot is kept."""
    chromium = find_chromium()
    actor = DashCounter.options(name="browser-actor").remote()
    assert await actor.add.remote(2) == 2
    await asyncio.gather(*[dash_square.remote(i) for i in range(5)])
    node_id = (await asyncio.to_thread(pa.nodes))[0]["NodeID"]
    loaded = "document.body.dataset.loaded === '1'"
    async with HeadlessChromium(chromium) as browser:
        await browser.goto(cluster.link)
        await browser.wait_for(loaded)
        assert await browser.evaluate("location.href") == cluster.base + "/"
        nodes = await browser.text("nodes-table")
        assert node_id[:12] in nodes and "alive" in nodes
        actors = await browser.text("actors-table")
        assert "browser-actor" in actors and "DashCounter" in actors
        finished_before = int(await browser.text("tasks-finished"))
        assert finished_before >= 6

        await asyncio.gather(*[dash_square.remote(i) for i in range(20)])
        opener = browser_session(cluster)
        assert await asyncio.to_thread(wait_until, lambda: _get(opener, cluster.base, (
            "/api/cluster"))["tasks"].get("FINISHED", 0) >= finished_before + 20, 15)
        await browser.goto(cluster.base + "/")
        await browser.wait_for(loaded)
        assert int(await browser.text("tasks-finished")) >= finished_before + 20
        os.makedirs(ARTIFACTS, exist_ok=True)
        screenshot = os.path.join(ARTIFACTS, "dashboard.png")
        await browser.screenshot(screenshot)
        assert os.path.getsize(screenshot) > 10_000
    await asyncio.to_thread(pa.kill, actor)
