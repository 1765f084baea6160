"""Errors under faults say what went wrong: the cause an actor's callers are told, a value
too large for the whole store, and a put once the local node is gone."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from pyactor._private import api
from pyactor.exceptions import ActorDiedError, ObjectStoreFullError, PyActorError

GUARD_S = 60  # a hang guard on gets, never a synchronisation device


class Fragile:
    def crash(self):
        os._exit(1)

    def ping(self, i):
        return i


def test_calls_lost_with_an_actor_name_max_restarts_once_it_has_none_left(pa_fresh):
    """A call in flight when the actor dies with restarts left blames max_task_retries; when
    it dies with none left (max_restarts exhausted), the cause given is max_restarts."""
    pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
    actor = pa_fresh.remote(max_restarts=1)(Fragile).remote()
    assert pa_fresh.get(actor.ping.remote(0), timeout=GUARD_S) == 0
    with pytest.raises(ActorDiedError) as first:
        pa_fresh.get(actor.crash.remote(), timeout=GUARD_S)
    assert "max_task_retries=0" in str(first.value)
    assert "max_restarts" not in str(first.value)
    assert pa_fresh.get(actor.ping.remote(1), timeout=GUARD_S) == 1  # restarted once
    with pytest.raises(ActorDiedError) as last:
        pa_fresh.get(actor.crash.remote(), timeout=GUARD_S)
    assert "will not be restarted" in str(last.value) and "max_restarts=1" in str(last.value)
    assert "max_task_retries" not in str(last.value)
    with pytest.raises(ActorDiedError, match="max_restarts=1"):
        pa_fresh.get(actor.ping.remote(2), timeout=GUARD_S)


def test_a_put_larger_than_the_whole_store_says_so_with_both_sizes(pa_fresh):
    """Not "the store is full" (it is empty): the value exceeds the store's capacity, and the
    message gives the value's size and the capacity."""
    pa_fresh.init(num_cpus=1, object_store_memory=16 << 20)
    value = np.zeros(24 << 20, dtype=np.uint8)
    with pytest.raises(ObjectStoreFullError) as raised:
        pa_fresh.put(value)
    message = str(raised.value)
    assert "exceeds the capacity" in message and "is full" not in message
    error = raised.value
    assert error.requested_bytes >= value.nbytes > error.capacity_bytes
    assert f"{error.requested_bytes} bytes" in message
    assert f"{error.capacity_bytes} bytes" in message
    assert pa_fresh.get(pa_fresh.put(np.ones(4 << 20, dtype=np.uint8))).sum() == 4 << 20


def test_put_after_the_local_node_was_killed_raises(pa_fresh):
    """Once the node is gone, put raises (small and large values) instead of handing out a
    ref no task can read; refs made before stay readable."""
    pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
    before = pa_fresh.put(41)
    os.kill(api._node_process.pid, signal.SIGKILL)
    assert api._runtime.node_lost.wait(GUARD_S)
    with pytest.raises(PyActorError, match="cannot put: the pyactor node .* is gone"):
        pa_fresh.put(1)
    with pytest.raises(PyActorError, match="cannot put"):
        pa_fresh.put(np.zeros(1 << 20))
    assert pa_fresh.get(before) == 41
