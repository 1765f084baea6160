"""Framed, authenticated TCP connections between pyactor processes.

Every pyactor process (driver, node daemon, worker) talks to the others through this module. It
owns the bytes on the wire and nothing else: what a message means belongs to `protocol`.

    any thread: send_threadsafe ──> deque ──┐  (one wake-up per batch, not per message)
    loop thread: send ──────────────────────┴─> pending frames ──(one write per loop turn)──> TCP
                                                                                              │
    peer loop thread: on_message(conn, msg) <── FrameDecoder <── data_received <──────────────┘

Wire format
    frame = body_length (uint32, big-endian) ‖ body (one msgpack value)
    A message is any msgpack value; the runtime sends lists `[kind, field, ...]` whose bytes fields
    carry pickles. Bodies above `max_frame_bytes` (1 GiB by default) are refused from the header.

Handshake: mutual HMAC-SHA256 challenge-response over the cluster token, before any message
    server -> client   ["pyactor", PROTOCOL_VERSION, server_nonce]
    client -> server   [HMAC(token, "client" ‖ server_nonce ‖ client_nonce), client_nonce]
    server -> client   [True, HMAC(token, "server" ‖ client_nonce ‖ server_nonce)]  or  [False, why]
Each side proves it holds the token without sending it; a fresh 32-byte nonce from each side stops
replays, and the "client"/"server" labels stop a proof being reflected back at its sender. Until
the exchange completes, frames are capped at 256 bytes and the server gives up after
`handshake_timeout_s`, so a stranger costs neither memory nor a slot for long. Only an
authenticated connection reaches `on_message` (which may unpickle).

Design notes
- Speed is the product: a task is one or two small messages each way. Connections are
  `asyncio.Protocol` callbacks (no task or await per message); one `data_received` may decode many
  frames; `send` only packs and appends, and the first send of a loop turn schedules one flush that
  writes all pending frames in one syscall. Sends made while a connection delivers its messages
  are flushed when the batch ends, which saves the extra loop turn on the request -> reply path.
- An incomplete frame is kept as a list of chunks joined once when complete, so a 1 GiB body read
  in 256 KiB pieces costs one copy, not a quadratic regrowth.
- A peer that breaks the format, or a handler that raises, closes that connection only (logged on
  "pyactor.transport"); the server goes on serving the others.
- Threads: `send`, `drain` and `close` belong to the loop thread; other threads use
  `send_threadsafe`, which packs in the calling thread and wakes the loop only when no wake-up is
  already on its way. Frames from one thread keep their order; frames from different threads, or
  from `send` and `send_threadsafe`, are interleaved in no promised order.
- `send` never blocks. A message is never lost without a signal: `send` on a closed connection
  raises ConnectionClosedError (its `on_close` has already run), and a message it accepted is
  written unless the connection closes first, in which case `on_close` follows. So whoever
  records state about a connection after an `await` checks `closed` first (on_close will not
  come again), and a caller that may race with a close catches ConnectionClosedError. Bulk
  senders call `await drain()` to respect TCP back-pressure.
- Same host, no TCP: a server started with `local_socket=True` (a worker's task endpoint, a
  runtime's endpoint for its peers; not a node's, whose clients learn their interface from
  the connection) also listens on an abstract Unix socket named after its TCP address
  (`local_socket_name`, Linux), and clients (`connect`, `BlockingConnection`) try that name
  before TCP. Loopback TCP runs the IP stack for each message; a Unix socket hands the bytes
  over (measured on this VM:
  one send and receive in one thread 18 us over TCP, 5 us over a Unix socket). The name holds
  the TCP host and port, which only this server can hold, so a name that answers is this
  server; frames and handshake are the same, and with no such name (another host, another
  OS, an older server) the client goes over TCP as before.
- A connection that fails its handshake never reaches the owner's code, and is not logged one
  line each (anyone who can reach a port could fill a log that way): servers report it to
  `on_reject(peer, reason)`, which the runtime and the node aggregate (rejections.py).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

import msgpack

from pyactor._private.rejections import RejectionReporter, log_rejections
from pyactor.exceptions import AuthenticationError, ProtocolError

logger = logging.getLogger("pyactor.transport")

# The compiled part (csrc/net.c): BlockingConnection's frame I/O. Built by every install (the
# object store is in the same extension).
from pyactor._store_cffi import ffi as _net_ffi, lib as _net_lib

DEFAULT_MAX_FRAME_BYTES = 1 << 30
_LOCAL_SOCKETS = sys.platform.startswith("linux")  # abstract Unix socket names are Linux's


def local_socket_name(host: str, port: int) -> str | None:
    """The abstract Unix socket a `local_socket` server at host:port also listens on (the
    leading NUL: nothing on the file system, gone when the server closes); None where there
    are no abstract names."""
    return f"\0pyactor-{host}:{port}" if _LOCAL_SOCKETS else None


def _connect_local(host: str, port: int) -> socket.socket | None:
    """A socket connected to host:port's local socket, or None if nobody listens
    there (then the caller goes over TCP)."""
    name = local_socket_name(host, port)
    if name is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)  # a Unix connect completes at once, or fails with EAGAIN when the
    try:                     # server's backlog is full (it runs a long call): never waits
        sock.connect(name)
    except OSError:  # refused: not a local_socket server, or on another host; or that backlog
        sock.close()
        return None
    return sock  # (non-blocking, as an event loop takes it)


HANDSHAKE_MAX_FRAME_BYTES = 256
PROTOCOL_MAGIC = "pyactor"
PROTOCOL_VERSION = 1
TOKEN_BYTES = 32
_NONCE_BYTES = 32
_HEADER = struct.Struct(">I")
_HEADER_BYTES = _HEADER.size
_LARGEST_FRAME_BYTES = (1 << 32) - 1  # what a 4-byte length can say
# A frame header with this bit set announces a raw payload: that many bytes follow, not msgpack,
# and go straight into the buffer the receiver named with expect_payload (objects between nodes
# travel this way: one copy on each side instead of four).
_RAW_FLAG = 1 << 31
_LARGE_BODY_BYTES = 1 << 18  # bodies from here up are written on their own, not copied in a batch
_SMALL_BODY_BYTES = 1 << 12  # bodies up to here are sliced (a small copy beats a memoryview)
_INBOX_BYTES = 1 << 16  # a BlockingConnection's read buffer; grows for a larger frame, then shrinks
DEFAULT_REJECTION_REPORT_S = 60.0  # servers without on_reject log failed handshakes this often
_TOKEN_HINT = ("pass the token printed by `pyactor start --head` as token=... "
               "or set PYACTOR_TOKEN")

OnMessage = Callable[["Connection", Any], None]
OnClose = Callable[["Connection", "str | None"], None]
OnConnect = Callable[["Connection"], None]
OnReject = Callable[[str, str], None]  # (peer "host:port", why): a handshake that failed


class ConnectionClosedError(ConnectionError):
    """`send` on a connection that is already closed: the message did not go out. The
    connection's `on_close` has already run (it does not run again)."""


