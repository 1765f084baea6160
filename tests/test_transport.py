"""Tests for pyactor._private.transport: framing, the handshake, and hostile or broken peers.

Async tests run on the default asyncio loop; the hostile-peer tests talk over blocking sockets to
a server running on uvloop in a background thread, so both loops are exercised. Nothing sleeps to
synchronise: tests wait for the event they assert on (a reply, EOF, a callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import struct
import threading

import hypothesis.strategies as st
import msgpack
import numpy as np
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings

from pyactor._private import transport
from strategies import msgpack_values
from pyactor._private.transport import FrameDecoder, encode_frame
from pyactor.exceptions import AuthenticationError, ProtocolError

HOST = "127.0.0.1"
SOCKET_GUARD_S = 30.0  # a hang guard on blocking reads, never a synchronisation device

# -- strategies ---------------------------------------------------------------------------------

messages = msgpack_values()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[start:stop] for start, stop in zip(bounds, bounds[1:])]


# -- framing -----------------------------------------------------------------------------------

@given(batch=st.lists(messages, min_size=1, max_size=8),
       cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_frames_round_trip_however_the_stream_is_split(batch, cuts):
    """Any msgpack-able messages, concatenated and cut anywhere, decode to the same messages."""
    stream = b"".join(encode_frame(message) for message in batch)
    decoder = FrameDecoder()
    decoded = []
    for piece in split_at(stream, cuts):
        decoded.extend(decoder.feed(piece))
    assert decoded == batch
    assert decoder.buffered_bytes == 0


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0), max_size=6))
@settings(max_examples=300)
def test_arbitrary_bytes_decode_to_messages_or_protocol_error(data, cuts):
    """Garbage yields messages or ProtocolError, never another exception or a hang."""
    decoder = FrameDecoder(max_frame_bytes=1 << 20)
    with contextlib.suppress(ProtocolError):
        for piece in split_at(data, cuts):
            decoder.feed(piece)


@given(body=st.binary(max_size=64))
def test_frames_with_a_msgpack_prefix_plus_junk_are_rejected(body):
    """A body holding one value followed by extra bytes is not one message."""
    frame_body = msgpack.packb([1, body]) + b"\x00"
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", len(frame_body)) + frame_body)


def test_oversized_header_is_refused_before_any_body_is_buffered():
    """A header over the limit raises as soon as its 4 bytes arrive."""
    decoder = FrameDecoder(max_frame_bytes=1000)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.feed(struct.pack(">I", 1001)[2:])


def test_one_whole_frame_over_the_limit_in_one_read_is_refused():
    """A complete frame read at once (the decoder's shortcut) is held to the limit too."""
    frame = encode_frame([1, b"x" * 200])
    with pytest.raises(ProtocolError, match="over the limit"):
        FrameDecoder(max_frame_bytes=100).feed(frame)
    assert FrameDecoder(max_frame_bytes=len(frame)).feed(frame) == [[1, b"x" * 200]]


@given(body=st.binary(max_size=64))
def test_one_whole_frame_of_junk_in_one_read_is_a_protocol_error(body):
    """The shortcut for a single frame rejects a body that is not one msgpack value."""
    frame_body = msgpack.packb([1, body]) + b"\xc1"  # 0xc1: never a valid msgpack byte
    with pytest.raises(ProtocolError, match="not one msgpack value"):
        FrameDecoder().feed(struct.pack(">I", len(frame_body)) + frame_body)


def test_a_large_frame_arriving_in_small_chunks_decodes_once_complete():
    """A big body fed in pieces stays buffered until its last byte, then decodes intact."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    frame = encode_frame([7, payload])
    decoder = FrameDecoder()
    chunk_bytes = 65536
    results = [decoder.feed(frame[start:start + chunk_bytes])
               for start in range(0, len(frame), chunk_bytes)]
    assert all(result == [] for result in results[:-1])
    assert results[-1] == [[7, payload]]


def test_handshake_mode_reads_one_frame_at_a_time():
    """max_messages leaves later frames buffered until the next feed."""
    decoder = FrameDecoder()
    stream = encode_frame(1) + encode_frame(2) + encode_frame(3)
    assert decoder.feed(stream, max_messages=1) == [1]
    assert decoder.feed(b"") == [2, 3]


# -- helpers for live servers ------------------------------------------------------------------

class Recorder:
    """An on_message that records what arrives and wakes a waiter once `expected` have."""

    def __init__(self, expected: int = 1):
        self.messages: list = []
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def __call__(self, connection: transport.Connection, message) -> None:
        self.messages.append(message)
        if len(self.messages) >= self.expected and not self.done.done():
            self.done.set_result(self.messages)


def echo(connection: transport.Connection, message) -> None:
    connection.send(message)


async def round_trip(port: int, token: bytes, message=None) -> object:
    """Connect, send one message to an echo server, return the reply, close."""
    message = ["ping", b"\x00\x01"] if message is None else message
    recorder = Recorder()
    connection = await transport.connect(HOST, port, token, recorder)
    try:
        connection.send(message)
        (reply,) = await recorder.done
        return reply
    finally:
        connection.close()


def closed_future(loop: asyncio.AbstractEventLoop | None = None) -> tuple[asyncio.Future, object]:
    """A future and an on_close callback that resolves it with the reason."""
    future = (loop or asyncio.get_running_loop()).create_future()

    def on_close(connection, reason):
        if not future.done():
            future.set_result(reason)
    return future, on_close


# -- raw-socket peer for hostile inputs -------------------------------------------------------

def read_frame(sock: socket.socket) -> object:
    header = read_exactly(sock, 4)
    (length,) = struct.unpack(">I", header)
    return msgpack.unpackb(read_exactly(sock, length), raw=False)


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {count} bytes")
        data += chunk
    return data


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset counts as closed too."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def raw_handshake(sock: socket.socket, token: bytes) -> None:
    """The client side of the handshake, written from the wire spec rather than the module."""
    magic, version, server_nonce = read_frame(sock)
    assert (magic, version) == ("pyactor", 1)
    client_nonce = bytes(range(32))
    proof = hmac.new(token, b"client" + server_nonce + client_nonce, hashlib.sha256).digest()
    sock.sendall(encode_frame([proof, client_nonce]))
    accepted, server_proof = read_frame(sock)
    assert accepted is True
    assert server_proof == hmac.new(token, b"server" + client_nonce + server_nonce,
                                    hashlib.sha256).digest()


class ThreadedServer:
    """An echo server on uvloop in its own thread, for tests that drive blocking sockets."""

    def __init__(self, **serve_kwargs):
        self.token = transport.new_token()
        self.received: list = []
        self.rejected: list[tuple[str, str]] = []  # (peer, reason) of failed handshakes
        self._serve_kwargs = {"on_reject": lambda peer, reason: self.rejected.append(
            (peer, reason)), **serve_kwargs}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=uvloop.run, args=(self._main(),), daemon=True)
        self._thread.start()
        self._ready.wait(SOCKET_GUARD_S)
        self.port = self.server.port

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = self.loop.create_future()

        def on_message(connection, message):
            self.received.append(message)
            connection.send(message)

        async with await transport.serve(HOST, 0, self.token, on_message,
                                         **self._serve_kwargs) as self.server:
            self._ready.set()
            await self._stop

    def run(self, coroutine):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(SOCKET_GUARD_S)

    def raw_socket(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=SOCKET_GUARD_S)
        return sock

    def assert_serving(self) -> None:
        message = ["still", b"serving"]
        assert self.run(round_trip(self.port, self.token, message)) == message

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(SOCKET_GUARD_S)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def threaded_server():
    server = ThreadedServer(max_frame_bytes=1 << 16)
    yield server
    server.stop()


# -- hostile and broken peers ------------------------------------------------------------------

@given(garbage=st.binary(min_size=1, max_size=300))
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_garbage_before_the_handshake_never_reaches_the_application(threaded_server, garbage):
    """Random bytes instead of a handshake close that connection; the server serves on."""
    received_before = len(threaded_server.received)
    with threaded_server.raw_socket() as sock:
        read_frame(sock)  # the challenge
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        read_until_eof(sock)
    assert len(threaded_server.received) == received_before
    threaded_server.assert_serving()


@given(garbage=st.binary(min_size=1, max_size=300))
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_garbage_after_the_handshake_closes_only_that_connection(threaded_server, garbage):
    """Random bytes from an authenticated peer close its connection; the server serves on."""
    with threaded_server.raw_socket() as sock:
        raw_handshake(sock, threaded_server.token)
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        read_until_eof(sock)
    threaded_server.assert_serving()


@pytest.mark.parametrize("authenticated", [False, True], ids=["before", "after"])
def test_an_invalid_frame_body_closes_the_connection_at_once(threaded_server, authenticated,
                                                            caplog):
    """A frame whose body is not msgpack is answered by EOF while our side is still open."""
    with threaded_server.raw_socket() as sock:
        if authenticated:
            raw_handshake(sock, threaded_server.token)
        else:
            read_frame(sock)
        sock.sendall(b"\x00\x00\x00\x01\xc1")
        assert read_until_eof(sock) == b""
    assert_reported(threaded_server, authenticated, caplog, "not one msgpack value")
    threaded_server.assert_serving()


def assert_reported(server: ThreadedServer, authenticated: bool, caplog, reason: str) -> None:
    """After the handshake a violation is logged; before it, it goes to on_reject only (a
    stranger must not be able to write to the log once per connection)."""
    if authenticated:
        assert reason in caplog.text
    else:
        assert reason in server.rejected[-1][1]
        assert reason not in caplog.text


@given(cut_bytes=st.integers(min_value=1, max_value=40))
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_truncated_frame_then_eof_is_logged_and_the_server_serves_on(threaded_server,
                                                                      cut_bytes):
    """A frame cut short by EOF closes that connection; nothing is delivered."""
    frame = encode_frame(["truncated", b"x" * 40])
    received_before = len(threaded_server.received)
    with threaded_server.raw_socket() as sock:
        raw_handshake(sock, threaded_server.token)
        sock.sendall(frame[:len(frame) - cut_bytes])
        sock.shutdown(socket.SHUT_WR)
        read_until_eof(sock)
    assert len(threaded_server.received) == received_before
    threaded_server.assert_serving()


@pytest.mark.parametrize("authenticated", [False, True], ids=["before", "after"])
def test_an_oversized_header_closes_without_waiting_for_the_body(threaded_server, authenticated,
                                                               caplog):
    """Only the 4 header bytes are sent, and the server closes: it never waited for the body."""
    with threaded_server.raw_socket() as sock:
        if authenticated:
            raw_handshake(sock, threaded_server.token)
        else:
            read_frame(sock)
        limit = (1 << 16) if authenticated else transport.HANDSHAKE_MAX_FRAME_BYTES
        sock.sendall(struct.pack(">I", limit + 1))
        assert read_until_eof(sock) == b""
    assert_reported(threaded_server, authenticated, caplog, "over the limit")
    threaded_server.assert_serving()


async def test_a_silent_peer_is_dropped_after_the_handshake_timeout():
    """A connection that never answers the challenge is closed by the server, and reported."""
    rejected = []
    async with await transport.serve(HOST, 0, transport.new_token(), echo,
                                     handshake_timeout_s=0.05,
                                     on_reject=lambda *args: rejected.append(args)) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        assert await reader.read() != b""  # the challenge, then EOF: read() returns both
        assert reader.at_eof()
        writer.close()
    ((peer, reason),) = rejected
    assert peer.startswith(HOST) and "no handshake within" in reason


# -- authentication ----------------------------------------------------------------------------

async def test_correct_token_connects_and_messages_flow_both_ways():
    """With the same token, client and server exchange messages in both directions."""
    token = transport.new_token()
    async with await transport.serve(HOST, 0, token, echo) as server:
        assert await round_trip(server.port, token, [1, b"abc", {"k": None}]) == [1, b"abc",
                                                                               {"k": None}]


async def test_wrong_token_raises_authentication_error_and_the_server_logs_and_serves_on(caplog):
    """The client gets an actionable AuthenticationError; the server logs the peer and goes on."""
    token = transport.new_token()
    caplog.set_level(logging.WARNING, logger="pyactor.transport")
    async with await transport.serve(HOST, 0, token, echo) as server:
        with pytest.raises(AuthenticationError, match="PYACTOR_TOKEN") as raised:
            await transport.connect(HOST, server.port, transport.new_token(), echo)
        assert f"{HOST}:{server.port}" in str(raised.value)
        assert await round_trip(server.port, token) == ["ping", b"\x00\x01"]
    (record,) = [r for r in caplog.records if "failed the handshake" in r.getMessage()]
    assert record.levelno == logging.WARNING and HOST in record.getMessage()
    assert "does not hold the cluster token" in record.getMessage()


async def test_many_failed_handshakes_are_logged_as_one_line(caplog):
    """A server without on_reject logs the first failed handshake at once and aggregates the
    ones after it: a stranger cannot write a log line per connection."""
    token = transport.new_token()
    caplog.set_level(logging.WARNING, logger="pyactor.transport")
    async with await transport.serve(HOST, 0, token, echo) as server:
        for _ in range(20):
            with pytest.raises(AuthenticationError):
                await transport.connect(HOST, server.port, transport.new_token(), echo)
        assert await round_trip(server.port, token) == ["ping", b"\x00\x01"]
    lines = [r.getMessage() for r in caplog.records if "failed the handshake" in r.getMessage()]
    assert len(lines) == 1 and "refused 1 connection" in lines[0], lines


async def test_a_server_that_cannot_prove_the_token_is_rejected_by_the_client():
    """Mutual authentication: an impostor that accepts any client is refused by the client."""

    handled = asyncio.get_running_loop().create_future()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(["pyactor", 1, b"n" * 32]))
        await reader.readexactly(4 + len(msgpack.packb([b"p" * 32, b"c" * 32])))
        writer.write(encode_frame([True, b"f" * 32]))
        await reader.read()
        writer.close()
        await writer.wait_closed()
        handled.set_result(None)

    listener = await asyncio.start_server(impostor, HOST, 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        with pytest.raises(AuthenticationError, match="could not prove"):
            await transport.connect(HOST, port, transport.new_token(), echo)
        await handled


async def test_a_non_pyactor_server_raises_protocol_error():
    """Something else listening on the port is reported as not a pyactor server."""

    handled = asyncio.get_running_loop().create_future()

    async def stranger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(["SSH-2.0", 1, b"n" * 32]))
        await reader.read()
        writer.close()
        await writer.wait_closed()
        handled.set_result(None)

    listener = await asyncio.start_server(stranger, HOST, 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        with pytest.raises(ProtocolError, match="not a pyactor server"):
            await transport.connect(HOST, port, transport.new_token(), echo)
        await handled


async def test_connecting_where_nobody_listens_raises_oserror():
    """A refused connection surfaces as OSError (ConnectionRefusedError)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(OSError):
            await transport.connect(HOST, port, transport.new_token(), echo)


def test_tokens_must_be_non_empty_bytes():
    """A str or empty token is refused at the boundary with a message that says what to pass."""
    with pytest.raises(TypeError, match="bytes.fromhex"):
        transport._check_token("abcd")
    with pytest.raises(ValueError, match="empty"):
        transport._check_token(b"")
    assert len(transport.new_token()) == 32 and transport.new_token() != transport.new_token()


# -- delivery ----------------------------------------------------------------------------------

async def test_a_burst_of_ten_thousand_messages_arrives_in_order():
    """Messages sent in one loop turn arrive complete and in order."""
    token = transport.new_token()
    count = 10_000
    recorder = Recorder(expected=count)
    async with await transport.serve(HOST, 0, token, recorder) as server:
        connection = await transport.connect(HOST, server.port, token, echo)
        for index in range(count):
            connection.send([index, b"payload"])
        assert await recorder.done == [[index, b"payload"] for index in range(count)]
        connection.close()


async def test_a_fifty_megabyte_message_arrives_intact():
    """A big bytes field goes through whole (and drain waits out back-pressure)."""
    token = transport.new_token()
    payload = bytes(range(256)) * (50 * 4096)
    recorder = Recorder(expected=2)
    async with await transport.serve(HOST, 0, token, recorder) as server:
        connection = await transport.connect(HOST, server.port, token, echo)
        connection.send([1, payload])
        connection.send([2, b"after"])
        await connection.drain()
        big, after = await recorder.done
        assert big[0] == 1 and big[1] == payload and after == [2, b"after"]
        connection.close()


async def test_send_threadsafe_from_several_threads_delivers_everything_in_per_thread_order():
    """Frames from each thread arrive complete and in that thread's order."""
    token = transport.new_token()
    thread_count, per_thread = 4, 2_000
    recorder = Recorder(expected=thread_count * per_thread)
    async with await transport.serve(HOST, 0, token, recorder) as server:
        connection = await transport.connect(HOST, server.port, token, echo)

        def produce(thread_index: int) -> None:
            for index in range(per_thread):
                connection.send_threadsafe([thread_index, index])

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(thread_count)]
        for thread in threads:
            thread.start()
        received = await recorder.done
        for thread in threads:
            thread.join()
        for thread_index in range(thread_count):
            assert [i for t, i in received if t == thread_index] == list(range(per_thread))
        connection.close()


