"""Tests for the direct lane's frame I/O: BlockingConnection over csrc/net.c's pa_recv_frame and
pa_send_frame, against a peer socket the test drives by hand (partial, oversized, broken frames,
a close, a signal while it sleeps).

The peer is the server end of a real loopback connection whose handshake the test answers from
the wire spec; after it the test thread holds both ends, so what the peer has written is what the
connection can read: nothing sleeps to synchronise.
"""

from __future__ import annotations

import hashlib
import hmac
import signal
import socket
import struct
import threading
import time

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import given, settings

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.direct import _message_name, _task_done
from pyactor._private.transport import encode_frame
from pyactor._store_cffi import ffi, lib
from pyactor.exceptions import ProtocolError
from strategies import msgpack_values

HOST = "127.0.0.1"
GUARD_S = 30.0  # a hang guard, never a synchronisation device
INBOX_BYTES = transport._INBOX_BYTES


def serve_handshake(listener: socket.socket, token: bytes, accepted: list) -> None:
    """The server side of the handshake, written from the wire spec rather than the module."""
    sock, _ = listener.accept()
    sock.settimeout(GUARD_S)
    server_nonce = bytes(range(32, 64))
    sock.sendall(encode_frame(["pyactor", 1, server_nonce]))
    header = received(sock, 4)
    _proof, client_nonce = msgpack.unpackb(received(sock, struct.unpack(">I", header)[0]))
    sock.sendall(encode_frame([True, hmac.new(token, b"server" + client_nonce + server_nonce,
                                              hashlib.sha256).digest()]))
    accepted.append(sock)


@pytest.fixture
def pair():
    """(a BlockingConnection, the socket at its other end), both closed afterwards."""
    token = transport.new_token()
    with socket.create_server((HOST, 0)) as listener:
        accepted: list = []
        server = threading.Thread(target=serve_handshake, args=(listener, token, accepted))
        server.start()
        conn = transport.BlockingConnection(HOST, listener.getsockname()[1], token,
                                            max_frame_bytes=1 << 20)
        server.join(GUARD_S)
    peer = accepted[0]
    yield conn, peer
    conn.close()
    peer.close()


def received(peer: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = peer.recv(count - len(data))
        assert chunk, f"EOF after {len(data)} of {count} bytes"
        data += chunk
    return data


def past() -> float:
    return time.monotonic() - 1.0


# -- frames in, however they come -------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(messages=st.lists(st.one_of(msgpack_values().filter(lambda value: value is not None),
                                   st.integers(INBOX_BYTES - 100, 3 * INBOX_BYTES).map(
                                       lambda size: bytes([size % 251]) * size)),
                         min_size=1, max_size=6),
       cut=st.integers(min_value=0))
def test_frames_written_together_and_cut_anywhere_come_out_one_by_one(messages, cut):
    """Back-to-back frames, some larger than the inbox, written in two pieces split anywhere,
    are read one per receive, intact and in order. (None is left out: poll_message says
    "nothing yet" with it; the runtime's messages are lists.)"""
    token = transport.new_token()
    with socket.create_server((HOST, 0)) as listener:
        accepted: list = []
        server = threading.Thread(target=serve_handshake, args=(listener, token, accepted))
        server.start()
        conn = transport.BlockingConnection(HOST, listener.getsockname()[1], token)
        server.join(GUARD_S)
    peer = accepted[0]
    stream = b"".join(encode_frame(message) for message in messages)
    cut %= len(stream) + 1
    second_piece = threading.Event()

    def write() -> None:  # (a thread: a large piece would fill the socket's buffers)
        peer.sendall(stream[:cut])
        second_piece.wait(GUARD_S)
        peer.sendall(stream[cut:])
    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = []
        for _ in messages:
            message = conn.poll_message()
            if message is None:  # (what has come holds no more whole frames)
                second_piece.set()
                message = conn.receive(0, time.monotonic() + GUARD_S)
            out.append(message)
        assert out == messages
        assert conn.poll_message() is None
    finally:
        second_piece.set()
        writer.join(GUARD_S)
        conn.close()
        peer.close()


