"""`multiprocessing.Pool` on pyactor: `from pyactor.multiprocessing import Pool` is a drop-in
replacement whose worker processes are pyactor actors, so a pool spans a cluster once
`pyactor.init(address=...)` joins one (see pool.py for how a call travels).

Also exported, for code that imports them from `multiprocessing.pool`: `AsyncResult`
(= `ApplyResult`), `MapResult`, `IMapIterator`, `IMapUnorderedIterator`, `MaybeEncodingError`,
`RemoteTraceback`, and `TimeoutError`; the last three are the standard library's own classes
(`multiprocessing.pool.MaybeEncodingError`, `multiprocessing.pool.RemoteTraceback`,
`multiprocessing.TimeoutError`), so code that checks for them works unchanged.
"""

from __future__ import annotations

from multiprocessing import TimeoutError, cpu_count
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback

from pyactor.multiprocessing._results import (ApplyResult, AsyncResult, IMapIterator,
                                              IMapUnorderedIterator, MapResult)
from pyactor.multiprocessing.pool import Pool

__all__ = ["Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator", "MaybeEncodingError", "RemoteTraceback", "TimeoutError",
           "cpu_count"]