async def test_a_handler_exception_closes_only_that_connection(caplog):
    """The raising message's connection closes; another client keeps its round trips."""
    token = transport.new_token()

    def on_message(connection, message):
        if message == "boom":
            raise RuntimeError("handler failed")
        connection.send(message)

    async with await transport.serve(HOST, 0, token, on_message) as server:
        client_closed, on_close = closed_future()
        doomed = await transport.connect(HOST, server.port, token, echo, on_close=on_close)
        doomed.send("boom")
        await client_closed
        assert doomed.closed
        assert await round_trip(server.port, token, "fine") == "fine"
    assert "message handler raised" in caplog.text and "handler failed" in caplog.text


async def test_on_close_is_called_once_on_both_sides_with_the_reason():
    """Closing one end reports an orderly close (None) to the other, each exactly once."""
    token = transport.new_token()
    calls = []
    server_side_closed = asyncio.get_running_loop().create_future()

    def server_on_close(connection, reason):
        calls.append(("server", reason))
        server_side_closed.set_result(None)

    async with await transport.serve(HOST, 0, token, echo, on_close=server_on_close) as server:
        connection = await transport.connect(
            HOST, server.port, token, echo,
            on_close=lambda conn, reason: calls.append(("client", reason)))
        connection.close("done here")
        connection.close("again")
        await server_side_closed
    assert calls == [("client", "done here"), ("server", None)]


