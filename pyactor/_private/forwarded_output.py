"""Worker output in the driver: written by a thread of its own, from a bounded buffer.

Workers' stdout and stderr reach the driver as Log messages (worker -> node -> driver), on the
IO thread. Writing them there would let a stream nobody reads (a driver started with
stderr=PIPE by a parent that never reads it) block the IO thread, and with it every task and
actor call of the driver. So the IO thread only appends lines here; a writer thread does the
writes that may block:

    IO thread: put(stream, lines) --(at most capacity_bytes waiting)--> writer thread --> stream
                                   \\--(full)--> dropped, counted per stream

When the buffer is full, new lines are dropped and counted; once the stream takes output again,
the next lines written there are preceded by one saying how many were dropped.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from typing import TextIO

CAPACITY_BYTES = 1 << 20  # waiting output, at most: a burst fits, a stalled stream costs this


class ForwardedOutput:
    def __init__(self, capacity_bytes: int = CAPACITY_BYTES):
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: deque[tuple[TextIO, bool, str]] = deque()
        self._queued_bytes = 0
        self._dropped: dict[int, int] = {}  # id(stream) -> lines dropped since it last took some
        self._writing = False  # the writer holds an item it has not finished writing
        self._thread: threading.Thread | None = None
        self.dropped_lines = 0  # in total (tests, diagnostics)

    def put(self, stream_name: str, text: str, line_count: int) -> None:
        """Queue `text` (whole lines) for this process's "stdout" or "stderr" as it is now
        (sys.stdout may have been replaced); never blocks (drops when full)."""
        stream = sys.stderr if stream_name == "stderr" else sys.stdout
        if stream is None:  # pythonw, or closed on purpose: nowhere to write
            return
        raw = stream is (sys.__stderr__ if stream_name == "stderr" else sys.__stdout__)
        with self._lock:
            if self._queued_bytes + len(text) > self.capacity_bytes:
                self._dropped[id(stream)] = self._dropped.get(id(stream), 0) + line_count
                self.dropped_lines += line_count
                return
            dropped = self._dropped.pop(id(stream), 0)
            if dropped:
                text = (f"(pyactor) {dropped} line(s) of worker output were dropped here: this "
                        f"stream was not being read fast enough\n") + text
            self._queue.append((stream, raw, text))
            self._queued_bytes += len(text)
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_forever,
                                                name="pyactor-output", daemon=True)
                self._thread.start()
            self._work.notify()

    def flush(self, timeout_s: float) -> bool:
        """Wait until what is queued is written, for at most timeout_s; False if it was not."""
        with self._lock:
            return self._work.wait_for(lambda: not self._queue and not self._writing,
                                       timeout_s)

    def _write_forever(self) -> None:
        while True:
            with self._lock:
                self._work.wait_for(lambda: self._queue)
                stream, raw, text = self._queue.popleft()
                self._queued_bytes -= len(text)
                self._writing = True
            try:
                write(stream, raw, text)
            finally:
                with self._lock:
                    self._writing = False
                    self._work.notify_all()


def write(stream: TextIO, raw: bool, text: str) -> None:
    """Write whole lines to `stream` (blocking). To the process's own stdout or stderr (`raw`)
    they go straight to the descriptor, after what the user's thread has buffered there: text
    streams are not thread-safe, and one write of whole lines cannot tear anyone's output."""
    if raw:
        try:
            stream.flush()
            data = text.encode(stream.encoding or "utf-8", "replace")
            fd = stream.fileno()
            while data:
                data = data[os.write(fd, data):]
            return
        except (OSError, ValueError, AttributeError):
            pass
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # closed, or gone: nobody reads this output any more
        pass
