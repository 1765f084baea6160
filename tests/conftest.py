"""Shared fixtures: a running pyactor for runtime tests, and checks that nothing leaks.

`pa_module` starts one local node per test module (starting one per test would cost ~0.25 s
each); `pa_fresh` gives a test its own node when it kills or reconfigures things. After the whole
session, no pyactor process and no shared-memory segment may remain.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import pyactor as pa


def pyactor_processes() -> list[str]:
    """Command lines of live pyactor node and worker processes started by this test run."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True, text=True)
    found = []
    for line in out.stdout.splitlines()[1:]:
        pid, ppid, stat, args = line.split(None, 3)
        if "pyactor._private.node" in args and "Z" not in stat:
            found.append(line)
    return found


def pyactor_segments() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith("pyactor-"))
    except OSError:
        return []


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
    assert wait_until(lambda: not (set(pyactor_segments()) - before_segments), 10), \
        f"shared-memory segments left behind: {set(pyactor_segments()) - before_segments}"
    assert wait_until(lambda: not pyactor_processes(), 10), \
        f"pyactor processes left behind: {pyactor_processes()}"


def run_python(code: str, timeout_s: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter (for tests that kill a driver or need a clean
    process)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout_s, **kwargs)