async def test_close_writes_what_was_queued_first():
    """Messages sent just before close still reach the peer."""
    token = transport.new_token()
    recorder = Recorder(expected=3)
    async with await transport.serve(HOST, 0, token, recorder) as server:
        connection = await transport.connect(HOST, server.port, token, echo)
        for index in range(3):
            connection.send(index)
        connection.close()
        assert await recorder.done == [0, 1, 2]


async def test_send_now_writes_after_what_was_queued_and_keeps_the_limits():
    """send_now goes out after earlier sends, in order; it refuses what send refuses."""
    token = transport.new_token()
    recorder = Recorder(expected=4)
    async with await transport.serve(HOST, 0, token, recorder) as server:
        connection = await transport.connect(HOST, server.port, token, echo,
                                             max_frame_bytes=1024)
        connection.send_now(0)
        connection.send(1)
        connection.send_now(2)
        connection.send_now(3)
        with pytest.raises(ValueError, match="max_frame_bytes"):
            connection.send_now(b"x" * 2000)
        with pytest.raises(TypeError):
            connection.send_now([1, object()])
        assert await recorder.done == [0, 1, 2, 3]
        connection.close()
        with pytest.raises(transport.ConnectionClosedError):
            connection.send_now("refused")


async def test_server_close_closes_its_connections_and_waits_for_them():
    """Server.close ends every connection; wait_closed returns once they are gone."""
    token = transport.new_token()
    connected = asyncio.get_running_loop().create_future()
    server = await transport.serve(HOST, 0, token, echo,
                                   on_connect=lambda conn: connected.set_result(conn))
    client_closed, on_close = closed_future()
    connection = await transport.connect(HOST, server.port, token, echo, on_close=on_close)
    server_side = await connected
    assert server.connections == {server_side}
    server.close()
    await server.wait_closed()
    await client_closed
    assert connection.closed and server_side.closed and server.connections == set()


