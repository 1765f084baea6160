"""pyactor.joblib: joblib.Parallel on a pyactor Pool."""

from __future__ import annotations

import os

import pytest

joblib = pytest.importorskip("joblib")

import pyactor.joblib  # noqa: E402
from conftest import run_python  # noqa: E402


def square(x):
    return x * x


def pid(_):
    return os.getpid()


def fail(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


@pytest.fixture(scope="module", autouse=True)
def registered(pa_module):
    pyactor.joblib.register()


def test_parallel_runs_on_pyactor():
    """Parallel under the "pyactor" backend returns the results in order, from worker
    processes other than this one."""
    with joblib.parallel_backend("pyactor"):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(50)) == \
            [i * i for i in range(50)]
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(pid)(i) for i in range(10))
    assert os.getpid() not in pids


def test_parallel_all_cpus_and_lambdas():
    """n_jobs=-1 uses the cluster's CPUs; a lambda travels by value."""
    with joblib.parallel_backend("pyactor"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(lambda x: x + 1)(i) for i in range(20))
    assert out == list(range(1, 21))


def test_parallel_reraises_the_task_error():
    """An exception in a task reaches the caller with its type."""
    with joblib.parallel_backend("pyactor"):
        with pytest.raises(ValueError, match="bad item 3"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(fail)(i) for i in range(10))
        # the backend still works after a failure
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(4)) == \
            [0, 1, 4, 9]


def test_missing_joblib_gives_an_import_error_that_says_what_to_install():
    """Without joblib, importing pyactor.joblib says how to get it."""
    code = """if 1:
        import sys
        sys.modules["joblib"] = None  # as if not installed
        try:
            import pyactor.joblib
        except ImportError as error:
            print("IMPORT-ERROR", error)
    """
    out = run_python(code)
    assert "IMPORT-ERROR" in out.stdout and "pyactor[joblib]" in out.stdout, out.stderr