def test_a_frame_cut_short_by_the_deadline_is_kept_for_the_next_receive(pair):
    """TimeoutError at the deadline; the part already read is kept, and the next receive
    returns the whole message once the rest comes."""
    conn, peer = pair
    frame = encode_frame(["answer", b"x" * 1000])
    peer.sendall(frame[:2])  # (not even the whole header)
    with pytest.raises(TimeoutError):
        conn.receive(10_000, past())
    peer.sendall(frame[2:600])
    with pytest.raises(TimeoutError):
        conn.receive(0, time.monotonic() + 0.01)  # (sleeps in the kernel, then gives up)
    assert conn.poll_message() is None
    peer.sendall(frame[600:])
    assert conn.receive(0, time.monotonic() + GUARD_S) == ["answer", b"x" * 1000]


def test_a_frame_larger_than_the_inbox_grows_it_and_then_it_shrinks_back(pair):
    """A frame of several inbox sizes is read whole; the frame behind it, already in the
    inbox, comes next, and the inbox is back to its usual size."""
    conn, peer = pair
    large = b"L" * (5 * INBOX_BYTES)
    peer.sendall(encode_frame(large) + encode_frame("after"))
    assert conn.receive() == large
    assert conn.receive() == "after"
    assert len(conn._inbox) == INBOX_BYTES


# -- failures ---------------------------------------------------------------------------------

def test_the_peer_closing_is_a_connection_error_also_in_the_middle_of_a_frame(pair):
    conn, peer = pair
    peer.sendall(encode_frame("whole") + encode_frame("cut short")[:7])
    peer.close()
    assert conn.receive() == "whole"
    with pytest.raises(ConnectionError, match="closed the connection"):
        conn.receive(50_000)


def test_a_header_over_the_limit_is_refused_before_its_body_comes(pair):
    """The header alone is enough: ProtocolError naming the size and the limit."""
    conn, peer = pair
    peer.sendall(struct.pack(">I", (1 << 20) + 1))
    with pytest.raises(ProtocolError, match=f"declares {(1 << 20) + 1} bytes, over the limit "
                                            f"of {1 << 20}"):
        conn.receive(0, time.monotonic() + GUARD_S)


def test_a_raw_payload_on_the_direct_lane_is_a_protocol_error(pair):
    conn, peer = pair
    peer.sendall(struct.pack(">I", 5 | 1 << 31) + b"12345")
    with pytest.raises(ProtocolError, match="raw payload nobody asked for"):
        conn.receive()


@pytest.mark.parametrize("body", [b"\xc1", b"\x92\x01", b"\x01\x02"],
                         ids=["never-used byte", "list cut short", "two values"])
def test_a_body_that_is_not_one_msgpack_value_is_a_protocol_error(pair, body):
    conn, peer = pair
    peer.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match="not one msgpack value"):
        conn.receive()


def test_a_closed_connection_refuses_to_read_or_write(pair):
    """After close the socket's number may belong to someone else: nothing touches it."""
    conn, _ = pair
    conn.close()
    with pytest.raises(OSError):
        conn.receive(0, past())
    with pytest.raises(OSError):
        conn.send("late")


def test_a_silent_server_times_out_the_handshake():
    """The handshake's reads keep connect's timeout_s (the socket's own timeout no longer
    applies to them)."""
    with socket.create_server((HOST, 0)) as listener:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            transport.BlockingConnection(HOST, listener.getsockname()[1],
                                         transport.new_token(), timeout_s=0.2)
        assert time.monotonic() - started < GUARD_S
        listener.accept()[0].close()


# -- a signal while it sleeps -----------------------------------------------------------------

class Interrupted(Exception):
    pass


def test_a_signal_handler_that_raises_ends_a_blocked_receive_and_loses_nothing(pair):
    """KeyboardInterrupt-style: the handler's exception comes out of receive; a frame half in
    stays, and the next receive returns it whole."""
    conn, peer = pair
    frame = encode_frame("after the signal")
    peer.sendall(frame[:5])

    def interrupt(signum, frame_):
        raise Interrupted()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            conn.receive(0, time.monotonic() + GUARD_S)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    peer.sendall(frame[5:])
    assert conn.receive(0, time.monotonic() + GUARD_S) == "after the signal"


