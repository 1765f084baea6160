"""A head started by `pyactor start --head --dashboard-port 0` in a session folder of its own,
with this test process connected as its driver: shared by the dashboard's test modules."""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

import pyactor as pa


@dataclass
class DashboardCluster:
    address: str
    token: str
    link: str  # the link `pyactor start` printed, with ?token=
    base: str  # http://127.0.0.1:PORT
    session_dir: str


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyactor.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env)


@contextlib.contextmanager
def head_with_dashboard(session_dir: str):
    env = {**os.environ, "PYACTOR_SESSION_DIR": session_dir}
    env.pop("PYACTOR_TOKEN", None)
    started = run_cli("start", "--head", "--port", "0", "--num-cpus", "2",
                      "--object-store-memory", str(128 << 20), "--dashboard-port", "0", env=env)
    try:
        assert started.returncode == 0, started.stderr
        address = re.search(r"head node at (\S+) ", started.stdout).group(1)
        token = re.search(r"token:\s+(\w+)", started.stdout).group(1)
        link = re.search(r"dashboard: (http://\S+)", started.stdout).group(1)
        base = link.split("/?", 1)[0]
        if pa.is_initialized():
            pa.shutdown()
        pa.init(address=address, token=token)
        yield DashboardCluster(address, token, link, base, session_dir)
    finally:
        if pa.is_initialized():
            pa.shutdown()
        stopped = run_cli("stop", env=env)
        assert stopped.returncode == 0, stopped.stderr


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def request(url: str, method: str = "GET", headers: dict | None = None,
            opener: urllib.request.OpenerDirector | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) without raising on 4xx/5xx and without following redirects."""
    opener = opener or urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=b"" if method == "POST" else None)
    try:
        with opener.open(req, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def browser_session(cluster: DashboardCluster) -> urllib.request.OpenerDirector:
    """An opener holding the cookie the link's redirect set (as a browser would)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(cluster.link, timeout=20) as response:
        assert response.status == 200 and "token=" not in response.url
    return opener
