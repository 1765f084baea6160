"""`multiprocessing.Pool` on pyactor: `from pyactor.multiprocessing import Pool` is a drop-in
replacement whose worker processes are pyactor actors, so a pool spans a cluster once
`pyactor.init(address=...)` joins one (see pool.py for how a call travels).

Also exported, for code that imports them from `multiprocessing.pool`: `AsyncResult`
(= `ApplyResult`), `MapResult`, `IMapIterator`, `IMapUnorderedIterator`, `MaybeEncodingError`,
`RemoteTraceback`, and `TimeoutError` (the standard `multiprocessing.TimeoutError`, raised by
`AsyncResult.get(timeout)`).
"""

from __future__ import annotations

from multiprocessing import TimeoutError, cpu_count

from pyactor.multiprocessing._results import (ApplyResult, AsyncResult, IMapIterator,
                                              IMapUnorderedIterator, MapResult, RemoteTraceback)
from pyactor.multiprocessing._worker import MaybeEncodingError
from pyactor.multiprocessing.pool import Pool

__all__ = ["Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator", "MaybeEncodingError", "RemoteTraceback", "TimeoutError",
           "cpu_count"]