def new_token() -> bytes:
    """A fresh cluster token: 32 random bytes (show it to users as `token.hex()`)."""
    return secrets.token_bytes(TOKEN_BYTES)


# ---------------------------------------------------------------------------------------------
# Framing (pure: no I/O, property-tested on its own)

def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True)


def _frame_header(body_bytes: int, max_frame_bytes: int) -> bytes:
    if body_bytes > max_frame_bytes:
        raise ValueError(f"message of {body_bytes} bytes exceeds max_frame_bytes={max_frame_bytes};"
                         " put large values in the object store instead")
    return _HEADER.pack(body_bytes)


def encode_frame(message: Any) -> bytes:
    """One message as a complete frame; raises TypeError if it is not msgpack-able."""
    body = msgpack.packb(message, use_bin_type=True)
    return _frame_header(len(body), _LARGEST_FRAME_BYTES) + body


class _PayloadReceived:
    """Marker `FrameDecoder.feed` returns in place of a message when a raw payload is in."""

    def __repr__(self) -> str:
        return "PAYLOAD_RECEIVED"


PAYLOAD_RECEIVED = _PayloadReceived()


class FrameDecoder:
    """Splits a byte stream into frames and decodes each body.

    Holds at most one incomplete frame, as chunks joined once when enough bytes are in, and checks
    a header against `max_frame_bytes` as soon as its 4 bytes arrive, before buffering any of the
    body. `feed` raises `ProtocolError` for a frame that is too large or not one msgpack value;
    after that the stream is out of step and the decoder must be dropped.
    """

    __slots__ = ("max_frame_bytes", "_chunks", "_buffered_bytes", "_needed_bytes", "raw_dest",
                 "_raw_filled")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self._chunks: list[bytes] = []
        self._buffered_bytes = 0
        self._needed_bytes = _HEADER_BYTES  # bytes the buffered incomplete frame needs in all
        self.raw_dest: memoryview | None = None  # where the next raw payload goes
        self._raw_filled = -1  # bytes of raw_dest received; -1 when no payload is under way

    @property
    def has_more(self) -> bool:
        """A frame is complete in the buffer (feed stopped before a raw payload)."""
        return bool(self._chunks) and self._buffered_bytes >= self._needed_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame held; nonzero at EOF means the peer cut a frame short."""
        return self._buffered_bytes

    def feed(self, data: bytes, max_messages: int | None = None) -> list:
        """Decode the messages that `data` completes, in order.

        `max_messages` stops early and keeps the rest buffered (the handshake reads one frame at
        a time because the size limit changes after it); `feed(b"")` then continues.
        """
        if not self._chunks and self._raw_filled < 0 and type(data) is bytes:
            # The common case first: one whole small frame in one read (a call, its answer).
            # A raw-payload header has its top bit set, so it never matches the length here.
            end = len(data)
            if end > _HEADER_BYTES:
                body_bytes = int.from_bytes(data[:_HEADER_BYTES], "big")
                if body_bytes + _HEADER_BYTES == end and body_bytes <= _SMALL_BODY_BYTES \
                        and body_bytes <= self.max_frame_bytes:
                    try:
                        return [msgpack.unpackb(data[_HEADER_BYTES:], raw=False,
                                                strict_map_key=False)]
                    except Exception as error:  # msgpack raises ValueError, TypeError...
                        raise ProtocolError(f"frame body is not one msgpack value "
                                            f"({type(error).__name__}: {error})") from None
        if self._raw_filled >= 0:
            messages, position = self._take_raw(data, 0, [])
            if self._raw_filled >= 0 or position == len(data):
                return messages
            data = data[position:]
            return messages + self.feed(data, max_messages)
        if self._chunks:
            if data:
                self._chunks.append(data if type(data) is bytes else bytes(data))
                self._buffered_bytes += len(data)
            if self._buffered_bytes < self._needed_bytes:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
            self._buffered_bytes = 0
        elif type(data) is not bytes:
            data = bytes(data)
        messages: list = []
        end = len(data)
        position = 0
        limit = self.max_frame_bytes
        view = memoryview(data)
        unpack_header = _HEADER.unpack_from
        unpackb = msgpack.unpackb
        while end - position >= _HEADER_BYTES:
            (body_bytes,) = unpack_header(data, position)
            if body_bytes & _RAW_FLAG:
                if messages:  # let the application see the message that names a destination
                    break
                position = self._start_raw(body_bytes & ~_RAW_FLAG, position + _HEADER_BYTES)
                messages, position = self._take_raw(data, position, messages)
                if self._raw_filled >= 0:
                    return messages
                continue
            if body_bytes > limit:
                raise ProtocolError(f"frame header declares {body_bytes} bytes, over the limit of"
                                    f" {limit}")
            start = position + _HEADER_BYTES
            stop = start + body_bytes
            if stop > end:
                break
            try:
                messages.append(unpackb(data[start:stop] if body_bytes <= _SMALL_BODY_BYTES
                                        else view[start:stop], raw=False, strict_map_key=False))
            except Exception as error:  # msgpack raises ValueError, TypeError and subclasses
                raise ProtocolError(f"frame body is not one msgpack value ({type(error).__name__}:"
                                    f" {error})") from None
            position = stop
            if max_messages is not None and len(messages) >= max_messages:
                break
        if position < end:
            self._keep_incomplete(data[position:])
        return messages

    def _start_raw(self, payload_bytes: int, position: int) -> int:
        dest = self.raw_dest
        if dest is None:
            raise ProtocolError("a raw payload arrived with no destination named for it")
        if payload_bytes != dest.nbytes or payload_bytes > self.max_frame_bytes:
            raise ProtocolError(f"raw payload of {payload_bytes} bytes where {dest.nbytes} were"
                                f" expected")
        self._raw_filled = 0
        return position

    def _take_raw(self, data: bytes, position: int, messages: list) -> tuple[list, int]:
        """Copy what `data` holds of the payload under way into its destination."""
        dest = self.raw_dest
        take = min(dest.nbytes - self._raw_filled, len(data) - position)
        if take:
            dest[self._raw_filled:self._raw_filled + take] = \
                memoryview(data)[position:position + take]
            self._raw_filled += take
        if self._raw_filled == dest.nbytes:
            self._raw_filled = -1
            self.raw_dest = None
            messages.append(PAYLOAD_RECEIVED)
        return messages, position + take

    def _keep_incomplete(self, rest: bytes) -> None:
        self._chunks = [rest]
        self._buffered_bytes = len(rest)
        if len(rest) < _HEADER_BYTES:
            self._needed_bytes = _HEADER_BYTES
            return
        (body_bytes,) = _HEADER.unpack_from(rest)
        if body_bytes & _RAW_FLAG:  # only the header is needed: the payload is not buffered
            self._needed_bytes = _HEADER_BYTES
            return
        if body_bytes > self.max_frame_bytes:
            raise ProtocolError(f"frame header declares {body_bytes} bytes, over the limit of"
                                f" {self.max_frame_bytes}")
        self._needed_bytes = _HEADER_BYTES + body_bytes


# ---------------------------------------------------------------------------------------------
# Handshake arithmetic

def _proof(token: bytes, label: bytes, first_nonce: bytes, second_nonce: bytes) -> bytes:
    return hmac.digest(token, label + first_nonce + second_nonce, hashlib.sha256)


def _is_nonce(value: Any) -> bool:
    return type(value) is bytes and len(value) == _NONCE_BYTES


def _check_token(token: Any) -> bytes:
    if isinstance(token, str):
        raise TypeError("token must be bytes, not str; for a hex token use bytes.fromhex(token)")
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise TypeError(f"token must be bytes, not {type(token).__name__}")
    if len(token) == 0:
        raise ValueError(f"token is empty; {_TOKEN_HINT}")
    return bytes(token)


def _check_max_frame_bytes(max_frame_bytes: int) -> int:
    if not HANDSHAKE_MAX_FRAME_BYTES <= max_frame_bytes <= _LARGEST_FRAME_BYTES:
        raise ValueError(f"max_frame_bytes must be in [{HANDSHAKE_MAX_FRAME_BYTES},"
                         f" {_LARGEST_FRAME_BYTES}], got {max_frame_bytes}")
    return max_frame_bytes


# The client's half of the handshake, shared by the event-loop and the blocking connection.

def _check_challenge(frame: Any, address: str) -> bytes:
    """The server's opening frame; returns its nonce."""
    if not (type(frame) is list and len(frame) == 3 and frame[0] == PROTOCOL_MAGIC):
        raise ProtocolError(f"{address} is not a pyactor server")
    if frame[1] != PROTOCOL_VERSION:
        raise ProtocolError(f"{address} speaks pyactor protocol version {frame[1]!r};"
                            f" this process speaks {PROTOCOL_VERSION}: use one pyactor"
                            " version across the cluster")
    if not _is_nonce(frame[2]):
        raise ProtocolError(f"malformed handshake challenge from {address}")
    return frame[2]


