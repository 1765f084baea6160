"""Starting the dashboard: in the foreground (`pyactor dashboard`) or beside a head started by
`pyactor start --head --dashboard-port P` (a process of its own, stopped by `pyactor stop`).

    pyactor dashboard ----------> serve_foreground(): prints the link, serves until Ctrl-C
    pyactor start --head ... ---> start_in_background() --stdin config--> python -m
                                  pyactor.dashboard --> serve_from_stdin() --ready line--> CLI
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

MISSING_AIOHTTP = ("the dashboard needs aiohttp, which is not installed: "
                   "pip install 'pyactor[dashboard]'")


def link(host: str, port: int, token: bytes) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}/?token={token.hex()}"


async def serve(address: str, token: bytes, host: str, port: int, on_ready) -> None:
    """Serve until cancelled or SIGTERM/SIGINT; `on_ready(port)` once listening."""
    from aiohttp import web

    from pyactor.dashboard.server import make_app
    runner = web.AppRunner(make_app(address, token), access_log=None)
    await runner.setup()  # runs on_startup: connects to the cluster or raises
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        on_ready(runner.addresses[0][1])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_foreground(address: str, token: bytes, host: str, port: int) -> int:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print(MISSING_AIOHTTP, file=sys.stderr)
        return 1

    def ready(bound: int) -> None:
        print(f"pyactor dashboard of the cluster at {address}\n"
              f"  open:  {link(host, bound, token)}\n"
              f"  (the link carries the cluster token once; keep it private. Ctrl-C stops.)",
              flush=True)
    try:
        asyncio.run(serve(address, token, host, port, ready))
    except OSError as error:
        print(f"the dashboard could not start: {error}", file=sys.stderr)
        return 1
    return 0


def serve_from_stdin() -> None:
    config = json.loads(sys.stdin.readline())

    def ready(bound: int) -> None:
        sys.stdout.write(json.dumps({"port": bound}) + "\n")
        sys.stdout.flush()
        os.dup2(2, 1)
    asyncio.run(serve(config["address"], bytes.fromhex(config["token_hex"]), config["host"],
                      config["port"], ready))


def start_in_background(address: str, token_hex: str, host: str, port: int) -> str:
    """Start the dashboard process; a line for the `pyactor start` output (its link, or why it
    did not start)."""
    from pyactor._private import session
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return f"dashboard: not started: {MISSING_AIOHTTP}"
    log = session.log_path(f"dashboard-{port}")
    with open(log, "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "pyactor.dashboard"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=log_file, start_new_session=True)
    process.stdin.write((json.dumps({"address": address, "token_hex": token_hex,
                                     "host": host, "port": port}) + "\n").encode())
    process.stdin.close()
    line = process.stdout.readline()
    process.stdout.close()
    if not line:
        process.wait(10)
        return f"dashboard: failed to start (exit code {process.returncode}); see {log}"
    bound = json.loads(line)["port"]
    session.record_node(process.pid, f"{host}:{bound}", False, log, kind="dashboard")
    return f"dashboard: {link(host, bound, bytes.fromhex(token_hex))}"
