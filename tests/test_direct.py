"""The synchronous fast path (direct.py): a thread that waits for the call it just made sends
the call itself. These tests check that the path is taken, and that nothing a user relies on
changes with it: call order, errors and retries, dying workers and actors, cancel, an
interrupted wait, refs and arrays in results, other waiters on the same ref."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyactor as pa
from pyactor._private import api
from pyactor.exceptions import ActorDiedError, TaskCancelledError, TaskError, WorkerCrashedError

from conftest import wait_until
from helpers import Log, exit_the_first_time, gated, identity


def direct_calls() -> int:
    return api._runtime.direct.calls_sent


@pa.remote
def add_one(x):
    return x + 1


@pa.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value



@pa.remote
def fail(message):
    raise ValueError(message)



@pa.remote
def raise_the_first_time(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt")
    return "second attempt"


@pa.remote
def put_inside(value):
    return [pa.put(value)]


@pa.remote
def array(n):
    return np.arange(n, dtype=np.float64)


def test_waiting_for_a_task_just_made_sends_it_directly(pa_module):
    pa.get(add_one.remote(0))  # the first call of a shape leases a worker the ordinary way
    before = direct_calls()
    assert [pa.get(add_one.remote(i)) for i in range(30)] == list(range(1, 31))
    assert direct_calls() - before >= 20


def test_waiting_for_an_actor_call_just_made_sends_it_directly(pa_module):
    log = Log.remote()
    pa.get(log.read.remote())
    before = direct_calls()
    assert [pa.get(log.append.remote(i)) for i in range(30)] == list(range(30))
    assert direct_calls() - before >= 20
    assert pa.get(log.read.remote()) == list(range(30))


def test_waits_with_a_timeout_go_directly_and_multi_ref_gets_do_not(pa_module):
    pa.get(add_one.remote(0))
    before = direct_calls()
    assert pa.get(add_one.remote(1), timeout=30) == 2
    assert direct_calls() == before + 1
    assert pa.get([add_one.remote(2)]) == [3]  # a one-ref list is still a single wait
    assert direct_calls() == before + 2
    # The first is sent as it is made (the thread's calls so far were all waited for); the
    # second finds the first not waited for: it, and the wait for both, go the ordinary way.
    assert pa.get([add_one.remote(3), add_one.remote(4)]) == [4, 5]
    assert direct_calls() == before + 3
    assert pa.get([add_one.remote(5), add_one.remote(6)]) == [6, 7]
    assert direct_calls() == before + 3


def test_a_worker_that_never_completes_the_handshake_does_not_hold_a_get_past_its_timeout(
        pa_module, monkeypatch):
    """A thread's first direct connection to a worker gets no longer than the get's timeout to
    open (it had 10 s): the get times out on time, and the call, gone the ordinary way,
    still completes."""
    from pyactor._private import transport
    stalled = []

    def handshake_never_answered(host, port, token, timeout_s=10.0, **_kwargs):
        stalled.append(timeout_s)
        time.sleep(timeout_s)  # what a worker that accepts and never answers costs
        raise TimeoutError(f"no pyactor handshake with {host}:{port} within {timeout_s} s")
    pa.get(add_one.remote(0))  # (a worker is leased)
    monkeypatch.setattr(transport, "BlockingConnection", handshake_never_answered)
    refs, raised = [], []

    def caller():  # (a new thread: no connection of its own yet)
        refs.append(add_one.remote(1))
        try:
            pa.get(refs[0], timeout=1.5)
        except pa.GetTimeoutError as error:
            raised.append(error)
    thread = threading.Thread(target=caller)
    started = time.monotonic()
    thread.start()
    thread.join(30)
    assert raised and stalled and max(stalled) <= 1.5
    assert time.monotonic() - started < 8  # (10 s and more before)
    assert pa.get(refs[0], timeout=30) == 2


def test_a_direct_wait_that_times_out_loses_nothing(pa_module, tmp_path):
    """The timed-out caller gets GetTimeoutError; the answer still arrives (a helper thread
    reads it) and a later get returns it, for a task and for an actor call."""
    pa.get(sleep_then.remote(0, None))
    release = tmp_path / "release"
    before = direct_calls()
    ref = gated.remote(str(tmp_path / "started"), str(release), "late")
    with pytest.raises(pa.GetTimeoutError):
        pa.get(ref, timeout=0.2)
    assert direct_calls() > before
    release.touch()
    assert pa.get(ref, timeout=30) == "late"

    log = Log.remote()
    pa.get(log.read.remote())
    gate = tmp_path / "actor gate"
    call = log.append_gated.remote("late", str(tmp_path / "actor started"), str(gate))
    with pytest.raises(pa.GetTimeoutError):
        pa.get(call, timeout=0.2)
    after = log.append.remote("after")  # held behind the unanswered direct call
    gate.touch()
    assert pa.get([call, after], timeout=30) == ["late", "after"]
    assert pa.get(log.read.remote()) == ["late", "after"]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["call_and_wait", "call", "wait_oldest"]), min_size=1,
                max_size=25))
def test_calls_run_in_the_order_made_whatever_the_waits(pa_module, steps):
    log = Log.remote()
    pending = []
    made = 0
    for step in steps:
        if step == "call_and_wait":
            assert pa.get(log.append.remote(made)) == made
            made += 1
        elif step == "call":
            pending.append((made, log.append.remote(made)))
            made += 1
        elif pending:
            index, ref = pending.pop(0)
            assert pa.get(ref) == index
    assert pa.get([ref for _, ref in pending]) == [index for index, _ in pending]
    assert pa.get(log.read.remote()) == list(range(made))


def test_each_threads_calls_keep_their_order(pa_module):
    log = Log.remote()
    pa.get(log.read.remote())
    errors = []

    def caller(name):
        try:
            for i in range(60):
                ref = log.append.remote((name, i))
                if i % 3:  # mostly call-and-wait (direct), sometimes not
                    pa.get(ref)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
    threads = [threading.Thread(target=caller, args=(n,)) for n in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    entries = pa.get(log.read.remote())
    for name in ("a", "b", "c"):
        assert [i for n, i in entries if n == name] == list(range(60))


def test_a_call_made_while_a_direct_call_runs_waits_behind_it(pa_module, tmp_path):
    log = Log.remote()
    pa.get(log.read.remote())
    started, release = tmp_path / "started", tmp_path / "release"
    before = direct_calls()
    result = {}
    slow = threading.Thread(target=lambda: result.update(slow=pa.get(
        log.append_gated.remote("slow", str(started), str(release)))))
    slow.start()
    assert wait_until(started.exists, 20)  # the slow call runs, sent directly
    assert direct_calls() > before
    later = log.append.remote("later")  # held by this process until the slow one answers
    release.touch()
    assert pa.get(later, timeout=30) == "later"
    slow.join(30)
    assert result["slow"] == "slow"
    assert pa.get(log.read.remote()) == ["slow", "later"]


def test_errors_and_retries_on_exceptions(pa_module, tmp_path):
    with pytest.raises(ValueError, match="boom") as info:
        pa.get(fail.remote("boom"))
    assert isinstance(info.value, TaskError)
    flaky = raise_the_first_time.options(max_retries=1, retry_exceptions=True)
    assert pa.get(flaky.remote(str(tmp_path / "marker"))) == "second attempt"


def test_a_worker_dying_under_a_direct_call_retries_the_task(pa_module, tmp_path):
    task = exit_the_first_time.options(max_retries=1)
    pa.get(task.remote(str(tmp_path / "warm")))  # the shape's lease; the worker is replaced
    pa.get(task.remote(str(tmp_path / "warm")))
    before = direct_calls()
    assert pa.get(task.remote(str(tmp_path / "marker"))) == "second attempt"
    assert direct_calls() > before
    with pytest.raises(WorkerCrashedError):
        pa.get(exit_the_first_time.options(max_retries=0).remote(str(tmp_path / "once")))


def test_an_actor_dying_under_a_direct_call(pa_module, tmp_path):
    log = Log.remote()
    pa.get(log.read.remote())
    with pytest.raises(ActorDiedError):
        pa.get(log.exit_the_first_time.remote(str(tmp_path / "a")))
    restartable = Log.options(max_restarts=1, max_task_retries=1).remote()
    pa.get(restartable.read.remote())
    before = direct_calls()
    assert pa.get(restartable.exit_the_first_time.remote(str(tmp_path / "b"))) == \
        "second incarnation"
    assert direct_calls() > before
    assert pa.get(restartable.append.remote("after")) == "after"


def test_cancel_from_another_thread_interrupts_a_direct_call(pa_module, tmp_path):
    pa.get(sleep_then.remote(0, None))
    started = tmp_path / "started"
    refs, outcome = [], []

    def call_and_wait():
        ref = gated.remote(str(started), str(tmp_path / "never opened"), "never")
        refs.append(ref)
        try:
            outcome.append(pa.get(ref))
        except TaskCancelledError as error:
            outcome.append(error)
    before = direct_calls()
    waiter = threading.Thread(target=call_and_wait)
    waiter.start()
    assert wait_until(started.exists, 20)
    assert direct_calls() > before
    pa.cancel(refs[0])
    waiter.join(20)
    assert not waiter.is_alive()
    assert isinstance(outcome[0], TaskCancelledError)


class Interrupted(Exception):
    pass


def test_an_interrupted_wait_loses_nothing(pa_module):
    pa.get(sleep_then.remote(0, None))

    def interrupt(signum, frame):
        raise Interrupted()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        ref = sleep_then.remote(0.6, "done")
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            pa.get(ref)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert pa.get(ref, timeout=30) == "done"
    assert pa.get(add_one.remote(1)) == 2  # and the fast path serves on


def test_refs_and_arrays_in_results(pa_module):
    pa.get(put_inside.remote(0))
    inner = pa.get(put_inside.remote(41))
    assert pa.get(inner[0]) == 41
    pa.get(array.remote(10))
    before = direct_calls()
    values = pa.get(array.remote(1_000_000))  # in the store, not inline
    assert direct_calls() > before
    assert values.shape == (1_000_000,) and values[-1] == 999_999.0


def test_another_thread_waiting_on_the_same_ref_is_woken_too(pa_module, tmp_path):
    """The thread that made the call reads the answer itself; when the entry has another
    waiter by then, it is resolved on the IO thread, which wakes both."""
    pa.get(sleep_then.remote(0, None))
    release = tmp_path / "release"
    made, seen = [], []

    def second_waiter_then_open():
        wait_until(lambda: made and made[0].id[:16] in api._runtime.direct._calls, 20)
        ref = made[0]
        other = threading.Thread(target=lambda: seen.append(pa.get(ref)))
        other.start()
        entry = api._runtime.refs.get(ref.id)
        wait_until(lambda: entry.callbacks, 20)
        release.touch()
        other.join(20)
    helper = threading.Thread(target=second_waiter_then_open)
    helper.start()
    before = direct_calls()
    ref = gated.remote(str(tmp_path / "started"), str(release), "shared")
    made.append(ref)
    assert pa.get(ref) == "shared"
    assert direct_calls() > before
    helper.join(30)
    assert seen == ["shared"]


def test_a_call_through_a_handle_nobody_keeps(pa_module):
    assert pa.get(Log.remote().append.remote("only")) == "only"
    assert pa.get(identity.remote(3)) == 3


def test_a_result_made_directly_keeps_its_lineage(pa_module):
    """A task run directly whose result lives in the store can be rebuilt like any other: here
    its node's death is simulated for that one object, and the task runs again."""
    runtime = api._runtime
    pa.get(array.remote(10))
    before = direct_calls()
    ref = array.remote(100_000)
    assert pa.get(ref)[-1] == 99_999.0
    assert direct_calls() > before
    entry = runtime.refs.get(ref.id)
    assert entry.node_id == runtime.node_id and entry.task_id in runtime.tasks.lineage
    # What a dead node means for this entry: gone from the store, rebuilt from lineage.
    runtime.store.delete(ref.id)
    done = threading.Event()

    def lose():
        spec = runtime.tasks.lineage[entry.task_id]
        with runtime.refs.lock:
            entry.node_id = b"a node that died"
        runtime.tasks.lineage[entry.task_id] = spec
        runtime.tasks.objects_lost_with(b"a node that died")
        done.set()
    runtime.run_in_loop(lose)
    assert done.wait(10)
    assert pa.get(ref, timeout=30)[-1] == 99_999.0