def _client_proof_frame(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return encode_frame([_proof(token, b"client", server_nonce, client_nonce), client_nonce])


def _check_server_answer(frame: Any, token: bytes, server_nonce: bytes, client_nonce: bytes,
                         address: str) -> None:
    if not (type(frame) is list and len(frame) == 2):
        raise ProtocolError(f"malformed handshake reply from {address}")
    accepted, server_proof = frame
    if accepted is False:
        raise AuthenticationError(f"the cluster at {address} rejected this token;"
                                  f" {_TOKEN_HINT}")
    expected = _proof(token, b"server", client_nonce, server_nonce)
    if not (accepted is True and type(server_proof) is bytes
            and hmac.compare_digest(server_proof, expected)):
        raise AuthenticationError(
            f"the server at {address} could not prove it holds this token: it belongs"
            f" to another cluster (check the address) or this token is wrong; {_TOKEN_HINT}")


# ---------------------------------------------------------------------------------------------
# Connections

@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """What all connections of one server, or of one `connect` call, share."""
    token: bytes
    on_message: OnMessage
    on_connect: OnConnect | None
    on_close: OnClose | None
    max_frame_bytes: int
    handshake_timeout_s: float
    is_server: bool
    on_reject: OnReject | None = None  # servers: where failed handshakes are reported
    # Servers: runs after a connection handled a batch of received messages, before the loop
    # goes back to waiting (a worker polls for its next call there: worker_spin.py).
    after_batch: Callable[[], None] | None = None


_thread_state = threading.local()


def _thread_packer() -> msgpack.Packer:
    """A packer per thread: msgpack packers are not thread-safe, and building one costs."""
    try:
        return _thread_state.packer
    except AttributeError:
        packer = _thread_state.packer = _new_packer()
        return packer


class Connection(asyncio.Protocol):
    """One authenticated TCP connection; both ends of a link are `Connection`s.

    `peer` is the remote (host, port); `closed` turns true once, when either side closes;
    `on_close(conn, reason)` is then called once, with None for an orderly close and a string
    saying what went wrong otherwise. `user_data` is the owner's slot (which worker, which node).
    """

    __slots__ = (
        "peer", "closed", "on_close", "user_data", "_endpoint", "_address", "_server", "_loop",
        "_transport", "_decoder", "_on_message", "_packer", "_pending", "_flush_scheduled",
        "_delivering", "_threadsafe_frames", "_threadsafe_wakeup_scheduled", "_write_paused",
        "_drain_waiters", "_authenticated", "_server_nonce", "_client_nonce", "_handshake_done",
        "_handshake_timer", "_payload_done",
    )

    def __init__(self, endpoint: _Endpoint, address: str = "", server: Server | None = None,
                 handshake_done: asyncio.Future | None = None):
        self.peer: tuple[str, int] | None = None
        self.closed = False
        self.on_close: OnClose | None = None
        self.user_data: Any = None
        self._endpoint = endpoint
        self._address = address  # "host:port" for messages
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
        self._on_message = endpoint.on_message
        self._packer = _new_packer()
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._delivering = False
        self._threadsafe_frames: collections.deque = collections.deque()
        self._threadsafe_wakeup_scheduled = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._authenticated = False
        self._server_nonce = b""
        self._client_nonce = b""
        self._handshake_done = handshake_done
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._payload_done: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self._authenticated else "handshaking"
        return f"<Connection {self._address} {state}>"

    def fileno(self) -> int:
        """The socket's file descriptor, or -1 when there is none (not connected, or not a
        socket): for polling it from C, never for reading or writing past the transport."""
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        return sock.fileno() if sock is not None else -1

    # -- sending ----------------------------------------------------------------------------

    def send(self, message: Any, *, packed: bytes | None = None) -> None:
        """Queue `message`; it is written with the others queued in this loop turn. `packed`:
        the message already packed with msgpack (one encoding sent to many; see send_packed).

        Loop thread only. Raises TypeError for a value msgpack cannot encode, ValueError for
        one over `max_frame_bytes`, and ConnectionClosedError once the connection is closed.
        """
        # One function, not send -> send_packed: every call and every answer of a batch comes
        # through here, and a Python call more per message showed in the actor batch's profile.
        body = self._packer.pack(message) if packed is None else packed
        if self.closed:
            raise self._closed_error()
        body_bytes = len(body)
        if body_bytes > self._endpoint.max_frame_bytes:
            _frame_header(body_bytes, self._endpoint.max_frame_bytes)  # raises
        pending = self._pending
        pending.append(body_bytes.to_bytes(4, "big"))  # faster than struct for one int
        if body_bytes >= _LARGE_BODY_BYTES:
            # Write now rather than copy a big body into the joined batch; order is kept
            # because what was queued before goes first.
            self._transport.write(b"".join(pending))
            pending.clear()
            self._transport.write(body)
            return
        pending.append(body)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if not self._delivering:  # else data_received flushes when its batch ends
                self._loop.call_soon(self._flush)

    def send_now(self, message: Any) -> None:
        """`send`, then write everything queued at once: for an answer that must not wait for
        the end of the loop turn (a worker's TaskDone, before it runs the next call). With
        nothing queued, header and body go out in one write and no flush is involved."""
        body = self._packer.pack(message)
        body_bytes = len(body)
        if self._pending or self.closed or body_bytes >= _LARGE_BODY_BYTES \
                or body_bytes > self._endpoint.max_frame_bytes:
            self.send(None, packed=body)  # raises for a closed connection or an oversized body
            self._flush()
            return
        self._transport.write(body_bytes.to_bytes(4, "big") + body)

    def send_packed(self, body: bytes) -> None:
        """`send` for a message already packed with msgpack (one encoding sent to many)."""
        self.send(None, packed=body)

    def try_send(self, message: Any) -> bool:
        """`send`, or False when the connection is closed: for a message whose loss needs no
        handling of its own because the close is already handled (its on_close ran)."""
        if self.closed:
            return False
        self.send(message)
        return True

    def send_with_payload(self, message: Any, payload: memoryview) -> None:
        """Send `message`, then `payload` as raw bytes (no msgpack, no copy here). The receiver's
        handler for `message` must call `expect_payload` with a buffer of exactly that size."""
        if self.closed:
            raise self._closed_error()
        if payload.nbytes > self._endpoint.max_frame_bytes:
            _frame_header(payload.nbytes, self._endpoint.max_frame_bytes)  # raises
        self.send(message)
        self._pending.append((payload.nbytes | _RAW_FLAG).to_bytes(4, "big"))
        self._flush()
        self._transport.write(payload)

    def expect_payload(self, dest: memoryview, on_done: Callable[[], None]) -> None:
        """Receive the next raw payload into `dest` (call from the handler of the message that
        announces it); `on_done()` runs, in order with messages, once it is all in."""
        self._decoder.raw_dest = dest
        self._payload_done = on_done

    def send_threadsafe(self, message: Any) -> None:
        """`send` for any thread: packs here, and wakes the loop only if no wake-up is pending.
        Raises ConnectionClosedError once the connection is closed; a frame sent while the
        loop thread closes it is dropped with the other unwritten frames (on_close is then
        running or has run on the loop thread)."""
        if self.closed:
            raise self._closed_error()
        body = _thread_packer().pack(message)
        header = _frame_header(len(body), self._endpoint.max_frame_bytes)
        self._threadsafe_frames.append((header, body))  # one append: atomic under the GIL
        if not self._threadsafe_wakeup_scheduled:
            self._threadsafe_wakeup_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._take_threadsafe_frames)
            except RuntimeError:  # the loop is closed, and the connection with it
                pass

    def _closed_error(self) -> ConnectionClosedError:
        return ConnectionClosedError(f"the connection with {self._address} is closed")

    def _take_threadsafe_frames(self) -> None:
        # Clear the flag before taking: a frame appended after the last popleft then sees the
        # flag down and schedules another wake-up, so none is stranded.
        self._threadsafe_wakeup_scheduled = False
        frames = self._threadsafe_frames
        pending = self._pending
        while frames:
            pending.extend(frames.popleft())
        self._flush()

    def flush(self) -> None:
        """Write what is queued now. Sends made while handling received messages are normally
        held until the whole received batch is handled; a handler that runs long work after
        answering (a worker running pipelined calls) flushes so the answer does not wait."""
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = self._pending
        if pending and not self.closed:
            self._transport.write(b"".join(pending))
            pending.clear()

    async def drain(self) -> None:
        """Write what is queued and wait while the socket's write buffer is over its high mark.

        Raises ConnectionError if the connection is or becomes closed.
        """
        if self.closed:
            raise ConnectionError(f"the connection with {self._address} is closed")
        self._flush()
        if self._write_paused:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain_waiters(None)

    def _wake_drain_waiters(self, error: Exception | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    # -- receiving --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):  # not TCP (tests over socketpair)
                pass
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.peer = (peername[0], peername[1])
            if not self._address:
                self._address = f"{peername[0]}:{peername[1]}"
        if self._endpoint.is_server:
            self._server._live.add(self)
            self._handshake_timer = self._loop.call_later(
                self._endpoint.handshake_timeout_s, self._handshake_timed_out)
            self._server_nonce = secrets.token_bytes(_NONCE_BYTES)
            transport.write(encode_frame([PROTOCOL_MAGIC, PROTOCOL_VERSION, self._server_nonce]))

    def data_received(self, data: bytes) -> None:
        """Decode what `data` completes and hand each message to on_message, in order; before
        the handshake completed, its frames go to _handshake_received instead. (One function:
        this runs once per call a worker receives.)"""
        if not self._authenticated:
            self._handshake_received(data)
            return
        if self.closed:
            return
        decoder = self._decoder
        try:
            messages = decoder.feed(data)
        except ProtocolError as error:
            self._close_for_violation(str(error))
            return
        if not messages:
            return
        on_message = self._on_message
        self._delivering = True
        try:
            while True:
                for message in messages:
                    if message is PAYLOAD_RECEIVED:
                        done, self._payload_done = self._payload_done, None
                        done()
                    else:
                        on_message(self, message)
                    if self.closed:
                        return
                if not decoder._chunks or not decoder.has_more:  # (the first test is cheap)
                    break
                try:  # feed stopped before a raw payload: its destination is named now
                    messages = decoder.feed(b"")
                except ProtocolError as error:
                    self._close_for_violation(str(error))
                    return
        except Exception as error:
            logger.exception("closing the connection with %s: its message handler raised",
                             self._address)
            self.close(f"message handler raised {type(error).__name__}: {error}")
            return
        finally:
            self._delivering = False
        if self._flush_scheduled:
            self._flush()
        after_batch = self._endpoint.after_batch
        if after_batch is not None:
            after_batch()

    def eof_received(self) -> bool:
        if self._decoder.buffered_bytes and not self.closed:
            self._close_for_violation(f"truncated frame: the peer closed the connection with"
                                      f" {self._decoder.buffered_bytes} bytes of a frame unsent")
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._finish(None if exc is None else f"connection lost: {exc}")
        if self._server is not None:
            self._server._forget(self)

    # -- closing ----------------------------------------------------------------------------

    def close(self, reason: str = "") -> None:
        """Write what is queued, then close; `reason` goes to on_close (empty: orderly)."""
        if self.closed:
            return
        if self._pending and self._authenticated:
            self._transport.write(b"".join(self._pending))
        self._pending.clear()
        self.closed = True
        self._transport.close()
        self._finish(reason or None)

    def _close_for_violation(self, reason: str) -> None:
        if self._endpoint.is_server and not self._authenticated:
            self._reject(reason)
        else:
            logger.warning("closing the connection with %s: %s", self._address, reason)
        self.close(reason)

    def _reject(self, reason: str) -> None:
        """A peer failed the handshake: tell the server's owner (who aggregates), not the log
        once per connection."""
        on_reject = self._endpoint.on_reject
        if on_reject is None:
            return
        try:
            on_reject(self._address, reason)
        except Exception:
            logger.exception("on_reject for the connection with %s raised", self._address)

    def _finish(self, reason: str | None) -> None:
        """Settle everything that waits on this connection; runs once, when it becomes closed."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._threadsafe_frames.clear()
        self._wake_drain_waiters(ConnectionError(
            f"the connection with {self._address} closed" + (f": {reason}" if reason else "")))
        if self._handshake_done is not None and not self._handshake_done.done():
            self._handshake_done.set_exception(ConnectionError(
                f"{self._address} closed the connection during the handshake"
                + (f" ({reason})" if reason else "")))
        if self._server is not None:
            self._server.connections.discard(self)
        on_close, self.on_close = self.on_close, None
        if on_close is not None and self._authenticated:
            try:
                on_close(self, reason)
            except Exception:
                logger.exception("on_close for the connection with %s raised", self._address)

    # -- handshake --------------------------------------------------------------------------

    def _handshake_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data, max_messages=1)
            while frames and not self.closed:
                if self._endpoint.is_server:
                    self._check_client_proof(frames[0])
                elif not self._client_nonce:
                    self._answer_challenge(frames[0])
                else:
                    self._check_server_proof(frames[0])
                if self._authenticated:
                    self.data_received(b"")  # frames that came in the same read as the proof
                    return
                frames = [] if self.closed else self._decoder.feed(b"", max_messages=1)
        except (ProtocolError, AuthenticationError) as error:
            self._fail_handshake(error)

    def _check_client_proof(self, frame: Any) -> None:
        if not (type(frame) is list and len(frame) == 2 and type(frame[0]) is bytes
                and _is_nonce(frame[1])):
            raise ProtocolError("malformed handshake answer (not a pyactor client?)")
        client_proof, client_nonce = frame
        token = self._endpoint.token
        expected = _proof(token, b"client", self._server_nonce, client_nonce)
        if not hmac.compare_digest(client_proof, expected):
            self._reject("it does not hold the cluster token")
            self._transport.write(encode_frame([False, "token rejected"]))
            self.close("token rejected")
            return
        self._transport.write(encode_frame(
            [True, _proof(token, b"server", client_nonce, self._server_nonce)]))
        self._become_open()
        on_connect = self._endpoint.on_connect
        if on_connect is not None and not self.closed:
            try:
                on_connect(self)
            except Exception as error:
                logger.exception("closing the connection with %s: on_connect raised",
                                 self._address)
                self.close(f"on_connect raised {type(error).__name__}: {error}")

    def _answer_challenge(self, frame: Any) -> None:
        self._server_nonce = _check_challenge(frame, self._address)
        self._client_nonce = secrets.token_bytes(_NONCE_BYTES)
        self._transport.write(_client_proof_frame(self._endpoint.token, self._server_nonce,
                                                  self._client_nonce))

    def _check_server_proof(self, frame: Any) -> None:
        _check_server_answer(frame, self._endpoint.token, self._server_nonce, self._client_nonce,
                             self._address)
        self._become_open()
        if not self._handshake_done.done():
            self._handshake_done.set_result(None)

    def _become_open(self) -> None:
        self._authenticated = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._decoder.max_frame_bytes = self._endpoint.max_frame_bytes
        self.on_close = self._endpoint.on_close
        if self._server is not None:
            self._server.connections.add(self)

    def _fail_handshake(self, error: Exception) -> None:
        if self._endpoint.is_server:
            self._reject(str(error))
        elif self._handshake_done is not None and not self._handshake_done.done():
            self._handshake_done.set_exception(error)
        self.close(str(error))

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if not self._authenticated and not self.closed:
            self._close_for_violation(f"no handshake within {self._endpoint.handshake_timeout_s}"
                                      " s")


async def connect(host: str, port: int, token: bytes, on_message: OnMessage, *,
                  on_close: OnClose | None = None, timeout_s: float = 10.0,
                  max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Connection:
    """Open an authenticated connection to a pyactor server.

    Raises AuthenticationError when the server rejects the token or cannot prove it holds it,
    ProtocolError when the other end is not a compatible pyactor server, OSError (such as
    ConnectionRefusedError) when nobody listens, and TimeoutError after `timeout_s`.
    """
    endpoint = _Endpoint(token=_check_token(token), on_message=on_message, on_connect=None,
                         on_close=on_close, max_frame_bytes=_check_max_frame_bytes(max_frame_bytes),
                         handshake_timeout_s=timeout_s, is_server=False)
    address = f"{host}:{port}"
    local = _connect_local(host, port)
    if local is not None:
        try:
            return await _open(endpoint, address, timeout_s, sock=local)
        except (OSError, ProtocolError, AuthenticationError) as error:
            # Someone else holds the name (it outlived its TCP port): TCP reaches the server.
            logger.debug("the local socket of %s failed its handshake (%s): over TCP", address,
                         error)
    return await _open(endpoint, address, timeout_s, host=host, port=port)


async def _open(endpoint: _Endpoint, address: str, timeout_s: float, *, sock=None, host=None,
                port=None) -> Connection:
    """Connect (over `sock`, else to host:port) and run the handshake."""
    loop = asyncio.get_running_loop()
    handshake_done = loop.create_future()
    connection: Connection | None = None

    def factory() -> Connection:
        return Connection(endpoint, address, handshake_done=handshake_done)
    try:
        async with asyncio.timeout(timeout_s):
            if sock is not None:
                _, connection = await loop.create_unix_connection(factory, sock=sock)
            else:
                _, connection = await loop.create_connection(factory, host, port)
            await handshake_done
        if connection.closed:  # after the handshake, before this resumed: nobody heard
            raise ConnectionClosedError(f"the connection with {address} closed right after "
                                        f"its handshake")
    except TimeoutError:
        if connection is not None:
            connection.close("handshake timed out")
        raise TimeoutError(f"no pyactor handshake with {address} within {timeout_s} s") from None
    except BaseException:
        if connection is not None:
            connection.close("connect failed")
        elif sock is not None:
            sock.close()
        raise
    return connection



class BlockingConnection:
    """A client connection for one thread that sends a request and blocks for the answer.

    It speaks the same frames and handshake as `Connection`, without an event loop: the
    synchronous fast path (direct.py) uses it so that a thread blocked in `get` is woken by the
    answer itself, not by another thread. Not thread-safe; one call at a time.

    Each frame is one C call each way (csrc/net.c, without the GIL): `send` writes header and
    body with one sendmsg; `receive` reads a whole frame into this connection's inbox (polling,
    then sleeping until the deadline) and the body is unpacked straight from there. Bytes read
    past a frame, or a frame cut short by a deadline, stay in the inbox for the next call.
    """

    __slots__ = ("address", "_socket", "_fd", "_packer", "closed", "max_frame_bytes",
                 "_inbox", "_inbox_bytes", "_inbox_view", "_inbox_pointer", "_inbox_state")

    def __init__(self, host: str, port: int, token: bytes, timeout_s: float = 10.0,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        token = _check_token(token)
        max_frame_bytes = _check_max_frame_bytes(max_frame_bytes)
        self.address = f"{host}:{port}"
        self._packer = _new_packer()
        self.closed = False
        self.max_frame_bytes = HANDSHAKE_MAX_FRAME_BYTES  # until the peer proved itself
        self._new_inbox()
        local = _connect_local(host, port)
        if local is not None:
            local.settimeout(timeout_s)
            try:
                self._handshake(local, token, timeout_s)
            except (OSError, ProtocolError, AuthenticationError) as error:
                # Someone else holds the name (it outlived its TCP port): TCP reaches the server.
                logger.debug("the local socket of %s failed its handshake (%s): over TCP",
                             self.address, error)
                local = None
                self._new_inbox()
        if local is None:
            tcp = socket.create_connection((host, port), timeout=timeout_s)
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshake(tcp, token, timeout_s)
        self.max_frame_bytes = max_frame_bytes
        self._socket.settimeout(None)

    def _new_inbox(self) -> None:
        self._inbox_state = _net_ffi.new("pa_inbox *")  # what the inbox holds (C keeps it)
        self._use_inbox(bytearray(_INBOX_BYTES))

    def _handshake(self, sock: socket.socket, token: bytes, timeout_s: float) -> None:
        """Authenticate on `sock` (closed if that fails)."""
        self._socket, self._fd, self.closed = sock, sock.fileno(), False
        try:
            deadline = time.monotonic() + timeout_s
            server_nonce = _check_challenge(self.receive(0, deadline), self.address)
            client_nonce = secrets.token_bytes(_NONCE_BYTES)
            sock.sendall(_client_proof_frame(token, server_nonce, client_nonce))
            _check_server_answer(self.receive(0, deadline), token, server_nonce, client_nonce,
                                 self.address)
        except BaseException:
            self.close()
            raise

    def send(self, message: Any) -> None:
        """Write one message now (raises OSError if the peer is gone)."""
        body = self._packer.pack(message)
        body_bytes = len(body)
        if body_bytes > self.max_frame_bytes:
            _frame_header(body_bytes, self.max_frame_bytes)  # (raises: over the limit)
        frame_bytes = body_bytes + _HEADER_BYTES
        sent = _net_lib.pa_send_frame(self._fd, body, body_bytes, 0)
        while sent != frame_bytes:  # (a signal came: its handler runs at this loop's turn)
            if sent < 0:
                raise OSError(-sent, os.strerror(-sent))
            sent = _net_lib.pa_send_frame(self._fd, body, body_bytes, sent)

    def receive(self, spin_ns: int = 0, deadline: float | None = None) -> Any:
        """Block for the next message; ConnectionError when the peer closed, ProtocolError when
        it broke the format, TimeoutError at `deadline` (time.monotonic(); a message cut short
        is kept for the next call). With `spin_ns`, poll that long before sleeping in the
        kernel: an answer that comes within it costs no wake-up of this thread. A signal's
        handler runs while it sleeps (its exception, such as KeyboardInterrupt, ends the wait)."""
        deadline_s = -1.0 if deadline is None else deadline
        while True:
            got = _net_lib.pa_recv_frame(self._fd, self._inbox_pointer, self._inbox_bytes,
                                         self._inbox_state, self.max_frame_bytes, spin_ns,
                                         deadline_s)
            if got >= 0:
                break
            if not self._handle_no_frame(got):
                raise TimeoutError(f"no message from {self.address} before the deadline")
        end = _HEADER_BYTES + got
        try:
            message = msgpack.unpackb(self._inbox_view[_HEADER_BYTES:end], raw=False,
                                      strict_map_key=False)
        except Exception as error:  # msgpack raises ValueError, TypeError and subclasses
            raise ProtocolError(f"{self.address} sent a frame body that is not one msgpack "
                                f"value ({type(error).__name__}: {error})") from None
        if end > _INBOX_BYTES:  # a large frame: give its memory back (the body is copied out)
            self._shrink_inbox()
        return message

    def poll_message(self) -> Any:
        """The next message if it has arrived whole, else None, without blocking (for whichever
        thread holds the connection now); ConnectionError / ProtocolError as `receive`."""
        try:
            return self.receive(0, 0.0)  # (a deadline long past: only what is there already)
        except TimeoutError:
            return None

    def _handle_no_frame(self, code: int) -> bool:
        """What pa_recv_frame said instead of a frame: True to read again (the inbox grew, or a
        signal's handler ran and did not raise), False when nothing whole came in time; raises
        for the rest."""
        if code == _net_lib.PA_NET_NOTHING_YET:
            return False
        if code == _net_lib.PA_NET_INTERRUPTED:
            return True  # (the handler runs as this returns; an exception it raises goes up)
        if code == _net_lib.PA_NET_GROW:
            bigger = bytearray(_HEADER_BYTES + int.from_bytes(self._inbox[:_HEADER_BYTES], "big"))
            filled = self._inbox_state.filled
            bigger[:filled] = self._inbox_view[:filled]
            self._use_inbox(bigger)
            return True
        if code == _net_lib.PA_NET_CLOSED:
            raise ConnectionError(f"{self.address} closed the connection")
        if code == _net_lib.PA_NET_TOO_LARGE:
            declared = int.from_bytes(self._inbox[:_HEADER_BYTES], "big")
            if declared & _RAW_FLAG:
                raise ProtocolError(f"{self.address} sent a raw payload nobody asked for")
            raise ProtocolError(f"frame header declares {declared} bytes, over the limit of"
                                f" {self.max_frame_bytes}")
        raise OSError(-code, os.strerror(-code))

    def _use_inbox(self, inbox: bytearray) -> None:
        self._inbox = inbox
        self._inbox_bytes = len(inbox)
        self._inbox_view = memoryview(inbox)
        self._inbox_pointer = _net_ffi.from_buffer(inbox)

    def _shrink_inbox(self) -> None:
        state = self._inbox_state
        frame_end = state.consumed
        rest = state.filled - frame_end  # what followed the frame just unpacked
        if rest > _INBOX_BYTES:
            return
        inbox = bytearray(_INBOX_BYTES)
        inbox[:rest] = self._inbox_view[frame_end:frame_end + rest]
        self._use_inbox(inbox)
        # (a signal's exception between these lines leaves a state C refuses, not a bad read)
        state.filled, state.consumed = rest, 0

    def fileno(self) -> int:
        return self._socket.fileno()

    def block_again(self) -> None:
        """Make the socket blocking again after an event loop watched it (which set
        O_NONBLOCK on it behind the socket object's back). (The frame calls wait in poll,
        so they work either way; Python's own socket calls do not.)"""
        self._socket.settimeout(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._fd = -1  # (the number may be reused at once: never read or write it again)
            self._socket.close()

    def shutdown(self) -> None:
        """Wake a thread blocked in `receive` (from another thread): it sees the end of the
        stream. The blocked thread closes the connection."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Server:
    """A listening socket whose connections authenticate before they reach `on_message`.

    `port` is the bound port (also when 0 was asked); `connections` holds the authenticated,
    open connections. Usable as `async with await serve(...) as server:`.
    """

    def __init__(self, host: str):
        self.host = host
        self.port = 0
        self.connections: set[Connection] = set()
        self._live: set[Connection] = set()  # every connection not yet lost, handshaking too
        self._listener: asyncio.AbstractServer | None = None
        self._local_listener: asyncio.AbstractServer | None = None  # (local_socket)
        self._all_lost: asyncio.Future | None = None

    def __repr__(self) -> str:
        return f"<Server {self.host}:{self.port} connections={len(self.connections)}>"

    def listener_filenos(self) -> list[int]:
        """The listening sockets' file descriptors, TCP and local (for polling them from C)."""
        listeners = [self._listener] + ([self._local_listener] if self._local_listener else [])
        return [listener.sockets[0].fileno() for listener in listeners]

    def close(self) -> None:
        """Stop listening and close every connection (after writing what each has queued)."""
        self._listener.close()
        if self._local_listener is not None:
            self._local_listener.close()
        for connection in list(self._live):
            connection.close()

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection are fully closed."""
        await self._listener.wait_closed()
        if self._local_listener is not None:
            await self._local_listener.wait_closed()
        if self._live:
            if self._all_lost is None or self._all_lost.done():
                self._all_lost = asyncio.get_running_loop().create_future()
            await self._all_lost

    def _forget(self, connection: Connection) -> None:
        self._live.discard(connection)
        self.connections.discard(connection)
        if not self._live and self._all_lost is not None and not self._all_lost.done():
            self._all_lost.set_result(None)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.wait_closed()


async def serve(host: str, port: int, token: bytes, on_message: OnMessage, *,
                on_connect: OnConnect | None = None, on_close: OnClose | None = None,
                max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                handshake_timeout_s: float = 10.0, on_reject: OnReject | None = None,
                local_socket: bool = False,
                after_batch: Callable[[], None] | None = None) -> Server:
    """Listen on host:port; `on_connect(conn)` runs for each connection once it authenticated.
    `on_reject(peer, reason)` (any thread's code may be behind it) hears of each connection that
    failed the handshake; by default they are logged here, aggregated, once a minute at most.
    With `local_socket`, also listen on local_socket_name(host, port) for clients on this host
    (see the module's notes; if the name is taken, TCP alone serves). `after_batch()` runs each
    time a connection has handled the messages of one read."""
    loop = asyncio.get_running_loop()
    if on_reject is None:
        on_reject = RejectionReporter(loop, DEFAULT_REJECTION_REPORT_S,
                                      log_rejections(logger, logging.WARNING)).add
    endpoint = _Endpoint(token=_check_token(token), on_message=on_message, on_connect=on_connect,
                         on_close=on_close, max_frame_bytes=_check_max_frame_bytes(max_frame_bytes),
                         handshake_timeout_s=handshake_timeout_s, is_server=True,
                         on_reject=on_reject, after_batch=after_batch)
    server = Server(host)
    server._listener = await loop.create_server(lambda: Connection(endpoint, server=server),
                                                host, port)
    server.port = server._listener.sockets[0].getsockname()[1]
    name = local_socket_name(host, server.port) if local_socket else None
    if name is not None:
        local_address = f"{host}:{server.port} (local socket)"
        try:
            server._local_listener = await loop.create_unix_server(
                lambda: Connection(endpoint, local_address, server=server), name)
        except OSError as error:  # taken by a process that outlived its TCP port: TCP serves
            logger.debug("no local socket for %s:%s: %s", host, server.port, error)
    return server


__all__ = [
    "DEFAULT_MAX_FRAME_BYTES", "BlockingConnection", "Connection", "ConnectionClosedError",
    "FrameDecoder", "Server", "connect", "encode_frame", "local_socket_name",
    "new_token", "serve",
]
