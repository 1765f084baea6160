"""Throughput of moving a big object between two nodes' stores on one host, with a loopback
socket copy of the same bytes (measured in the same run) as the baseline.

Two nodes are started with the `pyactor` CLI in a private session dir (as if on two hosts: each
has its own port and store). The driver joins node A and puts an array there; a task pinned to
node B (by a custom resource) times `pa.get` of it, which is one Fetch: B pulls the object from
A's store over TCP in chunks, into its own store. The baseline is one process `sendall`-ing the
same number of bytes over TCP loopback to another that `recv_into`s a preallocated buffer: the
most a socket between two processes on this host gives, with no framing or store.

    python bench/transfer_bench.py [--size-mb 1024] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

TARGET_BYTES_PER_S = 1e9


# ---------------------------------------------------------------------- baseline
def _send_all(port: int, size_bytes: int) -> None:
    payload = memoryview(bytearray(size_bytes))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(payload)
        sock.recv(1)  # wait for the receiver's ack


def loopback_bytes_per_s(size_bytes: int) -> float:
    """One process sends `size_bytes` over TCP loopback, this one receives into a buffer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sender = multiprocessing.get_context("spawn").Process(
        target=_send_all, args=(listener.getsockname()[1], size_bytes))
    sender.start()
    conn, _ = listener.accept()
    buffer = memoryview(bytearray(size_bytes))
    buffer[::4096] = b"\0" * len(buffer[::4096])  # touch the pages before timing
    received = 0
    start = time.perf_counter()
    while received < size_bytes:
        n = conn.recv_into(buffer[received:], min(size_bytes - received, 1 << 22))
        if not n:
            raise ConnectionError("sender closed early")
        received += n
    elapsed = time.perf_counter() - start
    conn.sendall(b"k")
    conn.close()
    listener.close()
    sender.join()
    return size_bytes / elapsed


# ---------------------------------------------------------------------- two nodes
def _cli(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pyactor.cli", *args], capture_output=True,
                            text=True, env=env, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"pyactor {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def node_to_node_bytes_per_s(size_bytes: int, repeats: int) -> list[float]:
    """Seconds per fetch, the first into store pages never touched before (on a VM the first
    touch of fresh memory can cost more than the copy), the others into reused pages: node B's
    store holds one copy, so each fetch evicts the previous one and reuses its pages."""
    import pyactor as pa
    env = {**os.environ, "PYACTOR_SESSION_DIR": tempfile.mkdtemp(prefix="pyactor-bench-")}
    try:
        out = _cli(env, "start", "--head", "--port", "0", "--num-cpus", "1",
                   "--object-store-memory", str(size_bytes * 2 + (256 << 20)))
        address = re.search(r"head node at (\S+) ", out).group(1)
        token = re.search(r"token:\s+([0-9a-f]{64})", out).group(1)
        _cli(env, "start", "--address", address, "--token", token, "--num-cpus", "1",
             "--resources", '{"b": 1}', "--object-store-memory", str(size_bytes + (64 << 20)))
        pa.init(address=address, token=token)

        @pa.remote(resources={"b": 1})
        def time_fetch(boxed: list) -> tuple[float, int]:
            start = time.perf_counter()
            array = pa.get(boxed[0])
            elapsed = time.perf_counter() - start
            return elapsed, int(array[:: 1 << 16].sum())

        pa.get(time_fetch.remote([pa.put(np.ones(1 << 20, dtype=np.uint8))]))  # warm up
        rates = []
        for _ in range(1 + repeats):
            ref = pa.put(np.ones(size_bytes, dtype=np.uint8))
            elapsed, checksum = pa.get(time_fetch.remote([ref]))
            assert checksum == len(range(0, size_bytes, 1 << 16)), "wrong bytes arrived"
            rates.append(size_bytes / elapsed)
            del ref
        return rates
    finally:
        if pa.is_initialized():
            pa.shutdown()
        _cli(env, "stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    size_bytes = args.size_mb << 20
    baseline = max(loopback_bytes_per_s(size_bytes) for _ in range(2))
    cold, *rates = node_to_node_bytes_per_s(size_bytes, args.repeats)
    best = max(rates)
    rows = [("fetch, reused pages (best)", best),
            ("fetch, reused pages (median)", sorted(rates)[len(rates) // 2]),
            ("fetch, fresh pages (first)", cold)]
    if args.json:
        for name, value in rows:
            print(json.dumps({"name": f"{name} {args.size_mb} MiB", "value": round(value / 1e9, 3),
                              "unit": "GB/s", "baseline": round(baseline / 1e9, 3),
                              "ratio": round(value / baseline, 3)}))
    else:
        print(f"{'path':<34}{'GB/s':>8}{'loopback GB/s':>16}{'ratio':>8}")
        for name, value in rows:
            print(f"{name:<34}{value / 1e9:>8.2f}{baseline / 1e9:>16.2f}"
                  f"{value / baseline:>8.2f}")
        verdict = "meets" if best >= TARGET_BYTES_PER_S else "MISSES"
        print(f"{args.size_mb} MiB array; target {TARGET_BYTES_PER_S / 1e9:.0f} GB/s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