def test_a_call_that_cannot_be_sent_directly_goes_the_ordinary_way(pa_module, monkeypatch):
    """A thread that takes a call but cannot reach its worker hands it back unsent: the IO
    thread sends it, first in line, and calls keep their order."""
    from pyactor._private.direct import DirectPath
    log = Log.remote()
    pa.get(log.read.remote())
    pa.get(add_one.remote(0))

    def refuse(self, address, *_rest):
        raise ConnectionRefusedError("injected")
    monkeypatch.setattr(DirectPath, "_channel", refuse)
    before = direct_calls()
    assert [pa.get(log.append.remote(i)) for i in range(5)] == list(range(5))
    assert [pa.get(add_one.remote(i)) for i in range(5)] == list(range(1, 6))
    assert direct_calls() == before
    monkeypatch.undo()
    assert pa.get(log.append.remote(5)) == 5
    assert pa.get(log.read.remote()) == list(range(6))


def test_a_call_cancelled_before_the_wait_is_not_sent(pa_module, tmp_path):
    """cancel() then get() in one thread: get must not send the call itself (the cancel is
    still on its way to the IO thread)."""
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    pa.get(add_one.remote(0))  # an idle lease a direct call could take
    before = direct_calls()
    blockers = [gated.remote(str(tmp_path / f"b{i}"), str(gate), i) for i in range(2)]
    ref = exit_the_first_time.remote(str(marker))  # it would leave a marker if it ran
    pa.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pa.get(ref)
    gate.touch()
    assert pa.get(blockers) == [0, 1]
    # (the first blocker went out as it was made: the thread's calls were all waited for)
    assert direct_calls() == before + 1 and not marker.exists()


