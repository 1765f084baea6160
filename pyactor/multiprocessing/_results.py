"""What `apply_async`, `map_async`, `imap` and `imap_unordered` return, with the standard
library's semantics (`multiprocessing.pool.ApplyResult`, `MapResult`, `IMapIterator`).

Results are filled in by the pool's one handler thread (`_set`, one call per chunk) and waited
on by user threads with an Event or a Condition: no thread per pending result. A user callback
that raises is reported (like an exception in a thread) and never stops the pool.
"""

from __future__ import annotations

import collections
import itertools
import sys
import threading
import types
from multiprocessing import TimeoutError
from multiprocessing.pool import RemoteTraceback

job_counter = itertools.count()


def with_remote_traceback(error: BaseException, tb: str | None) -> BaseException:
    """The standard Pool's form: the worker's traceback text as a RemoteTraceback cause (the
    standard library's own class, which code in the wild checks for)."""
    if tb:
        error.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return error


def run_callback(callback, value) -> None:
    try:
        callback(value)
    except Exception:  # noqa: BLE001 - report like threading does, keep serving
        hook = getattr(threading, "excepthook", None)
        if hook is not None:
            hook(threading.ExceptHookArgs((*sys.exc_info(), threading.current_thread())))
        else:  # pragma: no cover
            sys.excepthook(*sys.exc_info())


class ApplyResult:
    """The result of `apply_async`: `get(timeout)`, `wait(timeout)`, `ready()`, `successful()`."""

    def __init__(self, cache: dict, callback=None, error_callback=None):
        self._event = threading.Event()
        self._job = next(job_counter)
        self._cache = cache
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value = None
        cache[self._job] = self

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None):
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, index: int, ok: bool, value) -> None:
        self._success, self._value = ok, value
        self._finish()

    def _finish(self) -> None:
        if self._success and self._callback is not None:
            run_callback(self._callback, self._value)
        elif not self._success and self._error_callback is not None:
            run_callback(self._error_callback, self._value)
        self._event.set()
        self._cache.pop(self._job, None)

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of `map_async`/`starmap_async`: ready once every chunk is back; the first
    error wins, as in the standard library."""

    def __init__(self, cache: dict, chunksize: int, length: int, callback=None,
                 error_callback=None):
        super().__init__(cache, callback, error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        self._lock = threading.Lock()
        if chunksize <= 0 or length == 0:
            self._number_left = 0
            self._event.set()
            cache.pop(self._job, None)
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _set(self, index: int, ok: bool, value) -> None:
        with self._lock:
            self._number_left -= 1
            if ok and self._success:
                size = self._chunksize
                self._value[index * size:(index + 1) * size] = value
            elif not ok and self._success:
                self._success = False
                self._value = value
            done = self._number_left == 0
        if done:
            self._finish()

    def _fail(self, error: BaseException) -> None:
        """Fail before any chunk was sent (the iterable raised while being read)."""
        self._success, self._value, self._number_left = False, error, 0
        self._finish()



class IMapIterator:
    """The iterator `imap` returns: results in order; `next(timeout)` raises TimeoutError.

    With chunksize > 1 a chunk that raised is one error in place of its items, and the iteration
    ends after it, as the standard Pool's does (it flattens chunks with a generator, which a
    raise ends): the results after it would otherwise pair with the wrong inputs."""

    def __init__(self, cache: dict, chunksize: int = 1):
        self._chunked = chunksize > 1
        self._ended = False  # a chunk's error was raised: only StopIteration from here
        self._cond = threading.Condition(threading.Lock())
        self._job = next(job_counter)
        self._cache = cache
        self._items: collections.deque = collections.deque()  # (ok, value) per item
        self._index = 0  # chunks delivered to _items
        self._length = None  # number of chunks, once the iterable is exhausted
        self._unsorted: dict = {}
        cache[self._job] = self

    def __iter__(self):
        return self

    def next(self, timeout: float | None = None):
        with self._cond:
            if self._ended:
                raise StopIteration
            if not self._items:
                if self._index == self._length:
                    raise StopIteration
                self._cond.wait_for(lambda: self._items or self._index == self._length,
                                    timeout)
                if not self._items:
                    if self._index == self._length:
                        raise StopIteration
                    raise TimeoutError
            ok, value = self._items.popleft()
            if not ok and self._chunked:
                self._ended = True
                self._items.clear()
        if ok:
            return value
        raise value

    __next__ = next

    def _push(self, ok: bool, value) -> None:  # holding _cond
        if self._ended:
            pass  # nobody will read it
        elif ok:
            self._items.extend((True, v) for v in value)
        else:
            self._items.append((False, value))
        self._index += 1

    def _set(self, index: int, ok: bool, value) -> None:
        with self._cond:
            if self._index == index:
                self._push(ok, value)
                while self._index in self._unsorted:
                    self._push(*self._unsorted.pop(self._index))
                self._cond.notify_all()
            else:
                self._unsorted[index] = (ok, value)
            self._maybe_done()

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._cond.notify_all()
            self._maybe_done()

    def _maybe_done(self) -> None:  # holding _cond
        if self._index == self._length:
            self._cache.pop(self._job, None)


class IMapUnorderedIterator(IMapIterator):
    """The iterator `imap_unordered` returns: results as their chunks complete."""

    def _set(self, index: int, ok: bool, value) -> None:
        with self._cond:
            self._push(ok, value)
            self._cond.notify_all()
            self._maybe_done()
