"""Workers' output in files: what a worker writes to stdout and stderr, kept on disk.

A worker's output also goes to the drivers (worker_pool.OutputForwarder); the files are for
later, and for `pyactor logs ACTOR_ID_OR_PID [--follow]`. The forwarder's thread writes each
chunk it reads to `<log dir>/worker-<pid>.out` (stdout) or `.err` (stderr); the node names the
folder (`<session dir>/logs/node-<pid>-<id>/`, passed as PYACTOR_WORKER_LOG_DIR).

Rotation: when a file passes MAX_BYTES (PYACTOR_WORKER_LOG_MAX_BYTES, default 10 MiB) it becomes
`worker-<pid>.out.1` (replacing the previous one) and a new file starts, so a worker keeps at
most 2 x MAX_BYTES per stream on disk.
"""

from __future__ import annotations

import os
import time

MAX_BYTES = int(os.environ.get("PYACTOR_WORKER_LOG_MAX_BYTES", str(10 << 20)))
STREAM_SUFFIX = {"stdout": "out", "stderr": "err"}


class RotatingLog:
    """One stream's file; written by one thread (the output forwarder's)."""

    def __init__(self, path: str, max_bytes: int = MAX_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self._file = open(path, "ab", buffering=0)
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        try:
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
            self._file.write(data)
            self._size += len(data)
        except OSError:  # a full disk must not stop the worker's output from flowing
            pass

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.path + ".1")
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0


def open_worker_logs(pid: int) -> dict[str, RotatingLog]:
    """stream -> its log, for this worker; empty when the node names no folder."""
    folder = os.environ.get("PYACTOR_WORKER_LOG_DIR")
    if not folder:
        return {}
    try:
        return {stream: RotatingLog(os.path.join(folder, f"worker-{pid}.{suffix}"))
                for stream, suffix in STREAM_SUFFIX.items()}
    except OSError:
        return {}


def read_log(paths: list[str]) -> bytes:
    """The content of a worker's files of one stream, oldest (rotated) first."""
    out = b""
    for path in sorted(paths, key=lambda p: not p.endswith(".1")):
        try:
            with open(path, "rb") as f:
                out += f.read()
        except OSError:
            pass
    return out


def follow(paths: list[str], write, stop=lambda: False, poll_s: float = 0.2) -> None:
    """Write what is already in `paths` (current files, not rotated ones), then what is
    appended to them, until `stop()` (or Ctrl-C); a file that rotates is reopened."""
    positions = {path: 0 for path in paths}
    while True:
        for path in paths:
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if size < positions[path]:  # rotated: the new file starts at 0
                positions[path] = 0
            if size > positions[path]:
                with open(path, "rb") as f:
                    f.seek(positions[path])
                    data = f.read(size - positions[path])
                positions[path] += len(data)
                write(data)
        if stop():
            return
        time.sleep(poll_s)
