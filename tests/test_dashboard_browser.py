"""The dashboard in a real browser: headless Chromium loads the printed link, and the page shows
the node, an actor by its name and class, and a task count that grows between two loads; a
screenshot is kept in test-artifacts/dashboard.png.

Chromium comes from the system packages: `make test` installs it when missing
(scripts/install_chromium.sh), and so does this module when run alone; it skips only when that
is impossible, saying why."""

from __future__ import annotations

import html.parser
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

import pyactor as pa

pytest.importorskip("aiohttp")
from tests.conftest import wait_until  # noqa: E402
from tests.dashboard_cluster import head_with_dashboard  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        setup = subprocess.run(["sh", os.path.join(ROOT, "scripts", "install_chromium.sh")],
                               capture_output=True, text=True, timeout=600)
        found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
        if found is None:
            pytest.skip(f"no Chromium and it could not be installed: {setup.stderr.strip()}")
    return found


def load_page(chromium: str, url: str, screenshot: str | None = None) -> str:
    """The page's DOM after its scripts ran (Chromium's virtual time); a fresh profile each
    time, removed after, and every Chromium process of the run killed (its own group)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                   f"--user-data-dir={profile}", "--window-size=1280,1700",
                   "--virtual-time-budget=6000", "--dump-dom"]
        if screenshot:
            command.append(f"--screenshot={screenshot}")
        process = subprocess.Popen([*command, url], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = process.communicate(timeout=90)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        assert process.returncode == 0, err[-2000:]
        return out


class TextById(html.parser.HTMLParser):
    """The text inside each element with an id (tables: the text of all their cells)."""

    def __init__(self):
        super().__init__()
        self.open: list[tuple[str, str | None]] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        if tag in ("meta", "link", "br", "img", "input"):
            return
        self.open.append((tag, dict(attrs).get("id")))

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, element_id in self.open:
            if element_id:
                self.text[element_id] = self.text.get(element_id, "") + data + " "


def visible(dom: str) -> dict[str, str]:
    parser = TextById()
    parser.feed(dom)
    return parser.text


@pa.remote
class BrowserActor:
    def ping(self):
        return "pong"


@pa.remote
def tick(i):
    return i


def test_a_person_sees_the_node_an_actor_and_growing_task_counts(tmp_path):
    """Chromium loads the link; the page shows the head node's id, the named actor with its
    class, and the finished-task count, which is higher on a second load after more tasks."""
    chromium = find_chromium()
    with head_with_dashboard(str(tmp_path / "session")) as cluster:
        actor = BrowserActor.options(name="browser-actor").remote()
        assert pa.get(actor.ping.remote()) == "pong"
        pa.get([tick.remote(i) for i in range(5)])
        node_id = pa.nodes()[0]["NodeID"]

        first = visible(load_page(chromium, cluster.link))
        assert node_id[:12] in first["nodes-table"]
        assert "browser-actor" in first["actors-table"]
        assert "BrowserActor" in first["actors-table"]
        assert "alive" in first["nodes-table"]
        finished_before = int(first["tasks-finished"])
        assert finished_before >= 6

        pa.get([tick.remote(i) for i in range(20)])
        from tests.dashboard_cluster import browser_session
        opener = browser_session(cluster)

        def counted():
            import json
            with opener.open(cluster.base + "/api/cluster", timeout=10) as response:
                return json.loads(response.read())["tasks"].get("FINISHED", 0) >= \
                    finished_before + 20
        assert wait_until(counted, 15)
        os.makedirs(ARTIFACTS, exist_ok=True)
        screenshot = os.path.join(ARTIFACTS, "dashboard.png")
        second = visible(load_page(chromium, cluster.link, screenshot))
        assert int(second["tasks-finished"]) >= finished_before + 20
        assert os.path.getsize(screenshot) > 10_000
        pa.kill(actor)
