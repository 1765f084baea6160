"""`Pool`: a drop-in for `multiprocessing.Pool` whose processes are pyactor actors.

Only the public pyactor API is used, so a pool scales past one host once `pa.init(address=...)`
joins a cluster. How a call travels:

    user thread                     pool handler thread              worker actor (process)
    map_async(f, items)
      chunk + pickle (protocol 5) ->  pending chunks
                                      least-loaded worker, a batch
                                      of chunks -> run.remote(...) ---> f over each chunk
                                                                        pickle each outcome
                                      <-- ref.future() done callback --- [(blob, buffers), ...]
      result.get()  <-- _set(chunk) -- unpickle, callbacks

One handler thread per pool does all dispatching, unpickling of results and user callbacks (the
standard Pool has three threads; Ray's Pool one per pending result). Completions reach it through
the refs' futures, never by polling.

Batching: when chunks pile up (many small `apply_async` calls, `chunksize=1`), one actor call
carries several of them, so the per-call cost of the runtime is shared; `maxtasksperchild` still
counts chunks (the standard library's tasks). Depth: a worker gets a second batch while its first
runs only once chunks are known to be short, so long tasks are spread like the standard Pool's.

Workers: `pool._pool` lists one record per worker actor with the standard Pool's `pid`,
`is_alive()` and `exitcode`. Each worker's first call answers once its initializer ran, and
close() stops no worker before that, so the initializer runs even in a pool that never gets a
task.

Failures: a worker process that dies (os._exit, OOM killer) fails its calls with ActorDiedError;
the chunks that were in them run again one at a time on a fresh worker, and the chunk that dies
alone fails with WorkerCrashedError. The pool never hangs on a dead worker.
"""

from __future__ import annotations

import collections
import hashlib
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import warnings

import pyactor as pa
from pyactor._private import serialization
from pyactor.exceptions import ActorDiedError, WorkerCrashedError
from pyactor.multiprocessing import _results
from pyactor.multiprocessing._results import (ApplyResult, IMapIterator, IMapUnorderedIterator,
                                              MapResult)
from pyactor.multiprocessing._worker import (APPLY, MAP, STARMAP, PoolWorker,
                                             dumps_out_of_band)

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

# Most chunks one actor call carries, and a soft cap on their items.
MAX_BATCH_CHUNKS = 256
MAX_BATCH_ITEMS = 4096
# A chunk shorter than this (measured) lets a worker hold a second batch while it runs one, if
# its current one was sent less than PIPELINE_WINDOW_S ago: never queue work behind a long task.
SHORT_CHUNK_S = 0.02
PIPELINE_WINDOW_S = 0.05
# Chunks read ahead from imap iterables: enough to fill batches, bounded for endless iterables.
READ_AHEAD_CHUNKS = 2048

_WAKE = object()
_STOP = object()

_remote_worker = pa.remote(PoolWorker)

# Pools that started pyactor themselves share that runtime; the last one to finish stops it.
_owned_lock = threading.Lock()
_owned_pools = 0


class _Chunk:
    __slots__ = ("result", "index", "fid", "kind", "blob", "buffers", "n_items", "alone")

    def __init__(self, result, index, fid, kind, blob, buffers, n_items):
        self.result = result
        self.index = index
        self.fid = fid
        self.kind = kind
        self.blob = blob
        self.buffers = buffers
        self.n_items = n_items
        self.alone = False  # it was in a call whose worker died: run it by itself


