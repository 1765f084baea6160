"""What the direct lane's frame I/O (transport.BlockingConnection) costs its thread per message,
against the same bytes through a plain socket.

A thread that waits in `get` sends its call and reads the answer on its own BlockingConnection
(direct.py); the framing (packing, the header, reading a whole frame, unpacking) is on the
critical path of every round trip. To time that and nothing else (no other process, no wake-up,
which on a shared machine drown a microsecond), one thread holds both ends of an authenticated
loopback connection, so every read finds its bytes already there:

    send       conn.send(message)                         then the peer end reads the frame
    receive    the peer end writes a frame                 then conn.receive(spin_ns)
    raw send   sock.sendall(the frame's bytes)             then the peer end reads them
    raw recv   the peer end writes the frame's bytes       then sock.recv(...) of them

The message is shaped like a task's answer (a TaskDone of None). Each row is the median of
rounds, taken in turns; `x raw` divides by the raw row of the same direction and round, and
`over raw` is the difference: what the framing adds to the two syscalls.

    python bench/direct_io_bench.py [--rounds 7] [--calls 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import threading
import time

from pyactor._private import transport

# What a TaskDone of a task returning None looks like on the wire: [kind, task id, returns,
# error, retryable].
MESSAGE = [7, b"t" * 24, [[0, b"\x80\x05N."]], None, False]
SPIN_NS = 100_000  # direct.py's SPIN_BEFORE_SLEEP_NS (the answer is there: it never spins)


def _serve_handshake(listener: socket.socket, token: bytes, accepted: list) -> None:
    """The server's side of transport's handshake on one accepted socket (see its docstring)."""
    sock, _ = listener.accept()
    server_nonce = secrets.token_bytes(32)
    sock.sendall(transport.encode_frame([transport.PROTOCOL_MAGIC, transport.PROTOCOL_VERSION,
                                         server_nonce]))
    decoder = transport.FrameDecoder()
    frames: list = []
    while not frames:
        frames = decoder.feed(sock.recv(4096))
    _client_proof, client_nonce = frames[0]
    sock.sendall(transport.encode_frame(
        [True, transport._proof(token, b"server", client_nonce, server_nonce)]))
    accepted.append(sock)


def connected_pair(module=transport) -> tuple[object, socket.socket]:
    """(a BlockingConnection of `module`, the server's socket at its other end)."""
    token = transport.new_token()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list = []
        server = threading.Thread(target=_serve_handshake, args=(listener, token, accepted))
        server.start()
        conn = module.BlockingConnection("127.0.0.1", listener.getsockname()[1], token)
        server.join()
    peer = accepted[0]
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn, peer


def raw_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    for sock in (client, peer):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, peer


def _read_exactly(sock: socket.socket, size: int) -> None:
    while size:
        size -= len(sock.recv(size))


def per_call_us(body, calls: int) -> float:
    """Wall time per call of `body(calls)` (one thread: it is all this thread's work)."""
    body(calls // 10)
    started = time.perf_counter_ns()
    body(calls)
    return (time.perf_counter_ns() - started) / calls / 1000


def rows_of(module=transport) -> tuple[dict, callable]:
    """The four rows' bodies for `module`'s BlockingConnection, and a function closing it all."""
    conn, conn_peer = connected_pair(module)
    raw, raw_peer = raw_pair()
    frame = transport.encode_frame(MESSAGE)

    def send(calls: int) -> None:
        for _ in range(calls):
            conn.send(MESSAGE)
            _read_exactly(conn_peer, len(frame))

    def receive(calls: int) -> None:
        for _ in range(calls):
            conn_peer.sendall(frame)
            conn.receive(SPIN_NS)

    def raw_send(calls: int) -> None:
        for _ in range(calls):
            raw.sendall(frame)
            _read_exactly(raw_peer, len(frame))

    def raw_receive(calls: int) -> None:
        for _ in range(calls):
            raw_peer.sendall(frame)
            _read_exactly(raw, len(frame))

    def close() -> None:
        conn.close()
        for sock in (conn_peer, raw, raw_peer):
            sock.close()
    return {"send": send, "receive": receive, "raw_send": raw_send,
            "raw_receive": raw_receive}, close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000, help="messages per row per round")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args(argv)

    rows, close = rows_of()
    results: dict[str, list[float]] = {name: [] for name in rows}
    names = list(rows)
    try:
        for round_index in range(args.rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                results[name].append(per_call_us(rows[name], args.calls))
    finally:
        close()
    out = []
    for name, raw_name in (("send", "raw_send"), ("receive", "raw_receive")):
        ratios = [a / b for a, b in zip(results[name], results[raw_name])]
        extra = [a - b for a, b in zip(results[name], results[raw_name])]
        out.append({"name": name, "us_per_message": statistics.median(results[name]),
                    "raw_us_per_message": statistics.median(results[raw_name]),
                    "ratio_raw": statistics.median(ratios),
                    "over_raw_us": statistics.median(extra), "rounds": args.rounds,
                    "calls": args.calls, "load_average": os.getloadavg()[0]})
    if args.json:
        for row in out:
            print(json.dumps(row))
        return 0
    print(f"load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds x {args.calls} messages;"
          f" baseline: the same bytes through a plain socket, same round")
    print(f"{'row':<10} {'us/message':>11} {'raw us':>8} {'x raw':>7} {'over raw us':>12}")
    for row in out:
        print(f"{row['name']:<10} {row['us_per_message']:>11.2f} "
              f"{row['raw_us_per_message']:>8.2f} {row['ratio_raw']:>7.2f} "
              f"{row['over_raw_us']:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