async def test_send_after_close_raises_and_drain_raises():
    """A send on a closed connection never vanishes silently: send, send_threadsafe and
    send_with_payload raise ConnectionClosedError, try_send says False, drain raises."""
    token = transport.new_token()
    async with await transport.serve(HOST, 0, token, echo) as server:
        connection = await transport.connect(HOST, server.port, token, echo)
        connection.close()
        with pytest.raises(transport.ConnectionClosedError, match="closed"):
            connection.send("refused")
        with pytest.raises(transport.ConnectionClosedError):
            connection.send_threadsafe("refused")
        with pytest.raises(transport.ConnectionClosedError):
            connection.send_with_payload("refused", memoryview(b"payload"))
        assert connection.try_send("refused") is False
        with pytest.raises(ConnectionError):
            await connection.drain()


async def test_a_connection_closed_by_the_peer_refuses_sends_after_on_close():
    """Once on_close has run, sends raise: a message can never be accepted after the one
    signal of its loss was given."""
    token = transport.new_token()
    closed = asyncio.get_running_loop().create_future()
    async with await transport.serve(HOST, 0, token, echo) as server:
        connection = await transport.connect(
            HOST, server.port, token, echo,
            on_close=lambda conn, reason: closed.set_result(conn.try_send("late")))
        (server_side,) = server.connections
        server_side.close()
        assert await closed is False
        with pytest.raises(transport.ConnectionClosedError):
            connection.send("late")