class _Worker:
    """One worker actor, and what `pool._pool` shows of it: `pid`, `is_alive()` and `exitcode`,
    as the standard Pool's Process objects (libraries read them)."""

    __slots__ = ("handle", "started", "in_flight", "assigned", "functions", "dead", "sent_at",
                 "_exitcode")

    def __init__(self, handle, on_started):
        self.handle = handle
        # Its first call answers once __init__ (the initializer) has run: the pool does not
        # stop a worker before that, and it carries the pid.
        self.started = handle.pid.remote().future()
        self.started.add_done_callback(on_started)
        self.in_flight = 0  # calls sent, not answered
        self.sent_at: collections.deque = collections.deque()  # their send times, in order
        self.assigned = 0  # chunks given to it, for maxtasksperchild
        self.functions: set = set()  # function ids it holds
        self.dead = False  # killed (retired, or its process died)
        self._exitcode = None

    @property
    def pid(self) -> int | None:
        """The worker process's id (on its node's host); waits for the process to start. None
        if it could not start (its initializer raised)."""
        try:
            return self.started.result()
        except Exception:  # noqa: BLE001 - ActorDiedError: __init__ failed
            return None

    def is_alive(self) -> bool:
        """True until the pool stops it or finds its process dead (or it failed to start)."""
        started = self.started
        return not (self.dead or started.done() and (started.cancelled() or
                                                     started.exception() is not None))

    @property
    def exitcode(self) -> int | None:
        """None while alive; -SIGKILL once the pool stopped it (actors end by SIGKILL); 1 if it
        died by itself or could not start (its own exit status does not reach the pool)."""
        if self.is_alive():
            return None
        return self._exitcode if self._exitcode is not None else 1

    def stopped_by_pool(self) -> None:
        self.dead = True
        if self._exitcode is None:
            self._exitcode = -signal.SIGKILL

    def __repr__(self):
        return f"<pool worker pid={self.pid if self.started.done() else '?'} " \
               f"{'alive' if self.is_alive() else f'exitcode={self.exitcode}'}>"


class _Feeder:
    """An imap iterable, read on the handler thread as workers need chunks."""

    __slots__ = ("result", "chunks", "fid", "kind", "next_index")

    def __init__(self, result, chunks, fid, kind):
        self.result = result
        self.chunks = chunks
        self.fid = fid
        self.kind = kind
        self.next_index = 0


