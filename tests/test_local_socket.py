"""Same-host connections over a Unix socket (transport.py, "Same host, no TCP").

A server started with local_socket=True (a worker's task endpoint) also listens on an abstract
Unix socket named after its TCP address; both clients try that name first and fall back to TCP
when nobody answers there, when the backlog is full, or when whoever holds the name fails the
handshake. Messages and the handshake are the same either way.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

import pyactor as pa
from pyactor._private import transport
from pyactor._private.api import runtime_for_call
from pyactor.exceptions import AuthenticationError

HOST = "127.0.0.1"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract Unix socket names are Linux's")


def echo(connection: transport.Connection, message) -> None:
    connection.send(message)


class Recorder:
    def __init__(self):
        self.messages = asyncio.Queue()

    def __call__(self, _conn, message):
        self.messages.put_nowait(message)


def socket_family(connection: transport.Connection) -> int:
    return connection._transport.get_extra_info("socket").family


def blocking_exchange(port: int, token: bytes, message) -> tuple[int, object]:
    conn = transport.BlockingConnection(HOST, port, token)
    try:
        conn.send(message)
        return conn._socket.family, conn.receive(1_000_000)
    finally:
        conn.close()


async def test_both_clients_reach_a_local_socket_server_over_the_unix_socket():
    """Clients on the same host use the local socket; frames and handshake are unchanged."""
    token = transport.new_token()
    async with await transport.serve(HOST, 0, token, echo, local_socket=True) as server:
        recorder = Recorder()
        conn = await transport.connect(HOST, server.port, token, recorder)
        try:
            assert socket_family(conn) == socket.AF_UNIX
            conn.send([1, b"abc", {"k": None}])
            assert await recorder.messages.get() == [1, b"abc", {"k": None}]
        finally:
            conn.close()
        family, answer = await asyncio.to_thread(blocking_exchange, server.port, token,
                                                 b"x" * 300_000)
        assert family == socket.AF_UNIX and answer == b"x" * 300_000


async def test_a_wrong_token_is_refused_on_the_local_socket_too():
    """The local socket authenticates like TCP: a wrong token is an AuthenticationError."""
    token = transport.new_token()
    async with await transport.serve(HOST, 0, token, echo, local_socket=True) as server:
        with pytest.raises(AuthenticationError):
            await transport.connect(HOST, server.port, transport.new_token(), echo)
        with pytest.raises(AuthenticationError):
            await asyncio.to_thread(transport.BlockingConnection, HOST, server.port,
                                    transport.new_token())


async def test_a_server_without_local_socket_is_reached_over_tcp():
    """No name to find: both clients go over TCP, as before."""
    token = transport.new_token()
    async with await transport.serve(HOST, 0, token, echo) as server:
        conn = await transport.connect(HOST, server.port, token, echo)
        try:
            assert socket_family(conn) == socket.AF_INET
        finally:
            conn.close()
        family, answer = await asyncio.to_thread(blocking_exchange, server.port, token, "hi")
        assert family == socket.AF_INET and answer == "hi"


async def test_the_name_goes_with_the_server():
    """Closing the server frees the name (nothing is left on the file system or bound)."""
    token = transport.new_token()
    server = await transport.serve(HOST, 0, token, echo, local_socket=True)
    name = transport.local_socket_name(HOST, server.port)
    server.close()
    await server.wait_closed()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(ConnectionRefusedError):
            probe.connect(name)
    finally:
        probe.close()


async def test_a_name_held_by_a_stranger_leaves_the_server_and_its_clients_on_tcp():
    """Whoever holds the name first (a process that outlived its TCP port, anyone): the server
    serves over TCP alone, and clients that reach the stranger fall back to TCP."""
    token = transport.new_token()
    with socket.socket() as probe:  # a free port, to squat its name before the server starts
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    strangers = []

    async def stranger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        strangers.append(1)
        writer.write(transport.encode_frame(["SSH-2.0", 1, b"n" * 32]))
        await reader.read()
        writer.close()

    squatter = await asyncio.start_unix_server(stranger, transport.local_socket_name(HOST, port))
    async with squatter:
        async with await transport.serve(HOST, port, token, echo, local_socket=True) as server:
            recorder = Recorder()
            conn = await transport.connect(HOST, server.port, token, recorder)
            try:
                assert socket_family(conn) == socket.AF_INET
                conn.send("over tcp")
                assert await recorder.messages.get() == "over tcp"
            finally:
                conn.close()
            family, answer = await asyncio.to_thread(blocking_exchange, server.port, token, 7)
            assert family == socket.AF_INET and answer == 7
    assert len(strangers) == 2  # both clients tried the name first


def test_a_full_backlog_is_refused_at_once_not_waited_for():
    """A server busy with a long call accepts nothing: connecting to its name must not block
    (the caller then goes over TCP)."""
    name = transport.local_socket_name(HOST, 1)  # (port 1: no pyactor server has it)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(0)
    pending = []
    try:
        for _ in range(64):  # fill the backlog; a blocking connect would hang here
            sock = transport._connect_local(HOST, 1)
            if sock is None:
                break
            pending.append(sock)
        else:
            pytest.fail("the backlog never filled")
    finally:
        for sock in pending:
            sock.close()
        listener.close()


@pa.remote
def where_am_i():
    return 1


@pa.remote
class Counter:
    def __init__(self):
        self.count = 0

    def add(self):
        self.count += 1
        return self.count


def test_calls_to_workers_on_this_host_go_over_the_local_socket(pa_module):
    """A task's and an actor call's direct connections (direct.py) are Unix sockets, and the
    IO thread's connections to the same workers too; the answers are right."""
    counter = Counter.remote()
    assert [pa.get(where_am_i.remote()) for _ in range(3)] == [1, 1, 1]
    assert [pa.get(counter.add.remote()) for _ in range(3)] == [1, 2, 3]
    runtime = runtime_for_call()
    channels = list(runtime.direct._state().channels.values())
    assert channels and {c.conn._socket.family for c in channels} == {socket.AF_UNIX}
    assert pa.get([counter.add.remote() for _ in range(5)]) == [4, 5, 6, 7, 8]  # IO thread
    worker_ports = {key[1] for key in runtime.direct._state().channels}  # (host, port, who)
    peers = [f.result() for key, f in list(runtime._peers.items())
             if key[1] in worker_ports and f.done() and not f.exception()]
    assert peers and {socket_family(conn) for conn in peers} == {socket.AF_UNIX}
    pa.kill(counter)
