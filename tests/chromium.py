"""Headless Chromium driven over the DevTools protocol (a websocket, with aiohttp), for tests
that check what a person sees in the dashboard.

    HeadlessChromium(binary) --start--> chromium --headless --remote-debugging-port=0
        reads <profile>/DevToolsActivePort --ws--> Target.createTarget + attachToTarget
        goto(url) / text() / wait_for(js) / screenshot(path) --> Page.*, Runtime.evaluate

One browser serves several page loads (a start costs seconds). Closing it kills its whole
process group and removes its profile folder. Chromium comes from the system packages: `make
test` installs it when missing (scripts/install_chromium.sh); find_chromium() runs that script
too, and skips the test, saying why, only when it cannot install it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    def which():
        return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if which() is None:
        setup = subprocess.run(["sh", os.path.join(ROOT, "scripts", "install_chromium.sh")],
                               capture_output=True, text=True, timeout=900)
        if which() is None:
            pytest.skip(f"no Chromium, and it could not be installed: {setup.stderr.strip()}")
    return which()


class HeadlessChromium:
    def __init__(self, binary: str):
        self.binary = binary
        self.profile = ""
        self.process: subprocess.Popen | None = None
        self._http = None
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._session = ""

    async def __aenter__(self) -> "HeadlessChromium":
        import aiohttp
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        scratch = os.path.join(self.profile, "tmp")  # its temporary files go with the profile
        os.mkdir(scratch)
        try:
            self.process = subprocess.Popen(
                [self.binary, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                 "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                 "--window-size=1280,1700", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "TMPDIR": scratch})
            path = await self._devtools_path()
            self._http = aiohttp.ClientSession()
            self._ws = await self._http.ws_connect(f"ws://127.0.0.1{path}", max_msg_size=0)
            self._reader = asyncio.get_running_loop().create_task(self._read())
            target = await self.send("Target.createTarget", {"url": "about:blank"}, page=False)
            attached = await self.send("Target.attachToTarget", {
                "targetId": target["targetId"], "flatten": True}, page=False)
            self._session = attached["sessionId"]
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _devtools_path(self, timeout_s: float = 60) -> str:
        """":PORT/devtools/browser/ID" from the file Chromium writes once it listens."""
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            try:
                with open(port_file) as f:
                    lines = f.read().split("\n")
                if len(lines) >= 2 and lines[1]:
                    return f":{lines[0]}{lines[1]}"
            except FileNotFoundError:
                pass
            await asyncio.sleep(0.05)  # polling another process's file
        raise TimeoutError("chromium did not open its DevTools port")

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id"), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))

    async def send(self, method: str, params: dict | None = None, page: bool = True) -> dict:
        message_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        message = {"id": message_id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self._session
        await self._ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 60)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def evaluate(self, expression: str):
        answer = await self.send("Runtime.evaluate", {"expression": expression,
                                                      "returnByValue": True})
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 30) -> None:
        """Poll the page (another process) until the expression is true."""
        deadline = time.monotonic() + timeout_s
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never made {expression!r} true")
            await asyncio.sleep(0.05)

    async def text(self, element_id: str) -> str:
        """What a person reads in the element (its rendered text)."""
        return await self.evaluate(f"document.getElementById({json.dumps(element_id)})"
                                   f"?.innerText ?? ''")

    async def screenshot(self, path: str) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png",
                                                          "captureBeyondViewport": True})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    async def __aexit__(self, *exc) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
