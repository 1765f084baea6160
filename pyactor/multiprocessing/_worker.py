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

import os
import pickle
import sys
import traceback

import cloudpickle

# Buffers smaller than this are pickled in band: they are cheap to copy, and out-of-band buffers
# come back read-only, which a function mutating a small array in place would not expect.
OUT_OF_BAND_MIN_BYTES = 64 * 1024

APPLY, MAP, STARMAP = 0, 1, 2


class MaybeEncodingError(Exception):
    """A result (or the exception a task raised) could not be pickled to go back to the parent;
    `exc` and `value` hold the reprs of the pickling error and of the value."""

    def __init__(self, exc, value):
        self.exc = repr(exc)
        self.value = repr(value)
        super().__init__(self.exc, self.value)

    def __str__(self):
        return f"Error sending result: '{self.value}'. Reason: '{self.exc}'"

    def __repr__(self):
        return f"<{type(self).__name__}: {self}>"


def dumps_out_of_band(value) -> tuple[bytes, list]:
    """Pickle `value` with its large buffers left out (as PickleBuffers, zero-copy); plain pickle
    first (fast), cloudpickle for what it cannot do (lambdas, __main__ classes)."""
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
            return cloudpickle.dumps(value, protocol=5, buffer_callback=keep_large), buffers
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
        return dumps_out_of_band((True, value) if ok else (False, value, tb))
    except Exception as error:  # noqa: BLE001
        return pickle.dumps((False, MaybeEncodingError(error, value), None)), []


class PoolWorker:
    """One pool process. Its initializer's effects (module globals) stay for its whole life."""

    def __init__(self, parent_path: list, initializer_blob: bytes | None):
        for entry in parent_path:
            if entry not in sys.path:
                sys.path.append(entry)
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
