"""The cluster view's protocol (cluster_view.py) as properties: whatever the head's changes and
however its deltas are lost, repeated or reordered, a member only ever holds one of the head's
past tables, and holds the current one after a pull; a delta applied to its base is the full
view."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from pyactor._private.cluster_view import Delta, HeadView, MemberView, Snapshot

NODES = [bytes([i]) for i in range(6)]

# A change at the head: set a node's row, remove a node, or forget tombstones up to a version.
changes = st.one_of(
    st.tuples(st.just("upsert"), st.sampled_from(NODES), st.integers(0, 3)),
    st.tuples(st.just("remove"), st.sampled_from(NODES), st.none()),
    st.tuples(st.just("forget"), st.none(), st.integers(0, 40)),
)


def play(head: HeadView, change) -> None:
    what, node_id, value = change
    if what == "upsert":
        head.upsert(node_id, [node_id, value])
    elif what == "remove":
        head.remove(node_id)
    else:
        head.forget_tombstones(value)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(changes, max_size=40), st.data())
def test_a_delta_applied_to_its_base_gives_the_full_view(steps, data):
    """For every base the head can still serve, the table at that base plus the delta from it
    equals the head's table now, and the delta's version is the head's."""
    head = HeadView()
    history = {0: {}}
    for change in steps:
        play(head, change)
        history[head.version] = dict(head.rows)
    base = data.draw(st.integers(0, head.version))
    delta = head.delta(base)
    if base < head.floor:
        assert delta is None
        return
    member = MemberView(base, dict(history[base]))
    assert member.apply_delta(delta) is not None
    assert member.rows == head.rows and member.version == head.version


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(changes, st.booleans()), max_size=40), st.data())
def test_lost_repeated_and_reordered_deltas_converge_after_a_pull(steps, data):
    """Deltas computed from the member's acknowledged version and delivered in any order, some
    dropped and some twice: each applied one leaves the member at exactly one of the head's past
    tables, a gap is reported rather than applied, and a snapshot brings it to the head's."""
    head = HeadView()
    member = MemberView()
    history = {0: {}}
    in_flight: list[Delta] = []
    acked = 0
    for change, beat in steps:
        play(head, change)
        history[head.version] = dict(head.rows)
        if not beat:
            continue
        delta = head.delta(acked)  # what the head sends this beat
        if delta is None:
            member.apply_snapshot(head.snapshot())
        else:
            copies = data.draw(st.integers(0, 2), label="copies")  # lost, sent, duplicated
            in_flight += [delta] * copies
        if in_flight:
            order = data.draw(st.permutations(in_flight), label="arrival order")
            arrived = data.draw(st.integers(0, len(order)), label="arrived")
            in_flight = list(order[arrived:])
            for message in order[:arrived]:
                changed = member.apply_delta(message)
                if changed is None:
                    assert message.base > member.version
                assert member.rows == history[member.version]
        acked = member.version  # its next heartbeat says what it holds
    changes_seen = member.apply_snapshot(head.snapshot())
    assert member.rows == head.rows and member.version == head.version
    assert all(node_id in head.rows or row is None for node_id, row in changes_seen)


@settings(max_examples=50, deadline=None)
@given(st.lists(changes, max_size=30), st.lists(changes, max_size=30))
def test_an_older_snapshot_never_rolls_a_member_back(first, second):
    """A snapshot that arrives after a newer one is ignored."""
    head = HeadView()
    for change in first:
        play(head, change)
    old = head.snapshot()
    for change in second:
        play(head, change)
    member = MemberView()
    member.apply_snapshot(head.snapshot())
    assert member.apply_snapshot(old) == [] or old.version == head.version
    assert member.rows == head.rows


def test_an_unchanged_row_does_not_move_the_version():
    """A heartbeat that repeats a row costs the members nothing: no new version, empty delta."""
    head = HeadView()
    assert head.upsert(b"a", [1]) and head.version == 1
    assert not head.upsert(b"a", [1]) and head.version == 1
    assert head.delta(1) == Delta(1, 1, [], [])
    assert head.snapshot() == Snapshot(1, [[b"a", [1]]])


def membership(row):
    return row[1]


# A change for rows with a membership part and a load part: [node id, membership, load].
split_changes = st.one_of(
    st.tuples(st.just("upsert"), st.sampled_from(NODES), st.tuples(st.integers(0, 1),
                                                                    st.integers(0, 3))),
    st.tuples(st.just("remove"), st.sampled_from(NODES), st.none()),
    st.tuples(st.just("forget"), st.none(), st.integers(0, 40)),
)


def play_split(head: HeadView, change) -> None:
    what, node_id, value = change
    if what == "upsert":
        head.upsert(node_id, [node_id, *value])
    else:
        play(head, change)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(split_changes, st.booleans()), max_size=40), st.data())
def test_a_member_sent_membership_changes_only_agrees_on_membership(steps, data):
    """Deltas without load changes, lost, repeated and reordered: the member's rows always
    agree with the head's table at the member's version on every row's membership part, each
    row is one the head once held for that node, a beat where only load changed sends nothing
    new, and a snapshot (sent when it starts following the load) makes it exact."""
    head = HeadView(membership_of=membership)
    member = MemberView()
    history = {0: {}}
    ever = set()  # every (node id, row) the head held
    in_flight: list[Delta] = []
    acked = sent = 0
    for change, beat in steps:
        play_split(head, change)
        history[head.version] = dict(head.rows)
        ever.update((node_id, tuple(row)) for node_id, row in head.rows.items())
        if not beat or sent >= head.member_version:
            continue  # as cluster.py: nothing to send a member already sent the membership
        delta = head.delta(min(acked, sent), with_load=False)
        sent = head.version
        if delta is None:
            member.apply_snapshot(head.snapshot())
        else:
            in_flight += [delta] * data.draw(st.integers(0, 2), label="copies")
        if in_flight:
            order = data.draw(st.permutations(in_flight), label="arrival order")
            arrived = data.draw(st.integers(0, len(order)), label="arrived")
            in_flight = list(order[arrived:])
            for message in order[:arrived]:
                member.apply_delta(message)
                past = history[member.version]
                assert member.rows.keys() == past.keys()
                for node_id, row in member.rows.items():
                    assert membership(row) == membership(past[node_id])
                    assert (node_id, tuple(row)) in ever
        acked = member.version  # its next heartbeat says what it holds
    member.apply_snapshot(head.snapshot())
    assert member.rows == head.rows and member.version == head.version


def test_a_load_change_moves_the_version_but_not_the_membership_version():
    """Only a membership change (or a removal) moves member_version; a delta without load then
    carries just the rows whose membership changed."""
    head = HeadView(membership_of=membership)
    head.upsert(b"a", [b"a", 0, 0])
    head.upsert(b"b", [b"b", 0, 0])
    assert head.member_version == 2
    head.upsert(b"a", [b"a", 0, 5])
    assert (head.version, head.member_version) == (3, 2)
    assert head.delta(2, with_load=False) == Delta(2, 3, [], [])
    assert head.delta(2) == Delta(2, 3, [[b"a", [b"a", 0, 5]]], [])
    head.upsert(b"b", [b"b", 1, 0])
    assert head.delta(2, with_load=False) == Delta(2, 4, [[b"b", [b"b", 1, 0]]], [])
    head.remove(b"a")
    assert head.member_version == 5 and head.delta(4, with_load=False) == Delta(4, 5, [], [b"a"])
