"""Remote functions several test modules use (importable by workers, unlike conftest's
fixtures, which would drag pytest into every worker)."""

import os
import time

import pyactor as pa


@pa.remote
def identity(x):
    return x


@pa.remote
def wait_for_file(path, timeout_s=30.0):
    """Blocks until `path` exists (the test opens the gate), then returns its name."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.basename(path)


@pa.remote
def gated(started, release, value):
    """Says it started (creates `started`), then waits until the test opens the gate."""
    open(started, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


@pa.remote
def exit_the_first_time(marker):
    """Kills its worker the first time (leaving `marker`); returns on the retry."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second attempt"


@pa.remote
class Log:
    """An actor that keeps what it was given, in order (test_direct, test_direct_submit)."""

    def __init__(self):
        self.entries = []

    def append(self, item, seconds=0.0):
        time.sleep(seconds)
        self.entries.append(item)
        return item

    def read(self):
        return list(self.entries)

    def append_gated(self, item, started, release):
        open(started, "w").close()
        while not os.path.exists(release):
            time.sleep(0.01)
        self.entries.append(item)
        return item

    def exit_the_first_time(self, marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return "second incarnation"
