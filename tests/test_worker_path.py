"""The worker's side of a call (worker.py): what a call returns comes back exactly, whichever
way the worker encodes it (the shortcut for a small plain value, the general serializer, or the
store for a large one), and arguments reach the function however they are passed."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import pyactor as pa
from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor._private.serialization import INLINE_THRESHOLD_BYTES
from pyactor._private.worker import Executor

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


def test_the_worker_reads_calls_in_the_protocols_field_order():
    """The worker reads ActorCall and PushTask from their wire lists by position: the order it
    assumes is the protocol's."""
    assert P.ActorCall._fields == ("task_id", "actor_id", "method", "args", "kwargs",
                                   "num_returns", "owner", "sequence")
    parameters = list(inspect.signature(Executor._run_task).parameters)
    assert tuple(parameters[2:]) == P.PushTask._fields


def test_the_workers_answer_is_a_task_done_in_the_protocols_field_order():
    """The worker writes TaskDone as its wire list, [kind, task_id, returns, error,
    retryable]: what P.encode gives and P.decode reads back."""
    from pyactor._private.worker import _TASK_DONE_KIND
    done = P.TaskDone(b"t" * 16, [[P.VALUE_INLINE, b"v", None, None]], None, False)
    assert [_TASK_DONE_KIND, *done] == P.encode(done)
    assert P.TaskDone._fields == ("task_id", "returns", "error", "retryable")


@pa.remote
class Endpoint:
    def task_address(self):
        from pyactor._private import api
        return api.runtime_for_call().task_address


@pytest.mark.parametrize("message", [
    [P.KIND_OF[P.ActorCall], b"t" * 16],  # a call's kind, cut short
    [P.KIND_OF[P.PushTask], *range(len(P.PushTask._fields) + 1)],  # one field too many
    P.encode(P.FreeObjects([])),  # a message this endpoint does not take
    "not a list",
])
async def test_a_malformed_call_closes_only_its_connection(pa_module, message):
    """What is not a call of the right shape closes the connection it came on; the worker
    goes on answering calls."""
    from pyactor._private.api import runtime_for_call
    endpoint = Endpoint.remote()
    host, port = await endpoint.task_address.remote()
    closed = asyncio.get_running_loop().create_future()
    connection = await transport.connect(
        host, port, runtime_for_call().token, lambda conn, received: None,
        on_close=lambda conn, reason: closed.set_result(reason))
    connection.send(message)
    await asyncio.wait_for(closed, 10)  # (a hang guard: the close comes at once)
    assert await endpoint.task_address.remote() == [host, port]
    pa.kill(endpoint)