def _chunks_of(iterable, size: int):
    iterator = iter(iterable)
    while True:
        chunk = tuple(_islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _islice(iterator, size):
    for _ in range(size):
        try:
            yield next(iterator)
        except StopIteration:
            return


class Pool:
    """A pool of worker processes (pyactor actors) with `multiprocessing.Pool`'s interface.

    `processes` defaults to the cluster's CPU count. `actor_options` (keyword only, not in the
    standard library) are passed to each worker actor's `.options()`, e.g. {"num_cpus": 1} to
    reserve a CPU per worker so the cluster scheduler spreads them over nodes.
    """

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None,
                 context=None, *, actor_options: dict | None = None):
        self._state = None
        self._pool: list[_Worker] = []
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or
                                             isinstance(maxtasksperchild, bool) or
                                             maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._owns_runtime = _start_runtime_if_needed()
        try:
            if processes is None:
                processes = max(1, int(pa.cluster_resources().get("CPU", os.cpu_count() or 1)))
            self._processes = processes
            self._initializer = initializer
            self._initargs = tuple(initargs)
            self._initializer_blob: bytes | None = None
            self._maxtasksperchild = maxtasksperchild
            self._actor_class = _remote_worker.options(**({"num_cpus": 0} |
                                                          (actor_options or {})))
            self._cache: dict = {}  # job id -> result not yet complete
            self._pending: collections.deque[_Chunk] = collections.deque()
            self._feeders: collections.deque[_Feeder] = collections.deque()
            self._inbox: queue.SimpleQueue = queue.SimpleQueue()
            self._wake_posted = False
            self._functions: dict[int, tuple] = {}  # id(func) -> (func, fid, blob)
            self._blobs: dict[bytes, bytes] = {}  # fid -> blob
            self._short_chunks = False
            self._pool = [self._new_worker() for _ in range(processes)]
        except BaseException:
            self._kill_workers()
            self._release_runtime()
            raise
        self._state = RUN
        self._handler_lock = threading.Lock()
        self._handler_done = False
        self._handler = threading.Thread(target=self._handle, name="pyactor-pool", daemon=True)
        self._handler.start()

    # ------------------------------------------------------------------ public interface
    def apply(self, func, args=(), kwds={}):
        """`func(*args, **kwds)` in a worker; blocks until it is done."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
        result = ApplyResult(self._cache, callback, error_callback)
        fid = self._function_id(func)
        self._submit_chunk(result, 0, fid, APPLY, (tuple(args), dict(kwds)), 1)
        self._wake()
        return result

    def map(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, MAP, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, STARMAP, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None):
        return self._map_async(func, iterable, STARMAP, chunksize, callback, error_callback)

    def imap(self, func, iterable, chunksize=1):
        """Like map, but results come as they are ready, in order, from a lazily read
        iterable."""
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        """Like imap, but in the order chunks complete."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def close(self):
        """No more work may be submitted; the workers stop once the queued work is done."""
        if self._state == RUN:
            self._state = CLOSE
            self._inbox.put(_WAKE)

    def terminate(self):
        """Stop the workers now (work in flight is abandoned) and wait until they are gone."""
        if self._state is None:
            return
        self._state = TERMINATE
        self._inbox.put(_STOP)
        if threading.current_thread() is not self._handler:
            self._handler.join()
        self._release_runtime()

    def join(self):
        """Wait for the workers to stop, after `close()` or `terminate()`."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._handler.join()
        self._release_runtime()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self):
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"state={self._state} pool_size={len(self._pool)}>")

    def __del__(self, _warn=warnings.warn):
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning,
                  source=self)

    # ------------------------------------------------------------------ submission
    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _function_id(self, func) -> bytes:
        """Ship each function once per worker: it is known by the hash of its pickle."""
        entry = self._functions.get(id(func))
        if entry is None or entry[0] is not func:
            blob = serialization.dumps(func)
            fid = hashlib.blake2b(blob, digest_size=12).digest()
            self._blobs.setdefault(fid, blob)
            if len(self._functions) >= 1024:
                self._functions.clear()
            entry = self._functions[id(func)] = (func, fid)
        return entry[1]

    def _submit_chunk(self, result, index, fid, kind, payload, n_items) -> None:
        try:
            blob, buffers = dumps_out_of_band(payload)
        except Exception as error:  # noqa: BLE001 - an unpicklable argument fails its chunk
            result._set(index, False, error)
            return
        self._pending.append(_Chunk(result, index, fid, kind, blob, buffers, n_items))

    def _wake(self) -> None:
        if not self._wake_posted:
            self._wake_posted = True
            self._inbox.put(_WAKE)

    def _map_async(self, func, iterable, kind, chunksize=None, callback=None,
                   error_callback=None):
        self._check_running()
        try:
            items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        except Exception as error:
            if not hasattr(iterable, "__len__"):
                raise
            result = MapResult(self._cache, 1, 1, callback, error_callback)
            result._fail(error)
            return result
        if chunksize is None:
            chunksize, extra = divmod(len(items), len(self._pool) * 4)
            if extra:
                chunksize += 1
        elif not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        if len(items) == 0:
            chunksize = 0
        result = MapResult(self._cache, chunksize, len(items), callback, error_callback)
        if chunksize:
            fid = self._function_id(func)
            for index, start in enumerate(range(0, len(items), chunksize)):
                chunk = items[start:start + chunksize]
                self._submit_chunk(result, index, fid, kind, chunk, len(chunk))
            self._wake()
        return result

    def _imap(self, result_class, func, iterable, chunksize):
        self._check_running()
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        result = result_class(self._cache, chunksize)
        self._feeders.append(_Feeder(result, _chunks_of(iterable, chunksize),
                                     self._function_id(func), MAP))
        self._wake()
        return result

    # ------------------------------------------------------------------ handler thread
    def _handle(self) -> None:
        inbox = self._inbox
        barriers: list[threading.Event] = []  # _repopulate_pool() callers, set after dispatching
        try:
            while True:
                event = inbox.get()
                while True:
                    if event is _STOP:
                        self._terminate_now()
                        return
                    if event is _WAKE:
                        self._wake_posted = False
                    elif isinstance(event, threading.Event):
                        barriers.append(event)
                    else:
                        self._on_done(*event)
                    try:
                        event = inbox.get_nowait()
                    except queue.Empty:
                        event = None  # holds results (and the user's values) alive otherwise
                        break
                self._dispatch()
                for barrier in barriers:
                    barrier.set()
                barriers.clear()
                if self._state == CLOSE and self._idle() and self._all_started():
                    self._kill_workers()
                    return
        except BaseException:  # pragma: no cover - a bug here must not hang every caller
            self._fail_outstanding(RuntimeError("the pool's handler thread failed"))
            self._kill_workers()
            raise
        finally:
            with self._handler_lock:  # no _repopulate_pool() caller is left waiting
                self._handler_done = True
            for barrier in barriers:
                barrier.set()
            while True:
                try:
                    event = inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(event, threading.Event):
                    event.set()

    def _all_started(self) -> bool:
        """Every worker has run its initializer (or failed to): the standard Pool's workers run
        it even when the pool is closed before any task, so this one stops none before. A
        worker that starts posts a wake-up. (Without an initializer nothing would be seen to
        run: the pool stops at once.)"""
        if self._initializer is None:
            return True
        return all(worker.started.done() for worker in self._pool if not worker.dead)

    def _idle(self) -> bool:
        return not (self._pending or self._feeders or self._cache or
                    any(w.in_flight for w in self._pool))

    def _read_feeders(self, wanted: int) -> None:
        """Read imap iterables until `wanted` chunks are pending (or they are exhausted)."""
        feeders = self._feeders
        while feeders and len(self._pending) < wanted:
            feeder = feeders[0]
            index = feeder.next_index
            try:
                chunk = next(feeder.chunks)
            except StopIteration:
                feeders.popleft()
                feeder.result._set_length(index)
                continue
            except Exception as error:  # noqa: BLE001 - the iterable raised: it ends there
                feeders.popleft()
                feeder.result._set(index, False, error)
                feeder.result._set_length(index + 1)
                continue
            feeder.next_index += 1
            self._submit_chunk(feeder.result, index, feeder.fid, feeder.kind, chunk, len(chunk))

    def _dispatch(self) -> None:
        # Fresh workers that replace retired ones get work at once: if every worker retired in
        # this pass, no answer is left to come back and call us again.
        while self._send_pending() and self._pending:
            pass

    def _send_pending(self) -> bool:
        """Send pending chunks to workers with room; replace retired workers. Returns whether
        a worker was replaced."""
        workers = self._pool
        depth = 2 if self._short_chunks else 1
        self._read_feeders(READ_AHEAD_CHUNKS)
        pending = self._pending
        while pending:
            worker = None
            now = time.perf_counter()
            for candidate in workers:
                if candidate.dead or self._retiring(candidate) or candidate.in_flight >= depth:
                    continue
                if candidate.in_flight and now - candidate.sent_at[0] > PIPELINE_WINDOW_S:
                    continue  # busy with something long: do not queue behind it
                if worker is None or candidate.in_flight < worker.in_flight:
                    worker = candidate
            if worker is None:
                break
            if pending[0].alone and worker.in_flight:
                break
            self._send(worker, self._take_batch(worker, depth))
            if self._feeders and len(pending) < READ_AHEAD_CHUNKS // 2:
                self._read_feeders(READ_AHEAD_CHUNKS)
        replaced = False
        for index, worker in enumerate(workers):
            if self._retiring(worker) and not worker.in_flight and not worker.dead:
                self._replace(index)
                replaced = True
        return replaced

    def _retiring(self, worker: _Worker) -> bool:
        limit = self._maxtasksperchild
        return limit is not None and worker.assigned >= limit

    def _take_batch(self, worker: _Worker, depth: int) -> list[_Chunk]:
        pending = self._pending
        first = pending.popleft()
        batch = [first]
        if first.alone:
            return batch
        share = len(pending) // (len(self._pool) * depth)
        room = min(MAX_BATCH_CHUNKS - 1, share)
        if self._maxtasksperchild is not None:
            room = min(room, self._maxtasksperchild - worker.assigned - 1)
        items = first.n_items
        while room > 0 and pending and items < MAX_BATCH_ITEMS and not pending[0].alone:
            chunk = pending.popleft()
            batch.append(chunk)
            items += chunk.n_items
            room -= 1
        return batch

    def _send(self, worker: _Worker, batch: list[_Chunk]) -> None:
        new_functions = []
        chunks = []
        buffers = []
        for chunk in batch:
            if chunk.fid not in worker.functions:
                worker.functions.add(chunk.fid)
                new_functions.append((chunk.fid, self._blobs[chunk.fid]))
            chunks.append((chunk.fid, chunk.kind, chunk.blob, len(chunk.buffers)))
            buffers.extend(chunk.buffers)
        worker.in_flight += 1
        worker.assigned += len(batch)
        ref = worker.handle.run.remote(new_functions, chunks, buffers)
        started = time.perf_counter()
        worker.sent_at.append(started)
        inbox = self._inbox
        ref.future().add_done_callback(
            lambda future: inbox.put((worker, batch, future, started)))

    def _on_done(self, worker: _Worker, batch: list[_Chunk], future, started: float) -> None:
        worker.in_flight -= 1
        if worker.sent_at:
            worker.sent_at.popleft()
        if self._state == TERMINATE:
            return
        try:
            outcomes = future.result()
        except ActorDiedError as error:
            self._on_worker_died(worker, batch, error)
            return
        except Exception as error:  # noqa: BLE001 - the call itself failed: so do its chunks
            for chunk in batch:
                chunk.result._set(chunk.index, False, error)
            return
        per_chunk_s = (time.perf_counter() - started) / len(batch)
        self._short_chunks = per_chunk_s < SHORT_CHUNK_S
        for chunk, (blob, buffers) in zip(batch, outcomes):
            try:
                outcome = pickle.loads(blob, buffers=buffers)
            except Exception as error:  # noqa: BLE001 - e.g. a class the parent cannot import
                outcome = (False, error, None)
            if outcome[0]:
                chunk.result._set(chunk.index, True, outcome[1])
            else:
                chunk.result._set(chunk.index, False,
                                  _results.with_remote_traceback(outcome[1], outcome[2]))

    def _on_worker_died(self, worker: _Worker, batch: list[_Chunk], error) -> None:
        """An actor answers its calls in order, so the first call to fail was the one running.
        If it held one chunk, that chunk killed the worker: it fails. Else its chunks run again,
        each alone, to find the culprit. The calls queued behind it never started: they run
        again as they were."""
        if worker.dead:
            self._pending.extendleft(reversed(batch))
            return
        if len(batch) == 1:
            chunk = batch[0]
            chunk.result._set(chunk.index, False, WorkerCrashedError(
                f"the pool worker running this task died (killed, crashed or exited): {error}"))
        else:
            for chunk in reversed(batch):
                chunk.alone = True
                self._pending.appendleft(chunk)
        worker.dead = True
        if worker._exitcode is None:
            worker._exitcode = 1  # its own exit status does not reach the pool
        if worker in self._pool:
            self._replace(self._pool.index(worker))

    def _new_worker(self) -> _Worker:
        if self._initializer_blob is None and self._initializer is not None:
            self._initializer_blob = serialization.dumps((self._initializer, self._initargs))
        handle = self._actor_class.remote(list(sys.path),
                                          bytes(multiprocessing.current_process().authkey),
                                          self._initializer_blob)
        inbox = self._inbox
        return _Worker(handle, lambda _future: inbox.put(_WAKE))

    def _replace(self, index: int) -> None:
        """Kill a worker (retired, or dead already) and start a fresh one in its place, unless
        the pool is closing with nothing left to run."""
        old = self._pool[index]
        old.stopped_by_pool()
        try:
            pa.kill(old.handle)
        except Exception:  # noqa: BLE001 - already dead
            pass
        if self._state == RUN or self._pending or self._feeders:
            self._pool[index] = self._new_worker()

    # ------------------------------------------------------------------ stopping
    def _terminate_now(self) -> None:
        self._kill_workers()
        self._pending.clear()
        self._feeders.clear()
        self._fail_outstanding(RuntimeError("the pool was terminated before this task "
                                            "finished"))

    def _fail_outstanding(self, error: BaseException) -> None:
        for result in list(self._cache.values()):
            if isinstance(result, IMapIterator):
                with result._cond:
                    result._items.append((False, error))
                    result._length = result._index = -1
                    result._cond.notify_all()
                result._cache.pop(result._job, None)
            else:
                result._success, result._value = False, error
                result._event.set()
                result._cache.pop(result._job, None)

    def _kill_workers(self) -> None:
        for worker in self._pool:
            worker.stopped_by_pool()
            try:
                pa.kill(worker.handle)
            except Exception:  # noqa: BLE001 - already dead, or the runtime is gone
                pass

    def _repopulate_pool(self) -> None:
        """The standard Pool's hook to bring the pool back to `processes` live workers. The
        handler replaces retired and dead workers as it goes; this returns once it has done so
        for everything that happened before the call."""
        if threading.current_thread() is self._handler:  # from a callback
            self._dispatch()
            return
        barrier = threading.Event()
        with self._handler_lock:
            if self._handler_done:
                return
            self._inbox.put(barrier)
        barrier.wait()

    def _release_runtime(self) -> None:
        global _owned_pools
        if not self._owns_runtime:
            return
        self._owns_runtime = False
        with _owned_lock:
            _owned_pools -= 1
            if _owned_pools == 0 and pa.is_initialized():
                pa.shutdown()


def _start_runtime_if_needed() -> bool:
    """Like Ray's Pool: start pyactor when it is not running; True if this pool owns it."""
    global _owned_pools
    with _owned_lock:
        if pa.is_initialized():
            if _owned_pools:
                _owned_pools += 1
                return True
            return False
        pa.init()
        _owned_pools = 1
        return True