async def test_an_unencodable_message_raises_and_the_connection_stays_usable():
    """send raises TypeError for a value msgpack cannot encode, and later sends still work."""
    token = transport.new_token()
    async with await transport.serve(HOST, 0, token, echo) as server:
        recorder = Recorder()
        connection = await transport.connect(HOST, server.port, token, recorder)
        with pytest.raises(TypeError):
            connection.send([1, object()])
        connection.send([2, "ok"])
        assert await recorder.done == [[2, "ok"]]
        connection.close()


async def test_a_message_over_the_frame_limit_is_refused_at_send():
    """The sender refuses a message over its own max_frame_bytes with ValueError."""
    token = transport.new_token()
    async with await transport.serve(HOST, 0, token, echo) as server:
        connection = await transport.connect(HOST, server.port, token, echo,
                                             max_frame_bytes=1024)
        with pytest.raises(ValueError, match="max_frame_bytes"):
            connection.send(b"x" * 2000)
        connection.close()


async def test_messages_sent_from_on_connect_reach_the_client_that_just_connected():
    """The server may send as soon as on_connect runs; the client gets it after connect."""
    token = transport.new_token()
    recorder = Recorder(expected=2)
    async with await transport.serve(HOST, 0, token, echo,
                                     on_connect=lambda conn: (conn.send("hello"),
                                                              conn.send(b"w" * 1000))) as server:
        connection = await transport.connect(HOST, server.port, token, recorder)
        assert await recorder.done == ["hello", b"w" * 1000]
        connection.close()


