"""Connections that fail the handshake are counted and reported at a bounded rate, in the
node's log only: a stranger on the host cannot write into users' output, however many
connections it opens to a worker's, a driver's or the node's port."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap

import pytest

from pyactor._private.rejections import (PEERS_KEPT, REASONS_KEPT, RejectionReporter,
                                         RejectionTally)

GUARD_S = 120  # a hang guard, never a synchronisation device


def test_a_tally_counts_by_reason_and_keeps_a_few_peers():
    """Counts add up by reason; only PEERS_KEPT example peers and REASONS_KEPT reasons are
    kept, whatever a flood sends; the wire form round-trips."""
    tally = RejectionTally()
    for i in range(100):
        tally.add(f"10.0.0.{i}:1", f"frame of {i} bytes is over the limit" if i % 2 else
                  "it does not hold the cluster token")
    assert tally.count == 100 and len(tally.peers) == PEERS_KEPT
    assert len(tally.reasons) == REASONS_KEPT + 1 and tally.reasons["other reasons"] > 0
    assert tally.reasons["it does not hold the cluster token"] == 50
    copy = RejectionTally.from_wire(*tally.to_wire())
    assert (copy.count, copy.reasons, copy.peers) == (tally.count, tally.reasons, tally.peers)
    assert "refused 100 connection(s)" in tally.describe() and "10.0.0.0:1" in tally.describe()


@pytest.mark.parametrize("wire", [("x", []), ({"r": "1"}, []), ({"r": 1}, [3]),
                                  ({"r": -1}, []), ({1: 1}, [])])
def test_a_malformed_tally_is_refused(wire):
    """What another process sends is checked before it is counted."""
    with pytest.raises(ValueError):
        RejectionTally.from_wire(*wire)


async def test_the_first_rejection_is_reported_at_once_and_the_rest_together():
    """The first failed handshake after a quiet interval is reported on the next loop turns;
    those during the interval wait, and are reported as one tally when it ends."""
    loop = asyncio.get_running_loop()
    reports: list[RejectionTally] = []
    first = loop.create_future()

    def report(tally):
        reports.append(tally)
        if not first.done():
            first.set_result(None)
    reporter = RejectionReporter(loop, 3600.0, report)
    reporter.add("a:1", "it does not hold the cluster token")
    await asyncio.wait_for(first, 10)
    for i in range(500):
        reporter.add(f"b:{i}", "no handshake within 10 s")
    for _ in range(20):  # many loop turns: nothing more is reported before the interval ends
        await asyncio.sleep(0)
    assert [r.count for r in reports] == [1]
    reporter.flush()  # what the timer does when the interval ends (or the node stopping)
    assert [r.count for r in reports] == [1, 500]
    assert reports[1].reasons == {"no handshake within 10 s": 500}


def _flood_script(log_level: str | None) -> str:
    return textwrap.dedent("""
        import asyncio, os, socket
        import pyactor as pa
        from pyactor._private import api, transport
        from pyactor.exceptions import AuthenticationError
        pa.init(num_cpus=1, object_store_memory=64 << 20)

        @pa.remote
        def endpoints():
            runtime = api._runtime
            return runtime.task_address, runtime.address

        task_port, control_port = pa.get(endpoints.remote())
        runtime = api._runtime
        targets = [task_port, control_port, runtime.address,
                   [runtime.node_host, runtime.node_port]]

        async def wrong_token(host, port):
            try:
                await transport.connect(host, port, os.urandom(32), lambda c, m: None)
            except AuthenticationError:
                return
            raise AssertionError("a wrong token was accepted")

        for host, port in targets:
            for i in range(N):
                if i % 2:
                    asyncio.run(wrong_token(host, port))
                    continue
                with socket.create_connection((host, port), timeout=30) as sock:
                    sock.sendall(b"\\x00\\x00\\x00\\x03abc")  # not a handshake answer
                    while sock.recv(4096):
                        pass

        @pa.remote
        def square(x):
            return x * x
        print("SUM", sum(pa.get([square.remote(i) for i in range(20)], timeout=60)),
              flush=True)
        pa.shutdown()
    """).replace("N)", f"{CONNECTIONS_PER_PORT})")


CONNECTIONS_PER_PORT = 100


def _run_flood(log_level: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYACTOR_LOG_LEVEL", None)
    if log_level:
        env["PYACTOR_LOG_LEVEL"] = log_level
    return subprocess.run([sys.executable, "-c", _flood_script(log_level)], capture_output=True,
                          text=True, timeout=GUARD_S, env=env)


@pytest.mark.slow
def test_connections_without_the_token_write_nothing_to_the_driver():
    """400 connections that fail the handshake (garbage and wrong tokens) to a worker's task
    and control ports, the driver's port and the node's: the driver's output shows nothing of
    them (before, each one put warning lines from the worker on every driver's stderr)."""
    result = _run_flood(None)
    assert "SUM 2470" in result.stdout, result.stderr
    assert result.stderr == ""


@pytest.mark.slow
def test_the_node_log_gets_the_rejections_aggregated():
    """With the node's log shown (INFO: an embedded node shares the program's stderr), those
    400 rejections take at most two lines (the first one at once, the rest when the node
    stops), which together count the node's own and those its processes reported."""
    result = _run_flood("INFO")
    assert "SUM 2470" in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if "failed the handshake" in line]
    assert 1 <= len(lines) <= 2, result.stderr
    counted = sum(int(re.search(r"refused (\d+) connection", line).group(1)) for line in lines)
    assert CONNECTIONS_PER_PORT <= counted <= 4 * CONNECTIONS_PER_PORT, lines
    assert "does not hold the cluster token" in result.stderr
