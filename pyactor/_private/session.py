"""Where this user's running nodes are recorded on this host.

`pyactor start` writes the cluster's address and token to a file only this user can read, so that
`pa.init(address="auto")` and `pyactor status` on this host need nothing else, and records each
node it started so that `pyactor stop` can stop them. PYACTOR_SESSION_DIR overrides the folder
(tests use it to keep clusters apart).
"""

from __future__ import annotations

import json
import os


def session_dir(create: bool = True) -> str:
    path = os.environ.get("PYACTOR_SESSION_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"pyactor-{os.getuid()}")
    if create:
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


def cluster_recorded() -> bool:
    """Whether `pyactor start --head` recorded a cluster on this host (creates nothing)."""
    return os.path.exists(os.path.join(session_dir(create=False), "address.json"))


def record_node(pid: int, address: str, head: bool, log_path: str, node_id: str = "",
                store_name: str = "", spill_dir: str = "", kind: str = "node") -> None:
    """Record a process `pyactor stop` stops: a node, or (kind 'dashboard') a dashboard."""
    nodes = _read(_path("nodes.json"), [])
    nodes.append({"pid": pid, "address": address, "head": head, "log": log_path,
                  "node_id": node_id, "store_name": store_name, "spill_dir": spill_dir,
                  "kind": kind})
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


def parse_token(token, source: str) -> bytes:
    """The cluster token as the bytes the handshake uses, from the hex text `pyactor start
    --head` prints (a str, or those characters as bytes) or from the raw token bytes.

    `source` says where it came from (token=..., $PYACTOR_TOKEN, the token file), so that a
    missing, empty or garbled token raises AuthenticationError naming it, with the advice a
    wrong token gets.
    """
    from pyactor._private.transport import _TOKEN_HINT
    from pyactor.exceptions import AuthenticationError
    if isinstance(token, (bytes, bytearray, memoryview)):
        raw = bytes(token)
        try:
            return bytes.fromhex(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            if raw:
                return raw  # the token itself (transport.new_token()), not its hex text
    elif not isinstance(token, str) and token is not None:
        raise TypeError(f"the cluster token must be a str (its hex text) or bytes, "
                        f"got {type(token).__name__}")
    if not token:
        raise AuthenticationError(f"no cluster token was given ({source} is empty); "
                                  f"{_TOKEN_HINT}")
    try:
        return bytes.fromhex(token)
    except ValueError:
        raise AuthenticationError(f"the cluster token from {source} is not the hex text "
                                  f"`pyactor start --head` printed; {_TOKEN_HINT}") from None
