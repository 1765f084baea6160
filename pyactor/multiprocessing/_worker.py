"""The code a Pool worker runs: one pyactor actor per pool process.

A worker receives *batches*: one actor call carries several chunks (a chunk is what the standard
Pool calls a task: one `apply`, or `chunksize` items of a `map`). Each chunk travels as its own
pickle so that one bad chunk (unpicklable argument, unpicklable result) fails alone, and large
buffers (numpy arrays) travel out of band through pyactor's shared-memory store:

    parent: chunk -> pickle.dumps(protocol 5, large buffers out of band) -> (blob, buffers)
    actor call run(new_functions, [(fid, blob, n_buffers), ...], buffers)
    worker: func over the chunk -> outcome pickled the same way -> [(blob, buffers), ...]

Functions are shipped once per worker: the parent sends a function's cloudpickle blob with the
first batch that needs it, and the worker keeps it under its id. The worker starts with the
parent's sys.path appended to its own, so what the parent imports by name (a module next to the
script, a test module) unpickles there too.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import traceback
import types
from multiprocessing.pool import MaybeEncodingError

import cloudpickle

from pyactor._private import serialization

# Buffers smaller than this are pickled in band: they are cheap to copy, and out-of-band buffers
# come back read-only, which a function mutating a small array in place would not expect.
OUT_OF_BAND_MIN_BYTES = 64 * 1024

APPLY, MAP, STARMAP = 0, 1, 2


class _ResultPickler(serialization.Pickler):
    """What a worker sends back: cloudpickle, for the classes and functions of the parent's
    __main__ that came by value, but nothing the standard Pool could not send either. A lambda
    or a function or class defined inside a function is not reachable by name in the parent:
    it fails with the standard pickler's own error (and so as a MaybeEncodingError)."""

    def reducer_override(self, obj):
        if isinstance(obj, (types.FunctionType, type)) and "<" in obj.__qualname__:
            pickle.dumps(obj, protocol=5)  # raises the error the standard Pool reports
        return super().reducer_override(obj)


def dumps_out_of_band(value, pickler=serialization.Pickler) -> tuple[bytes, list]:
    """Pickle `value` with its large buffers left out (as PickleBuffers, zero-copy); plain pickle
    first (fast), `pickler` (cloudpickle) for what it cannot do (lambdas, __main__ classes)."""
    buffers: list = []

    def keep_large(buffer: pickle.PickleBuffer):
        if buffer.raw().nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # in band
        buffers.append(buffer)
        return False
    try:
        return pickle.dumps(value, protocol=5, buffer_callback=keep_large), buffers
    except Exception as error:  # noqa: BLE001 - retry with the pickler that handles more
        buffers.clear()
        try:
            return serialization.dumps(value, keep_large, pickler), buffers
        except Exception:
            raise error from None


def run_chunk(function, kind: int, payload):
    if kind == MAP:
        return list(map(function, payload))
    if kind == STARMAP:
        return [function(*args) for args in payload]
    args, kwds = payload
    return function(*args, **kwds)


def encode_outcome(ok: bool, value, tb: str | None) -> tuple[bytes, list]:
    """(blob, buffers) of a chunk's outcome: (True, value) or (False, exception, traceback)."""
    try:
        return dumps_out_of_band((True, value) if ok else (False, value, tb), _ResultPickler)
    except Exception as error:  # noqa: BLE001
        return pickle.dumps((False, MaybeEncodingError(error, value), None)), []


class PoolWorker:
    """One pool process. Its initializer's effects (module globals) stay for its whole life.

    It takes the parent's `multiprocessing` authkey, as a worker the standard Pool spawns does,
    so Manager proxies passed to the initializer or to tasks can connect to their manager."""

    def __init__(self, parent_path: list, authkey: bytes, initializer_blob: bytes | None):
        for entry in parent_path:
            if entry not in sys.path:
                sys.path.append(entry)
        multiprocessing.current_process().authkey = authkey
        if initializer_blob is not None:
            initializer, initargs = cloudpickle.loads(initializer_blob)
            initializer(*initargs)
        self.functions: dict = {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, new_functions: list, chunks: list, buffers: list) -> list:
        functions = self.functions
        for fid, blob in new_functions:
            functions[fid] = cloudpickle.loads(blob)
        out = []
        start = 0
        for fid, kind, blob, n_buffers in chunks:
            try:
                payload = pickle.loads(blob, buffers=buffers[start:start + n_buffers])
                outcome = encode_outcome(True, run_chunk(functions[fid], kind, payload), None)
            except Exception as error:  # noqa: BLE001 - the chunk's error goes to its caller
                outcome = encode_outcome(False, error, traceback.format_exc())
            start += n_buffers
            out.append(outcome)
        return out
