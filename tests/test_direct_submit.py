"""Sending at submit (direct.py, "Sending at submit"): a thread whose calls are waited for as
they are made sends each new call in `.remote()`. These tests check that such calls start at
once and wake nobody, and that an answer its thread does not wait for at once still arrives,
whatever the thread does instead: another call, another kind of wait, a cancel, going off to
block elsewhere (the backstop timer), or its worker dying meanwhile."""

from __future__ import annotations

import asyncio
import threading

import pytest

import pyactor as pa
from pyactor._private import api
from pyactor.exceptions import TaskCancelledError

from conftest import wait_until
from helpers import Log, exit_the_first_time, gated


@pa.remote
def add_one(x):
    return x + 1


def direct():
    return api._runtime.direct


def in_step(log=None) -> None:
    """Make this thread's last call one its own get claimed (then it sends at submit)."""
    pa.get(add_one.remote(0))  # (a first call leases a worker)
    pa.get(add_one.remote(0))  # claimed: the backstop timer starts
    assert wait_until(lambda: direct()._timer is not None, 20)
    pa.get(add_one.remote(0))
    if log is not None:
        pa.get(log.read.remote())


def test_a_thread_in_step_starts_its_call_before_it_waits(pa_module, tmp_path):
    in_step()
    before = direct().sent_at_submit
    started, release = tmp_path / "started", tmp_path / "release"
    ref = gated.remote(str(started), str(release), "value")
    assert direct().sent_at_submit == before + 1
    assert wait_until(started.exists, 20)  # running, though nobody waits for it yet
    release.touch()
    assert pa.get(ref) == "value"


def test_calls_waited_for_as_made_never_involve_the_io_thread(pa_module, monkeypatch):
    """The aim of the path: a loop of pa.get(f.remote()) hands the IO thread nothing (no
    run_in_loop, no release to drain), for tasks and actor calls alike."""
    from pyactor._private import direct as direct_module, task_submitter
    # (a loaded machine can stall this thread for longer than the backstop, which then takes
    # an answer, or than a lease lingers idle, which then goes back to the node: neither is
    # what this test is about)
    monkeypatch.setattr(direct_module, "BACKSTOP_S", 30.0)
    monkeypatch.setattr(task_submitter, "LEASE_LINGER_S", 30.0)
    runtime = api._runtime
    log = Log.remote()
    pa.get(log.read.remote())
    in_step()
    handed = []
    original_run_in_loop = runtime.run_in_loop
    monkeypatch.setattr(runtime, "run_in_loop",
                        lambda *a: (handed.append(a[0]), original_run_in_loop(*a)))
    original_released = runtime.refs._on_released
    monkeypatch.setattr(runtime.refs, "_on_released",
                        lambda: (handed.append("release"), original_released()))
    before = direct().sent_at_submit
    assert [pa.get(add_one.remote(i)) for i in range(30)] == list(range(1, 31))
    assert [pa.get(log.append.remote(i)) for i in range(30)] == list(range(30))
    assert direct().sent_at_submit == before + 60
    assert handed == []


def test_the_backstop_timer_ticks_only_while_calls_are_sent_at_submit(pa_module):
    """An idle program is never woken by it: the ticking stops once calls stop, and the next
    call sent at submit starts it again."""
    in_step()
    with direct().lock:  # (an earlier test may have left it ticking at a longer period)
        direct()._start_ticking()
    assert wait_until(lambda: not direct()._ticking, 20)
    ref = add_one.remote(1)  # sent at submit: its answer is covered from the start
    assert direct()._ticking and direct().unclaimed
    assert pa.get(ref) == 2
    assert wait_until(lambda: not direct()._ticking, 20)


def test_an_answer_its_thread_never_waits_for_reaches_other_waiters(pa_module, tmp_path):
    """The calling thread goes off to block elsewhere: the backstop timer gives its answer to
    the IO thread, so other threads' waits on the ref, and their calls to the same actor
    (queued behind it to keep the order), complete without it."""
    log = Log.remote()
    made, go_on = [], threading.Event()

    def caller():
        in_step(log)
        made.append(log.append.remote("first"))
        go_on.wait(30)  # blocks outside pyactor
    thread = threading.Thread(target=caller)
    thread.start()
    assert wait_until(lambda: made, 20)
    assert pa.get(made[0], timeout=20) == "first"
    assert pa.get(log.append.remote("second"), timeout=20) == "second"
    assert not direct().unclaimed
    go_on.set()
    thread.join(20)
    assert pa.get(log.read.remote()) == ["first", "second"]


@pytest.mark.parametrize("move_on", ["another call", "a list get", "wait", "future",
                                     "await"])
def test_an_answer_not_waited_for_at_once_is_handed_over(pa_module, move_on):
    """Whatever the thread does next with pyactor, the call it sent at submit completes, and
    its calls to the actor keep their order."""
    log = Log.remote()
    in_step(log)
    before = direct().sent_at_submit
    ref = log.append.remote("sent")
    assert direct().sent_at_submit == before + 1
    if move_on == "another call":
        assert pa.get(log.append.remote("next")) == "next"
        assert pa.get(ref) == "sent"
    elif move_on == "a list get":
        assert pa.get([ref, add_one.remote(1)]) == ["sent", 2]
    elif move_on == "wait":
        ready, _ = pa.wait([ref], timeout=20)
        assert ready == [ref]
    elif move_on == "future":
        assert ref.future().result(20) == "sent"
    else:
        async def wait_for_it():
            return await ref
        assert asyncio.run(wait_for_it()) == "sent"
    expected = ["sent", "next"] if move_on == "another call" else ["sent"]
    assert pa.get(log.read.remote()) == expected
    assert pa.get(add_one.remote(2)) == 3  # and the path serves on


def test_cancel_of_a_call_sent_at_submit(pa_module, tmp_path):
    in_step()
    before = direct().sent_at_submit
    started = tmp_path / "started"
    ref = gated.remote(str(started), str(tmp_path / "never opened"), "never")
    assert direct().sent_at_submit == before + 1
    assert wait_until(started.exists, 20)
    pa.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pa.get(ref, timeout=20)
    assert pa.get(add_one.remote(1)) == 2


def test_a_worker_dying_under_an_answer_nobody_reads_yet(pa_module, tmp_path):
    """The connection breaks while the answer is left unread: the IO thread takes it (the
    backstop), finds the worker gone, and the task runs again."""
    marker = tmp_path / "died once"
    in_step()
    before = direct().sent_at_submit
    ref = exit_the_first_time.remote(str(marker))
    assert direct().sent_at_submit == before + 1
    assert wait_until(lambda: marker.exists() and not direct().unclaimed, 20)
    assert pa.get(ref, timeout=30) == "second attempt"
