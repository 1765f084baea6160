"""Property tests for pyactor._private.protocol: every message kind survives the wire, and
`decode` turns any msgpack value into a message or a ProtocolError, never another exception."""

from __future__ import annotations

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings

from pyactor._private import protocol as P
from strategies import msgpack_values
from pyactor.exceptions import ProtocolError

values = msgpack_values(max_leaves=12, max_text=20, max_bytes=40, max_size=4)

MESSAGE_CLASSES = list(P.KIND_OF)


def wire_round_trip(raw):
    """What the receiving side's transport hands to `decode` (same options as transport.py)."""
    return msgpack.unpackb(msgpack.packb(raw, use_bin_type=True), raw=False,
                           strict_map_key=False)


def test_every_message_kind_has_a_distinct_number():
    """Each message class has its own kind number, numbered from 0 without gaps."""
    assert sorted(P.KIND_OF.values()) == list(range(len(MESSAGE_CLASSES)))


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda cls: cls.__name__)
# per class; generation is slow when the machine is loaded, which is no failure of ours
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_message_round_trips_through_msgpack(cls, data):
    """encode -> msgpack -> decode gives back an equal message of the same class."""
    fields = [data.draw(values, label=name) for name in cls._fields]
    message = cls(*fields)
    decoded = P.decode(wire_round_trip(P.encode(message)))
    assert type(decoded) is cls
    assert decoded == message


@given(raw=values)
def test_decode_of_any_msgpack_value_is_a_message_or_protocol_error(raw):
    """decode never raises anything but ProtocolError, whatever msgpack value arrives."""
    try:
        message = P.decode(wire_round_trip(raw))
    except ProtocolError:
        return
    assert type(message) in P.KIND_OF
    assert P.encode(message) == raw


@given(kind=st.integers(0, len(MESSAGE_CLASSES) - 1), fields=st.lists(values, max_size=12))
def test_decode_of_a_known_kind_with_any_fields(kind, fields):
    """A known kind with the wrong number of fields is a ProtocolError naming the kind."""
    cls = MESSAGE_CLASSES[kind]
    if len(fields) == len(cls._fields):
        assert type(P.decode([kind, *fields])) is cls
    else:
        with pytest.raises(ProtocolError, match=cls.__name__):
            P.decode([kind, *fields])


@pytest.mark.parametrize("raw", [None, [], {}, "Register", b"\x00", 3, [-1], [True, 1],
                                 [len(P.KIND_OF)], [1.0, 1, None, None], [None], [[0]]])
def test_decode_rejects_values_that_are_not_messages(raw):
    """Non-lists, empty lists, and unknown or non-int kinds are ProtocolErrors."""
    with pytest.raises(ProtocolError):
        P.decode(raw)