# -- raw payloads (objects between nodes) --------------------------------------------------------

@given(payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4),
       cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_raw_payloads_land_in_their_buffers_however_the_stream_is_split(payloads, cuts):
    """Each announcing message is seen before its payload, which fills the named buffer exactly,
    in order with the messages around it, wherever the byte stream is cut."""
    from pyactor._private.transport import _RAW_FLAG, PAYLOAD_RECEIVED
    stream = b"".join(encode_frame(["chunk", len(p)]) + (len(p) | _RAW_FLAG).to_bytes(4, "big")
                      + p for p in payloads) + encode_frame(["end"])
    decoder = FrameDecoder()
    received, events = [], []

    def handle(messages):
        for message in messages:
            if message is PAYLOAD_RECEIVED:
                events.append("payload")
                continue
            events.append(message[0])
            if message[0] == "chunk":
                buffer = bytearray(message[1])
                received.append(buffer)
                decoder.raw_dest = memoryview(buffer)

    for piece in split_at(stream, cuts):
        handle(decoder.feed(piece))
        while decoder.has_more:
            handle(decoder.feed(b""))
    assert [bytes(b) for b in received] == payloads
    assert events == ["chunk", "payload"] * len(payloads) + ["end"]


def test_a_raw_payload_nobody_asked_for_is_a_protocol_error():
    """A raw header with no destination named (garbage, or a confused peer) is refused."""
    from pyactor._private.transport import _RAW_FLAG
    with pytest.raises(ProtocolError):
        FrameDecoder().feed((5 | _RAW_FLAG).to_bytes(4, "big") + b"12345")


