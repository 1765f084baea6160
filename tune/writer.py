"""The controller's file writers: threads that write trial logs and the experiment state, so
the controller's loop never waits on the disk (on a busy disk an open() can take milliseconds,
and a report must cost microseconds).

    controller loop --submit(shard, fn, *args)--> queue[shard] --> writer thread: fn(*args)

Each trial's writes go to one shard (its files are written in order); the experiment state goes
to shard 0. Several threads, because on a shared disk the time goes in waiting on file creation,
not in Python, so four threads overlap four waits. `close()` returns once everything submitted
is on disk (the end of fit()).
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib

logger = logging.getLogger("pyactor.tune")

_STOP = object()


class FileWriter:
    def __init__(self, threads: int = 4, on_idle=None):
        self._on_idle = on_idle             # called by a thread whenever its queue is empty
        self._queues = [queue.SimpleQueue() for _ in range(threads)]
        self._threads = [threading.Thread(target=self._run, args=(q,), daemon=True,
                                          name=f"pyactor-tune-writer-{i}")
                         for i, q in enumerate(self._queues)]
        for thread in self._threads:
            thread.start()

    def shard_of(self, key: str) -> int:
        return zlib.crc32(key.encode()) % len(self._queues)

    def submit(self, shard: int, function, *args) -> None:
        self._queues[shard].put((function, args))

    def close(self) -> None:
        for each in self._queues:
            each.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _run(self, items: queue.SimpleQueue) -> None:
        while True:
            if items.empty() and self._on_idle is not None:
                try:
                    self._on_idle()
                except Exception:
                    logger.exception("pyactor.tune could not flush its files")
            item = items.get()
            if item is _STOP:
                return
            function, args = item
            try:
                function(*args)
            except Exception:
                logger.exception("pyactor.tune could not write (%s)",
                                 getattr(function, "__qualname__", function))
