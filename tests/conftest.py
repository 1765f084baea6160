"""Shared fixtures: a running pyactor for runtime tests, and checks that nothing leaks.

`pa_module` starts one local node per test module (starting one per test would cost ~0.25 s
each); `pa_fresh` gives a test its own node when it kills or reconfigures things. After the whole
session, no pyactor process and no shared-memory segment may remain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import pyactor as pa


# Every process this test run starts (drivers, nodes, fork servers, workers) inherits this
# marker, so the leak checks below ignore pyactor processes of other runs on the same host.
TEST_RUN_MARKER = f"PYACTOR_TEST_RUN={os.getpid()}-{time.monotonic_ns()}"
os.environ["PYACTOR_TEST_RUN"] = TEST_RUN_MARKER.split("=", 1)[1]

# Every temporary file of this run (ours, pytest's tmp_path, those of the processes we start)
# goes under one folder, so that what a test leaves behind is seen (see no_leftovers) and the
# folder is removed when the run passes (or fails leaving nothing there to look at).
# Processes that import this file again (workers unpickling a test's function) inherit it.
_OWNS_RUN_TMP = "PYACTOR_TEST_RUN_TMP" not in os.environ
if _OWNS_RUN_TMP:
    os.environ["PYACTOR_TEST_RUN_TMP"] = tempfile.mkdtemp(prefix="pyactor-test-run-")
RUN_TMP = os.environ["PYACTOR_TEST_RUN_TMP"]
tempfile.tempdir = RUN_TMP
os.environ["TMPDIR"] = RUN_TMP


# Caches that libraries keep in the temporary folder on purpose (torch's compiled kernels): they
# are removed with the run's folder, and are no test's leftover.
LIBRARY_CACHES = ("pytest-of-", "torchinductor_")


def leftover_files() -> list[str]:
    """What tests left in this run's temporary folder (pytest's folders and caches aside)."""
    return sorted(name for name in os.listdir(RUN_TMP) if not name.startswith(LIBRARY_CACHES))


def pytest_sessionfinish(session, exitstatus):
    if not _OWNS_RUN_TMP:
        return
    if exitstatus == 0 or not leftover_files():  # (a failed run keeps only what tells)
        shutil.rmtree(RUN_TMP, ignore_errors=True)
    else:
        print(f"\nthis run's temporary files are kept in {RUN_TMP}", file=sys.stderr)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of a live process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[3])


def _proc_bytes(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def pyactor_processes(session: int | None = None) -> list[str]:
    """'pid ppid state args' of live pyactor node processes started by this test run: the node,
    its fork server and its workers (forks of the node, so they share its command line). With
    `session`, only the processes of the node whose pid is `session` (it leads its session)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        args = _proc_bytes(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace")
        if "pyactor._private.node" not in args:
            continue
        stat = _proc_stat(pid)
        if stat is None or stat[0] in "ZX":
            continue
        if session is not None and stat[2] != session:
            continue
        if TEST_RUN_MARKER.encode() not in _proc_bytes(pid, "environ").split(b"\0"):
            continue
        found.append(f"{pid} {stat[1]} {stat[0]} {args.strip()}")
    return found


def pids_of(lines: list[str]) -> set[int]:
    return {int(line.split()[0]) for line in lines}


def node_processes(node_pid: int) -> set[int]:
    """Pids of a node and every process under it (fork server, workers)."""
    return pids_of(pyactor_processes(session=node_pid))


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie or dead process is not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def pyactor_segments() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith("pyactor-"))
    except OSError:
        return []


def leftover_segments(before: set[str]) -> set[str]:
    """Segments made since `before` that are ours: their node is one of this run's processes,
    or is dead (a live node of another test run on this host is not our leftover)."""
    ours = pids_of(pyactor_processes())
    found = set()
    for name in set(pyactor_segments()) - before:
        parts = name.split("-")
        if len(parts) >= 3 and parts[1].isdigit():
            pid = int(parts[1])
            if pid not in ours and _proc_stat(pid) is not None:
                continue  # a live process outside this run owns it
        found.add(name)
    return found


def wait_until(condition, timeout_s: float = 10.0, interval_s: float = 0.01) -> bool:
    """Poll `condition` until true or timeout; for waiting on *other processes* (not a sync
    primitive between our own threads)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())


@pytest.fixture(scope="module")
def pa_module():
    """A local node (2 CPUs, 512 MiB store) shared by the tests of one module."""
    if pa.is_initialized():
        pa.shutdown()
    pa.init(num_cpus=2, object_store_memory=512 << 20)
    yield pa
    pa.shutdown()


@pytest.fixture
def pa_fresh():
    """A node for this test alone; call pa.init yourself with the options you need."""
    if pa.is_initialized():
        pa.shutdown()
    yield pa
    if pa.is_initialized():
        pa.shutdown()


@pytest.fixture(scope="session", autouse=True)
def no_leftovers():
    before_segments = set(pyactor_segments())
    yield
    if pa.is_initialized():
        pa.shutdown()
    assert wait_until(lambda: not leftover_segments(before_segments), 10), \
        f"shared-memory segments left behind: {leftover_segments(before_segments)}"
    assert wait_until(lambda: not pyactor_processes(), 10), \
        f"pyactor processes left behind: {pyactor_processes()}"
    assert not leftover_files(), f"temporary files left behind in {RUN_TMP}: {leftover_files()}"


def run_python(code: str, timeout_s: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter (for tests that kill a driver or need a clean
    process)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout_s, **kwargs)
