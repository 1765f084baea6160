"""Starting worker processes fast: a fork server, and the worker's own start-up.

A fresh Python process takes ~150 ms to import what a worker needs; a fork of a process that has
already imported it takes ~2 ms. The node forks one *fork server* before it starts its event loop
(no threads, no loop state to inherit) and asks it for workers over a pipe; each worker is a fork
of that clean process. Like multiprocessing's "forkserver" start method, for the same reasons.

Every process below the node dies with its parent (PR_SET_PDEATHSIG), so a node killed with
SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


class ForkServer:
    """Handle held by the node: `spawn` returns the pid of a new worker."""

    def __init__(self, pid: int, request_fd: int, reply_fd: int):
        self.pid = pid
        self._request = os.fdopen(request_fd, "w", buffering=1)
        self._reply = os.fdopen(reply_fd, "r", buffering=1)
        self._lock = threading.Lock()

    @classmethod
    def start(cls, token: bytes) -> "ForkServer":
        """Fork the server. Call before any thread or event loop exists in this process."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the fork server
            try:
                os.close(request_write)
                os.close(reply_read)
                die_with_parent()
                if os.getppid() != parent_pid:
                    os._exit(0)
                _serve_forks(token, request_read, reply_write)
            finally:
                os._exit(0)
        os.close(request_read)
        os.close(reply_write)
        return cls(pid, request_write, reply_read)

    def spawn(self, worker_id: bytes, node_host: str, node_port: int, env: dict) -> int:
        with self._lock:
            self._request.write(json.dumps({"worker_id": worker_id.hex(), "host": node_host,
                                            "port": node_port, "env": env}) + "\n")
            line = self._reply.readline()
        if not line:
            raise RuntimeError("the worker fork server is gone")
        return int(line)

    def stop(self) -> None:
        try:
            self._request.close()
        except OSError:
            pass
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _serve_forks(token: bytes, request_fd: int, reply_fd: int) -> None:
    # Preload what every worker imports, once, here.
    import cloudpickle  # noqa: F401
    import msgpack  # noqa: F401
    import uvloop  # noqa: F401

    import pyactor._private.worker  # noqa: F401
    from pyactor._private import runtime, store  # noqa: F401

    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # the node's stdin is its lifeline to the driver: do not hold it open
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped automatically
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = os.fdopen(request_fd, "r", buffering=1)
    replies = os.fdopen(reply_fd, "w", buffering=1)
    preloaded_extras = False
    while True:
        if not preloaded_extras and not select.select([requests], [], [], 0.05)[0]:
            # Idle after the first workers: preload what most tasks use, so later workers
            # start with it (kept off the path to the first worker).
            import numpy  # noqa: F401

            import pyactor._private.api  # noqa: F401
            preloaded_extras = True
            continue
        line = requests.readline()
        if not line:
            return
        request = json.loads(line)
        server_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            die_with_parent()
            if os.getppid() != server_pid:  # the server died before the line above took effect
                os._exit(0)
            os.environ.update(request["env"])
            try:
                run_worker(request["host"], request["port"], token,
                           bytes.fromhex(request["worker_id"]))
            finally:
                os._exit(0)
        replies.write(f"{pid}\n")


def run_worker(node_host: str, node_port: int, token: bytes, worker_id: bytes) -> None:
    """The life of a worker process: connect to the node, then run what arrives."""
    from pyactor._private.runtime import Runtime
    from pyactor._private.worker import Executor

    runtime = Runtime(node_host=node_host, node_port=node_port, token=token, kind="worker",
                      worker_id=worker_id)
    runtime.worker_label = f"pid={os.getpid()}"
    forwarder = OutputForwarder(runtime)
    configure_worker_logging()
    # The task endpoint listens where the node does: on its host, reachable by every owner
    # that can reach the node.
    executor = Executor(runtime, node_host)
    runtime.task_address = executor.task_address
    runtime.start()
    forwarder.start()
    import pyactor._private.api as api
    api.attach_worker_runtime(runtime)
    executor.run_forever()


def configure_worker_logging() -> None:
    """With pa.init(logging_level=...), log records at that level (pyactor's and the user's)
    go to the worker's stderr, which the driver shows; otherwise logging stays as Python sets
    it up."""
    level = os.environ.get("PYACTOR_LOG_LEVEL")
    if level:
        import logging
        logging.basicConfig(level=int(level) if level.isdigit() else level,
                            format="%(levelname)s %(name)s: %(message)s")


class OutputForwarder:
    """Sends what the worker writes to fd 1 and 2 to the node, which passes it to drivers.

    Redirecting the file descriptors (not just sys.stdout) also catches output of C code and
    of subprocesses the task starts.
    """

    def __init__(self, runtime):
        self.runtime = runtime
        self.pipes = {}
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            self.pipes[read_fd] = stream
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        from pyactor._private.worker_logs import open_worker_logs
        self.files = open_worker_logs(os.getpid())  # stream -> its log file (worker_logs.py)

    def start(self) -> None:
        threading.Thread(target=self._pump, name="pyactor-output", daemon=True).start()

    def _pump(self) -> None:
        from pyactor._private import protocol as P
        partial = {fd: b"" for fd in self.pipes}
        open_fds = list(self.pipes)
        while open_fds:
            readable, _, _ = select.select(open_fds, [], [])
            for fd in readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.remove(fd)
                    continue
                log_file = self.files.get(self.pipes[fd])
                if log_file is not None:
                    log_file.write(chunk)
                data = partial[fd] + chunk
                *lines, partial[fd] = data.split(b"\n")
                if lines:
                    conn = self.runtime.node_conn
                    try:
                        if conn is not None:
                            conn.send_threadsafe(P.encode(P.Log(
                                self.runtime.worker_label, self.pipes[fd],
                                [line.decode("utf-8", "replace") for line in lines])))
                    except ConnectionError:  # the node is gone (this worker ends with it):
                        pass  # keep reading, so a task that prints never blocks
