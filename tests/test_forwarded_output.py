"""Worker output in the driver never blocks its IO thread: a stream nobody reads costs a
bounded buffer and dropped lines (counted, and said so once the stream moves again), never a
stalled driver."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

from pyactor._private.forwarded_output import ForwardedOutput

GUARD_S = 60  # a hang guard, never a synchronisation device


def test_a_stream_nobody_reads_drops_lines_and_says_how_many_later(monkeypatch):
    """put() returns at once even when the stream blocks; what did not fit is dropped, and
    the next line written once the stream is read again says how many lines were lost."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w")
    monkeypatch.setattr(sys, "stderr", stream)
    output = ForwardedOutput(capacity_bytes=4096)
    line = "x" * 99 + "\n"
    sent = 3000  # 300 kB: far more than the pipe (64 kB) and the buffer hold

    def put_all():
        for _ in range(sent):
            output.put("stderr", line, 1)
    putter = threading.Thread(target=put_all)
    putter.start()
    putter.join(GUARD_S)
    assert not putter.is_alive(), "put() blocked on a stream nobody reads"
    assert output.dropped_lines > 0

    received = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_fd)))
    reader.start()
    output.put("stderr", "after\n", 1)
    assert output.flush(GUARD_S)
    stream.close()
    reader.join(GUARD_S)
    text = received[0].decode()
    *lines, last, end = text.split("\n")
    assert end == "" and last == "after"
    # The stream took some output before its pipe filled, so a notice can also stand between
    # the kept lines; each says how many were dropped since the one before.
    notices = [line for line in lines if line.startswith("(pyactor)")]
    kept = [line for line in lines if not line.startswith("(pyactor)")]
    assert lines[-1] == notices[-1]  # the last drop is reported before "after"
    pattern = re.compile(r"\(pyactor\) (\d+) line\(s\) of worker output were dropped here: "
                         r"this stream was not being read fast enough")
    assert all(pattern.fullmatch(notice) for notice in notices)
    assert sum(int(pattern.fullmatch(n).group(1)) for n in notices) == output.dropped_lines
    assert set(kept) == {"x" * 99} and len(kept) + output.dropped_lines == sent


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


@pytest.mark.slow
def test_a_driver_whose_stderr_nobody_reads_keeps_running_tasks():
    """Tasks print 3 MB to stderr in a driver whose stderr is a pipe nobody reads: the driver
    still gets every result and exits (before, its IO thread blocked in the write)."""
    script = textwrap.dedent("""
        import sys
        import pyactor as pa
        pa.init(num_cpus=2, object_store_memory=64 << 20)

        @pa.remote
        def noisy(i):
            for _ in range(3000):
                print("n" * 99, file=sys.stderr)
            return i

        refs = [noisy.remote(i) for i in range(10)]
        print("DONE", sum(pa.get(refs, timeout=120)), flush=True)
        print("MORE", pa.get(noisy.remote(5), timeout=120), flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        out = []
        reader = threading.Thread(target=lambda: out.append(process.stdout.read()))
        reader.start()
        reader.join(GUARD_S * 3)  # stdout ends when the driver exits; stderr is never read
        assert not reader.is_alive(), "the driver stalled on its unread stderr"
        assert process.wait(GUARD_S) == 0
        assert out[0].decode().split() == ["DONE", "45", "MORE", "5"]
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=GUARD_S)
