"""A joblib backend that runs `Parallel` batches on a pyactor Pool (so on a pyactor cluster).

    import joblib
    import pyactor.joblib
    pyactor.joblib.register()
    with joblib.parallel_backend("pyactor"):
        joblib.Parallel(n_jobs=4)(joblib.delayed(f)(i) for i in range(100))

joblib is an optional dependency (`pip install pyactor[joblib]`). The backend is joblib's own
multiprocessing backend (auto-batching, callbacks) with `pyactor.multiprocessing.Pool` in place of
`multiprocessing.Pool`; `n_jobs=-1` means every CPU of the cluster.
"""

from __future__ import annotations

try:
    from joblib import register_parallel_backend
    from joblib._parallel_backends import FallbackToBackend, MultiprocessingBackend, \
        SequentialBackend
except ImportError as error:  # pragma: no cover - exercised without joblib installed
    raise ImportError("pyactor.joblib needs joblib: pip install 'pyactor[joblib]' "
                      "(or pip install joblib)") from error

import pyactor as pa

BACKEND_NAME = "pyactor"


class PyActorBackend(MultiprocessingBackend):
    """joblib's multiprocessing backend on a pyactor Pool."""

    supports_retrieve_callback = True
    supports_return_generator = False

    def __init__(self, nesting_level=None, inner_max_num_threads=None, actor_options=None,
                 **kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **kwargs)
        self._actor_options = actor_options

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not pa.is_initialized():
                pa.init()
            cpus = int(pa.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **pool_kwargs):
        from pyactor.multiprocessing import Pool
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._pool = Pool(n_jobs, actor_options=self._actor_options)
        self.parallel = parallel
        return n_jobs


def register() -> None:
    """Make `joblib.parallel_backend("pyactor")` available."""
    register_parallel_backend(BACKEND_NAME, PyActorBackend)
