"""The cluster view's protocol: a versioned table of node rows, and deltas between its versions.

The head owns a `HeadView`; every other node mirrors it in a `MemberView`. Each change to a row
(or its removal) bumps the head's version and stamps the row (or its tombstone) with it, so

    head.delta(base)  -> Delta(base, version, rows changed after base, ids removed after base)
                         or None when tombstones after `base` were already forgotten
    head.delta(base, with_load=False) -> the same, counting only changes to a row's
                         membership part (`membership_of(row)`): for members that do not
                         follow the other nodes' load
    head.snapshot()   -> Snapshot(version, every row)
    member.apply_delta(delta) -> the changes, or None: a gap (base newer than what it holds):
                                 the member must pull a snapshot
    member.apply_snapshot(snapshot) -> the changes

Rows carry their whole state, never a diff, so a delta whose base is at or below what the member
holds brings it to the delta's version whatever came before: deltas may arrive twice or late
(those older than the member's version are ignored), and a member that lost one simply waits
for the next (the head sends changes since the member's *acknowledged* version, carried by its
heartbeats), or pulls a snapshot when it sees a gap. The head encodes one delta per distinct
acknowledged version per beat, so members that are in step share one encoding.

A row has a membership part (who the node is, where, its totals, alive) and a load part (what it
has free, its store and counts), which changes with every actor or task it runs. Most members
never look at the other nodes' load, so the head sends them only the rows whose membership
changed (each row still whole, its load as of now); such a member's table agrees with one of the
head's past tables on every row's membership part, and its load figures are each a past value of
that row's. A member that starts following the load is sent a snapshot first.
No I/O, no clock: cluster.py sends what this computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple


class Delta(NamedTuple):
    base: int  # the version the changes are counted from
    version: int  # the head's version after them
    rows: list  # [node_id, row] of each row changed after base (its current state)
    removed: list  # node ids removed after base


class Snapshot(NamedTuple):
    version: int
    rows: list  # [node_id, row] of every row


def whole_row(row: Any) -> Any:
    """The default membership part of a row: all of it (every change is a membership change)."""
    return row


@dataclass
class HeadView:
    """The head's table: rows by node id, each stamped with the version that last changed it
    and with the version that last changed its membership part."""

    version: int = 0
    rows: dict[bytes, Any] = field(default_factory=dict)
    changed_at: dict[bytes, int] = field(default_factory=dict)
    member_changed_at: dict[bytes, int] = field(default_factory=dict)
    removed_at: dict[bytes, int] = field(default_factory=dict)  # tombstones
    floor: int = 0  # deltas can be computed from bases >= floor (older tombstones forgotten)
    member_version: int = 0  # the last version that changed a membership part (or removed)
    membership_of: Callable[[Any], Any] = whole_row

    def upsert(self, node_id: bytes, row: Any) -> bool:
        """Set a node's row; True if it changed (and so the version moved)."""
        old = self.rows.get(node_id)
        if old is not None and old == row:
            return False
        self.version += 1
        self.rows[node_id] = row
        self.changed_at[node_id] = self.version
        if old is None or self.membership_of(old) != self.membership_of(row):
            self.member_changed_at[node_id] = self.member_version = self.version
        self.removed_at.pop(node_id, None)
        return True

    def remove(self, node_id: bytes) -> bool:
        if node_id not in self.rows:
            return False
        self.version += 1
        del self.rows[node_id], self.changed_at[node_id], self.member_changed_at[node_id]
        self.removed_at[node_id] = self.member_version = self.version
        return True

    def delta(self, base: int, with_load: bool = True) -> Delta | None:
        """What changed after `base` (only membership changes unless `with_load`); None if the
        member must take a snapshot instead."""
        if base < self.floor or base > self.version:
            return None
        if base == self.version:
            return Delta(base, base, [], [])
        stamps = self.changed_at if with_load else self.member_changed_at
        rows = [[node_id, self.rows[node_id]]
                for node_id, stamp in stamps.items() if stamp > base]
        removed = [node_id for node_id, stamp in self.removed_at.items() if stamp > base]
        return Delta(base, self.version, rows, removed)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.version, [[node_id, row] for node_id, row in self.rows.items()])

    def forget_tombstones(self, up_to: int) -> None:
        """Drop tombstones stamped at or before `up_to` (every member has seen them); members
        still older than that get a snapshot."""
        up_to = min(up_to, self.version)
        if up_to <= self.floor:
            return
        for node_id in [n for n, stamp in self.removed_at.items() if stamp <= up_to]:
            del self.removed_at[node_id]
        self.floor = up_to


@dataclass
class MemberView:
    """A member's copy of the head's table, at `version`."""

    version: int = 0
    rows: dict[bytes, Any] = field(default_factory=dict)

    def apply_delta(self, delta: Delta) -> list | None:
        """Apply it; returns [(node_id, row or None if removed)] changed, [] for a delta that
        brings nothing new, None for a gap (pull a snapshot)."""
        if delta.version <= self.version:
            return []  # duplicate or late: already have it
        if delta.base > self.version:
            return None
        changes = []
        for node_id, row in delta.rows:
            if self.rows.get(node_id) != row:
                self.rows[node_id] = row
                changes.append((node_id, row))
        for node_id in delta.removed:
            if self.rows.pop(node_id, None) is not None:
                changes.append((node_id, None))
        self.version = delta.version
        return changes

    def apply_snapshot(self, snapshot: Snapshot) -> list:
        """Replace the table (an older snapshot than what is held is ignored)."""
        if snapshot.version < self.version:
            return []
        fresh = {node_id: row for node_id, row in snapshot.rows}
        changes = [(node_id, row) for node_id, row in fresh.items()
                   if self.rows.get(node_id) != row]
        changes += [(node_id, None) for node_id in self.rows if node_id not in fresh]
        self.rows = fresh
        self.version = snapshot.version
        return changes