@pa.remote
def add_after(x, delay_s):
    time.sleep(delay_s)
    return x + 1


def test_threads_mixing_calls_waits_timeouts_and_cancels(pa_module):
    """Four threads, each a random mix of direct and ordinary calls, waits that time out and
    cancels: every value is right, nothing hangs, and each thread's actor calls run in the
    order it made them."""
    import random
    log = Log.remote()
    pa.get(log.read.remote())
    made: dict = {}
    errors = []

    def caller(name, seed):
        rng = random.Random(seed)
        mine = made[name] = []
        try:
            for i in range(150):
                op = rng.random()
                if op < 0.4:
                    assert pa.get(add_one.remote(i)) == i + 1
                elif op < 0.7:
                    ref = log.append.remote((name, i))
                    mine.append(i)
                    if rng.random() < 0.7:
                        assert pa.get(ref) == (name, i)
                elif op < 0.8:
                    ref = add_after.remote(i, 0.02)
                    try:
                        value = pa.get(ref, timeout=0.005)
                    except pa.GetTimeoutError:
                        value = pa.get(ref, timeout=30)
                    assert value == i + 1
                elif op < 0.9:
                    ref = add_after.remote(i, 0.05)
                    pa.cancel(ref)
                    try:  # cancelled, unless a slow machine let it finish first
                        assert pa.get(ref, timeout=30) == i + 1
                    except TaskCancelledError:
                        pass
                else:
                    ref = log.append.remote((name, i), 0.01)
                    mine.append(i)
                    try:
                        pa.get(ref, timeout=0.002)
                    except pa.GetTimeoutError:
                        pass
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
    threads = [threading.Thread(target=caller, args=(n, 1000 + n)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors[0]
    entries = pa.get(log.read.remote(), timeout=30)
    for name, mine in made.items():
        assert [i for n, i in entries if n == name] == mine


def test_a_call_right_after_kill_goes_to_the_next_incarnation(pa_module):
    """kill(no_restart=False), then a call at once from the same thread: it must go to the
    restarted process, not directly to the dead one (the kill is still on its way to the IO
    thread when the call is made)."""
    log = Log.options(max_restarts=5).remote()
    pa.get(log.read.remote())
    for round_ in range(5):
        pa.kill(log, no_restart=False)
        assert pa.get(log.append.remote(round_)) == round_
        assert pa.get(log.read.remote()) == [round_]  # a fresh process each time


def test_a_kill_answered_after_the_restart_keeps_the_connection_to_the_restart(pa_module):
    """The killed process's connection closed and the caller already reached the restarted one
    when kill()'s answer is handled: the caller keeps talking to the restart. (It used to drop
    that connection and wait for an incarnation after it, which never came: a hang seen on a
    loaded machine.)"""
    log = Log.options(max_restarts=5).remote()
    pa.get(log.read.remote())
    runtime = api.runtime_for_call()
    view = runtime.actors.actors[log._actor_id]
    killed = view.incarnation
    pa.kill(log, no_restart=False)
    assert pa.get(log.append.remote("after"), timeout=30) == "after"
    assert view.incarnation > killed
    # kill()'s answer for the old incarnation, handled only now
    runtime.actors.note_killed(log._actor_id)
    runtime.run_in_loop(runtime.actors.on_killed, log._actor_id, killed)
    assert pa.get(log.read.remote(), timeout=30) == ["after"]
    assert view.state == "alive"