async def test_send_with_payload_writes_into_the_receivers_buffer():
    """send_with_payload + expect_payload move bytes between processes' buffers intact."""
    token = transport.new_token()
    payload = np.arange(1 << 20, dtype=np.uint8)
    target = bytearray(payload.nbytes)
    done = asyncio.get_running_loop().create_future()

    def on_message(conn, message):
        if message[0] == "announce":
            conn.expect_payload(memoryview(target), lambda: done.set_result(message[1]))

    async with await transport.serve(HOST, 0, token, on_message) as server:
        connection = await transport.connect(HOST, server.port, token, echo)
        connection.send_with_payload(["announce", "ok"], memoryview(payload))
        assert await asyncio.wait_for(done, 10) == "ok"
        assert bytes(target) == payload.tobytes()
        connection.close()


# -- the blocking client (direct.py's connection) ---------------------------------------------

async def test_blocking_connection_authenticates_and_exchanges_messages():
    """The blocking client speaks the same handshake and frames as the event-loop one."""
    token = transport.new_token()

    def exchange(port: int) -> list:
        conn = transport.BlockingConnection(HOST, port, token)
        try:
            answers = []
            # Without polling, polling long enough for the answer, and polling too briefly
            # (then blocking): the same messages come back.
            for message, spin_ns in (([1, b"abc"], 0), ({"k": None}, 50_000_000),
                                     (b"x" * 300_000, 1_000)):
                conn.send(message)
                answers.append(conn.receive(spin_ns))
            return answers
        finally:
            conn.close()
    async with await transport.serve(HOST, 0, token, echo) as server:
        assert await asyncio.to_thread(exchange, server.port) == [
            [1, b"abc"], {"k": None}, b"x" * 300_000]


async def test_blocking_connection_refuses_a_wrong_token_a_stranger_and_sees_a_close():
    token = transport.new_token()

    async def stranger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(["SSH-2.0", 1, b"n" * 32]))
        await reader.read()
        writer.close()

    def closer(conn, _message):
        conn.close("no thanks")
    async with await transport.serve(HOST, 0, token, echo) as server:
        with pytest.raises(AuthenticationError, match="rejected this token"):
            await asyncio.to_thread(transport.BlockingConnection, HOST, server.port,
                                    transport.new_token())
    listener = await asyncio.start_server(stranger, HOST, 0)
    async with listener:
        with pytest.raises(ProtocolError, match="not a pyactor server"):
            await asyncio.to_thread(transport.BlockingConnection, HOST,
                                    listener.sockets[0].getsockname()[1], token)
    async with await transport.serve(HOST, 0, token, closer) as server:
        conn = await asyncio.to_thread(transport.BlockingConnection, HOST, server.port, token)
        conn.send("hello")
        with pytest.raises(ConnectionError):
            await asyncio.to_thread(conn.receive, 50_000_000)  # the close ends the polling
        conn.close()
