"""Loopback figures for pyactor's transport: round-trip latency and one-way throughput.

The server runs in a child process (as a node daemon would), the client here; both on uvloop.
Each row is measured twice: with the two processes pinned to different cores, and to one core
(where every hop is also a context switch). The baseline column is the target from the design
issue: a small-message round trip of ~25 us and 100k+ small messages/s.

    python bench/transport_bench.py [--round-trips 5000] [--messages 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time

import uvloop

from pyactor._private import transport

SMALL_MESSAGE = [3, 123456, b"\x80\x05K\x01." * 4, None]  # shaped like a small task message
BURST_MESSAGES = 1000  # sends between drains in the throughput run


def _server_process(token: bytes, cpu: int | None, port_pipe) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        received = [0]
        stop = asyncio.get_running_loop().create_future()

        def on_message(connection: transport.Connection, message) -> None:
            kind = message[0]
            if kind == 0:  # ping: echo
                connection.send(message)
            elif kind == 3:  # throughput payload: count
                received[0] += 1
            elif kind == 1:  # report the count
                connection.send([1, received[0]])
                received[0] = 0
            elif kind == 2 and not stop.done():
                stop.set_result(None)

        async with await transport.serve("127.0.0.1", 0, token, on_message) as server:
            port_pipe.send(server.port)
            await stop

    uvloop.run(main())


async def _round_trips(connection: transport.Connection, replies: asyncio.Queue,
                       count: int) -> list[float]:
    timings_us = []
    loop = asyncio.get_running_loop()
    message = [0, 1, b"ping"]
    for index in range(count + count // 10):  # the first tenth warms up
        waiter = loop.create_future()
        replies.put_nowait(waiter)
        started_ns = time.perf_counter_ns()
        connection.send(message)
        await waiter
        if index >= count // 10:
            timings_us.append((time.perf_counter_ns() - started_ns) / 1000)
    return timings_us


async def _throughput(connection: transport.Connection, replies: asyncio.Queue,
                      count: int) -> float:
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    replies.put_nowait(waiter)
    started_s = time.perf_counter()
    for index in range(count):
        connection.send(SMALL_MESSAGE)
        if index % BURST_MESSAGES == 0:
            await connection.drain()
    connection.send([1])
    reply = await waiter
    elapsed_s = time.perf_counter() - started_s
    assert reply[1] == count, reply
    return count / elapsed_s


def _measure(server_cpu: int | None, client_cpu: int | None, round_trips: int,
             messages: int) -> tuple[list[float], float]:
    token = transport.new_token()
    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_server_process, args=(token, server_cpu, child_end))
    child.start()
    port = parent_end.recv()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})

    async def main() -> tuple[list[float], float]:
        replies: asyncio.Queue = asyncio.Queue()

        def on_message(connection: transport.Connection, message) -> None:
            replies.get_nowait().set_result(message)

        connection = await transport.connect("127.0.0.1", port, token, on_message)
        timings_us = await _round_trips(connection, replies, round_trips)
        rate = await _throughput(connection, replies, messages)
        connection.send([2])
        await connection.drain()
        connection.close()
        return timings_us, rate

    try:
        return uvloop.run(main())
    finally:
        os.sched_setaffinity(0, range(os.cpu_count()))
        child.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    placements = {"one core": (cpus[0], cpus[0])}
    if len(cpus) > 1:
        placements = {"two cores": (cpus[0], cpus[1]), **placements}
    print(f"{'placement':<10} {'rtt median us':>14} {'rtt p99 us':>11} {'msgs/s':>10}"
          f"   baseline: rtt ~25 us, 100k+ msgs/s")
    for name, (server_cpu, client_cpu) in placements.items():
        timings_us, rate = _measure(server_cpu, client_cpu, args.round_trips, args.messages)
        timings_us.sort()
        p99_us = timings_us[int(len(timings_us) * 0.99)]
        print(f"{name:<10} {statistics.median(timings_us):>14.1f} {p99_us:>11.1f}"
              f" {rate:>10,.0f}")


if __name__ == "__main__":
    main()
