"""The worker's side of a call (worker.py): what a call returns comes back exactly, whichever
way the worker encodes it (the shortcut for a small plain value, the general serializer, or the
store for a large one), and arguments reach the function however they are passed."""

from __future__ import annotations

import pytest

import pyactor as pa
from pyactor._private.serialization import INLINE_THRESHOLD_BYTES

LARGE_TEXT = "x" * (2 * INLINE_THRESHOLD_BYTES)  # plain, but too big to travel inline
RETURNS = [None, True, False, 0, -2 ** 70, 1.5, "text", "", b"\x00bytes", 1 + 2j, LARGE_TEXT,
           b"y" * (2 * INLINE_THRESHOLD_BYTES), [1, "two"], {"k": (None,)}]


@pa.remote
def identity(value):
    return value


@pa.remote
def describe(*args, **kwargs):
    return args, kwargs


@pa.remote
class Echo:
    def identity(self, value):
        return value

    def describe(self, *args, **kwargs):
        return args, kwargs


def test_returns_keep_their_exact_type_and_value(pa_module):
    """Plain values small and large, and containers, come back equal and of the same type,
    from tasks and from actor calls."""
    echo = Echo.remote()
    from_tasks = pa.get([identity.remote(value) for value in RETURNS])
    from_actor = pa.get([echo.identity.remote(value) for value in RETURNS])
    for got in (from_tasks, from_actor):
        assert [type(value) for value in got] == [type(value) for value in RETURNS]
        assert got == RETURNS
    pa.kill(echo)


@pytest.mark.parametrize("args, kwargs", [((), {}), ((1, "a"), {}), ((), {"k": 2}),
                                          ((None,), {"k": b"v", "j": [3]})])
def test_arguments_reach_the_function_however_they_are_passed(pa_module, args, kwargs):
    """No arguments, positional only, keywords only, both: the call sees exactly them."""
    echo = Echo.remote()
    assert pa.get(describe.remote(*args, **kwargs)) == (args, kwargs)
    assert pa.get(echo.describe.remote(*args, **kwargs)) == (args, kwargs)
    pa.kill(echo)
