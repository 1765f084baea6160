"""Where this user's running nodes are recorded on this host.

`pyactor start` writes the cluster's address and token to a file only this user can read, so that
`pa.init(address="auto")` and `pyactor status` on this host need nothing else, and records each
node it started so that `pyactor stop` can stop them. PYACTOR_SESSION_DIR overrides the folder
(tests use it to keep clusters apart).
"""

from __future__ import annotations

import json
import os


def session_dir() -> str:
    path = os.environ.get("PYACTOR_SESSION_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"pyactor-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _path(name: str) -> str:
    return os.path.join(session_dir(), name)


def _write_private(path: str, data) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _read(path: str, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_cluster_address(address: str, token_hex: str) -> None:
    _write_private(_path("address.json"), {"address": address, "token": token_hex})


def read_cluster_address() -> dict | None:
    return _read(_path("address.json"), None)


def record_node(pid: int, address: str, head: bool, log_path: str, node_id: str = "",
                store_name: str = "") -> None:
    nodes = _read(_path("nodes.json"), [])
    nodes.append({"pid": pid, "address": address, "head": head, "log": log_path,
                  "node_id": node_id, "store_name": store_name})
    _write_private(_path("nodes.json"), nodes)


def recorded_nodes() -> list[dict]:
    return _read(_path("nodes.json"), [])


def forget_nodes() -> None:
    for name in ("nodes.json", "address.json"):
        try:
            os.unlink(_path(name))
        except FileNotFoundError:
            pass


def log_path(port: int) -> str:
    return _path(f"node-{port}.log")
