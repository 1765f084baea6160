"""CPython's own Pool tests, run against pyactor.multiprocessing.Pool.

Not a rewrite: the test classes are imported from `test._test_multiprocessing`, the file that
ships with the interpreter (Lib/test/_test_multiprocessing.py), and installed here the way that
file installs its own variants. It builds "processes", "threads" and "manager" test cases by
mixing each `_Test*` class with `ProcessesMixin`, `ThreadsMixin` or `ManagerMixin`, whose `Pool`
attribute names the pool under test. Ours is a process pool, so it takes the "processes" variant
with `Pool` set to ours. The classes that call `multiprocessing.Pool(...)` directly instead of
`self.Pool` (_TestPoolWorkerErrors, _TestPoolWorkerLifetime, TestInitializers) get ours in its
place for the duration of each test, including in the one test that runs a script in a fresh
interpreter.

The tests that cannot apply to this design are skipped below, each with its reason.
"""

from __future__ import annotations

import multiprocessing
import unittest
from unittest import mock

import pytest

import pyactor as pa
from pyactor.multiprocessing import Pool

cpython = pytest.importorskip("test._test_multiprocessing")
script_helper = pytest.importorskip("test.support.script_helper")

# The same start-up as the file's own setUpModule: a fresh interpreter running a script puts our
# Pool where the script imports the standard one.
USE_OUR_POOL = ("import multiprocessing, pyactor.multiprocessing; "
                "multiprocessing.Pool = pyactor.multiprocessing.Pool\n")


def _python_ok_with_our_pool(*args, **env_vars):
    args = list(args)
    if "-c" in args:
        index = args.index("-c") + 1
        args[index] = USE_OUR_POOL + args[index]
    return _python_ok(*args, **env_vars)


_python_ok = script_helper.assert_python_ok


@pytest.fixture(scope="module", autouse=True)
def runtime(pa_module):
    """One local node for every class here (the pools share it, as pools in one program do)."""
    yield pa_module


class OurPoolInPlaceOfTheStandardOne:
    """For the tests that call `multiprocessing.Pool(...)` itself."""

    def setUp(self):
        super().setUp()
        for patcher in (mock.patch.object(multiprocessing, "Pool", Pool),
                        mock.patch.object(script_helper, "assert_python_ok",
                                          _python_ok_with_our_pool)):
            patcher.start()
            self.addCleanup(patcher.stop)


class PyactorMixin(cpython.ProcessesMixin, OurPoolInPlaceOfTheStandardOne):
    """ProcessesMixin with our Pool as `self.Pool`, and as `multiprocessing.Pool`."""

    TYPE = "processes"
    Pool = staticmethod(Pool)


class WithPyactorTestPool(cpython._TestPool, PyactorMixin, unittest.TestCase):
    pass


class WithPyactorTestPoolWorkerErrors(cpython._TestPoolWorkerErrors, PyactorMixin,
                                      unittest.TestCase):
    pass


@pytest.mark.slow  # starts a dozen workers, and a fresh interpreter
class WithPyactorTestPoolWorkerLifetime(cpython._TestPoolWorkerLifetime, PyactorMixin,
                                        unittest.TestCase):
    pass


class TestInitializers(OurPoolInPlaceOfTheStandardOne, cpython.TestInitializers):
    @unittest.skip("tests multiprocessing.managers.SyncManager's initializer, not the Pool")
    def test_manager_initializer(self):
        pass


class TestPoolNotLeakOnFailure(cpython.TestPoolNotLeakOnFailure):
    @unittest.skip("needs the Pool to start its processes with `context.Process` (the test "
                   "makes that fail); ours starts pyactor actors and takes no context")
    def test_release_unused_processes(self):
        pass


def test_every_pool_test_of_the_file_is_installed():
    """Each CPython test class that exercises multiprocessing.Pool has its pyactor variant here:
    a new class in a later CPython shows up as a failure, not as silence."""
    covered = {"_TestPool", "_TestPoolWorkerErrors", "_TestPoolWorkerLifetime",
               "TestInitializers", "TestPoolNotLeakOnFailure"}
    # Not run here: TestSyncManagerTypes.test_pool checks a manager's proxy of the standard Pool,
    # which lives in the manager's process (not a pool of ours).
    elsewhere = {"TestSyncManagerTypes"}
    source = open(cpython.__file__, encoding="utf-8").read()
    using_pool = set()
    for name, cls in vars(cpython).items():
        if isinstance(cls, type) and issubclass(cls, (unittest.TestCase, cpython.BaseTestCase)):
            body = _class_source(source, name)
            if body and ("Pool(" in body):
                using_pool.add(name)
    assert using_pool == covered | elsewhere, using_pool ^ (covered | elsewhere)


def _class_source(source: str, name: str) -> str:
    start = source.find(f"\nclass {name}(")
    if start < 0:
        return ""
    end = source.find("\nclass ", start + 1)
    return source[start:end if end >= 0 else len(source)]