def test_a_signal_handler_that_returns_lets_the_receive_wait_on(pair):
    """The handler runs while receive sleeps (it sends the answer itself); receive then goes
    on waiting and returns that answer."""
    conn, peer = pair
    ran = []

    def answer(signum, frame_):
        ran.append(signum)
        peer.sendall(encode_frame("sent by the handler"))
    previous = signal.signal(signal.SIGALRM, answer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert conn.receive(0, time.monotonic() + GUARD_S) == "sent by the handler"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ran == [signal.SIGALRM]


# -- frames out -------------------------------------------------------------------------------

def test_send_writes_header_and_body_as_one_frame(pair):
    conn, peer = pair
    conn.send([7, b"id", None])
    body = msgpack.packb([7, b"id", None])
    assert received(peer, 4 + len(body)) == struct.pack(">I", len(body)) + body


def test_send_waits_for_room_also_on_a_non_blocking_socket(pair):
    """An event loop that watched the socket left it non-blocking; a frame larger than the
    socket's buffers still goes out whole while the peer reads it."""
    conn, peer = pair
    conn._socket.setblocking(False)
    body = bytes(range(256)) * 3000  # 768 KB: more than loopback buffers hold at once
    reader_got: list = []
    reader = threading.Thread(target=lambda: reader_got.append(
        received(peer, 4 + len(msgpack.packb(body)))))
    reader.start()
    conn.send(body)
    reader.join(GUARD_S)
    assert msgpack.unpackb(reader_got[0][4:]) == body


def test_send_to_a_peer_that_is_gone_raises_oserror_not_sigpipe(pair):
    conn, peer = pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # (a reset: the next write fails at once)
    with pytest.raises(OSError):
        for _ in range(100):  # (the first write may still be accepted by the kernel)
            conn.send(b"x" * 1000)


def test_a_message_over_the_frame_limit_is_refused_before_anything_is_written(pair):
    conn, peer = pair
    with pytest.raises(ValueError, match="exceeds max_frame_bytes"):
        conn.send(b"x" * (1 << 20))
    conn.send("small")
    assert received(peer, 4 + len(msgpack.packb("small")))[4:] == msgpack.packb("small")


# -- the C function's own guard ---------------------------------------------------------------

def test_pa_recv_frame_refuses_an_inbox_state_that_does_not_fit_its_buffer():
    """A state out of step with its buffer (counts past the end, or a frame larger than what
    was read) is -EINVAL, never a read or write outside the buffer."""
    a, b = socket.socketpair()
    try:
        buffer = bytearray(16)
        state = ffi.new("pa_inbox *")
        for filled, consumed in ((17, 0), (4, 5), (0, -1)):
            state.filled, state.consumed = filled, consumed
            assert lib.pa_recv_frame(a.fileno(), ffi.from_buffer(buffer), len(buffer), state,
                                     1 << 20, 0, 0.0) == -22
        state.filled, state.consumed = 0, 0
        b.sendall(b"\x00\x00\x00\x01\x07" + b"\x00\x00")
        assert lib.pa_recv_frame(a.fileno(), ffi.from_buffer(buffer), len(buffer), state,
                                 1 << 20, 0, 0.0) == 1
        assert (state.filled, state.consumed) == (7, 5)
    finally:
        a.close()
        b.close()


# -- the direct path's answer ---------------------------------------------------------------

@settings(max_examples=30)
@given(task_id=st.binary(min_size=1, max_size=28), returns=st.lists(msgpack_values()),
       error=st.none() | st.binary(), retryable=st.booleans())
def test_an_answer_becomes_the_task_done_p_decode_would_build(task_id, returns, error,
                                                               retryable):
    done = P.TaskDone(task_id, returns, error, retryable)
    raw = msgpack.unpackb(msgpack.packb(P.encode(done)), strict_map_key=False)
    built = _task_done(raw, task_id)
    assert type(built) is P.TaskDone and built == P.decode(raw) == done
    assert _task_done(raw, None) == done


def test_anything_but_the_calls_task_done_is_refused():
    """Another call's answer, another kind, a wrong field count or no list at all: None (the
    direct path then loses the call cleanly, through the IO thread)."""
    done = P.encode(P.TaskDone(b"mine", [], None, False))
    assert _task_done(done, b"other") is None
    assert _task_done(P.encode(P.ReturnLease(1, False)), b"mine") is None
    assert _task_done(done[:-1], b"mine") is None
    assert _task_done(done + [1], b"mine") is None
    assert _task_done(tuple(done), b"mine") is None
    assert _task_done(None, b"mine") is None
    assert _message_name(done[:-1]).startswith("a broken message")
    assert _message_name(P.encode(P.ReturnLease(1, False))) == "ReturnLease"
