"""Connections that failed the handshake: counted, aggregated, and reported at a bounded rate.

Anyone who can reach a pyactor port can open connections without the token. Logging each one
would let them fill a log, and a worker's log is its stderr, which is forwarded to every driver
(worker_pool.OutputForwarder): a stranger could flood users' output and stall a driver. So a
failed handshake is only counted here, and reported as one summary per interval:

    transport server (handshake fails) --on_reject(peer, reason)--> RejectionReporter.add
        worker / driver runtime: every REPORT_TO_NODE_S --ConnectionsRejected--> its node
        node: its own and its processes' tallies --every NODE_LOG_S--> one line in the node's log

The first rejection after a quiet interval is reported at once (so a wrong token shows up while
someone is looking), the ones after it together when the interval ends. Nothing here writes to
a user's output: a node started by `pyactor start` logs to its log file; a node started by
`pa.init()` shares the program's stderr, so there the summary is INFO, shown only with
PYACTOR_LOG_LEVEL=INFO.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

PEERS_KEPT = 5  # example addresses a summary names; the count covers the rest
REASONS_KEPT = 8  # distinct reasons counted apart (they may carry numbers); the rest: "other"


class RejectionTally:
    """Failed handshakes since the last report: how many, why, and from where (a few)."""

    __slots__ = ("count", "reasons", "peers")

    def __init__(self) -> None:
        self.count = 0
        self.reasons: dict[str, int] = {}
        self.peers: list[str] = []

    def add(self, peer: str, reason: str, count: int = 1) -> None:
        self._count(reason, count)
        if peer not in self.peers and len(self.peers) < PEERS_KEPT:
            self.peers.append(peer)

    def merge(self, other: "RejectionTally") -> None:
        for reason, count in other.reasons.items():
            self._count(reason, count)
        for peer in other.peers:
            if peer not in self.peers and len(self.peers) < PEERS_KEPT:
                self.peers.append(peer)

    def _count(self, reason: str, count: int) -> None:
        if reason not in self.reasons and len(self.reasons) >= REASONS_KEPT:
            reason = "other reasons"
        self.count += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count

    def to_wire(self) -> list:
        return [self.reasons, self.peers]

    @classmethod
    def from_wire(cls, reasons, peers) -> "RejectionTally":
        """A tally another process sent; ValueError if it is not one."""
        if type(reasons) is not dict or type(peers) is not list or not all(
                type(r) is str and type(n) is int and 0 < n < 1 << 62
                for r, n in reasons.items()) or not all(type(p) is str for p in peers):
            raise ValueError("a rejection tally is {reason: count} and a list of peers")
        tally = cls()
        for reason, count in reasons.items():
            tally._count(reason[:200], count)
        tally.peers = [peer[:64] for peer in peers[:PEERS_KEPT]]
        return tally

    def describe(self) -> str:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in
                            sorted(self.reasons.items(), key=lambda item: -item[1]))
        more = "" if len(self.peers) < PEERS_KEPT else ", ..."
        return (f"refused {self.count} connection(s) that failed the handshake since the last "
                f"report (from "
                f"{', '.join(self.peers) or 'unknown'}{more}): {reasons}")


class RejectionReporter:
    """Calls `report(tally)` on `loop` at most once per `interval_s`. `add` takes any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float,
                 report: Callable[[RejectionTally], None]):
        self._loop = loop
        self.interval_s = interval_s
        self._report = report
        self._lock = threading.Lock()
        self._tally = RejectionTally()
        self._armed = False  # a report is scheduled
        self._last_report = float("-inf")

    def add(self, peer: str, reason: str, count: int = 1) -> None:
        with self._lock:
            self._tally.add(peer, reason, count)
            self._arm_locked()

    def merge(self, tally: RejectionTally) -> None:
        with self._lock:
            self._tally.merge(tally)
            self._arm_locked()

    def _arm_locked(self) -> None:
        if self._armed:
            return
        self._armed = True
        delay = max(0.0, self._last_report + self.interval_s - time.monotonic())
        try:
            self._loop.call_soon_threadsafe(self._loop.call_later, delay, self.flush)
        except RuntimeError:  # the loop is closed: the process is ending
            self._armed = False

    def flush(self) -> None:
        """Report what is counted now (the timer, or an owner that is stopping)."""
        with self._lock:
            tally, self._tally = self._tally, RejectionTally()
            self._armed = False
            if tally.count:
                self._last_report = time.monotonic()
        if tally.count:
            self._report(tally)


def log_rejections(logger: logging.Logger, level: int) -> Callable[[RejectionTally], None]:
    """A report function that writes one line per tally to `logger`."""
    def report(tally: RejectionTally) -> None:
        logger.log(level, "%s", tally.describe())
    return report
