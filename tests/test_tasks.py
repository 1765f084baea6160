"""Remote functions from a user's point of view: submission, arguments, errors, retries, cancel,
nested tasks, and the synchronous API from threads and asyncio."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

import pyactor as pa
from helpers import identity, wait_for_file
from pyactor.exceptions import (GetTimeoutError, TaskCancelledError, TaskError,
                                WorkerCrashedError)

from conftest import process_alive, run_python, wait_until


@pa.remote
def add_one(x):
    return x + 1


def append_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------- submission and options
def test_remote_returns_an_object_ref_at_once(pa_module, tmp_path):
    """.remote() returns an ObjectRef without waiting for the task to run."""
    gate = tmp_path / "gate"
    ref = wait_for_file.remote(str(gate))
    assert isinstance(ref, pa.ObjectRef)
    ready, not_ready = pa.wait([ref], timeout=0)
    assert (ready, not_ready) == ([], [ref])
    gate.touch()
    assert pa.get(ref, timeout=30) == "gate"


def test_calling_a_remote_function_directly_is_a_type_error(pa_module):
    """Calling the decorated function like a plain one raises TypeError naming .remote()."""
    with pytest.raises(TypeError, match="remote"):
        add_one(1)


def test_options_override_num_returns_and_resources(pa_module):
    """.options() gives a variant with other options; the original keeps its own."""
    @pa.remote
    def pair():
        return 1, 2

    first, second = pair.options(num_returns=2, num_cpus=2).remote()
    assert pa.get([first, second]) == [1, 2]
    assert pa.get(pair.remote()) == (1, 2)


def test_unknown_option_is_rejected(pa_module):
    """A misspelled option fails at decoration time with ValueError."""
    with pytest.raises(ValueError, match="num_cpu"):
        pa.remote(num_cpu=1)(lambda: None)


def test_num_returns_gives_one_ref_per_value(pa_module):
    """num_returns=3 returns three refs, each resolving to its own element."""
    @pa.remote(num_returns=3)
    def three(x):
        return x, x * 2, x * 3

    refs = three.remote(5)
    assert len(refs) == 3
    assert pa.get(refs[2]) == 15
    assert pa.get(refs) == [5, 10, 15]


def test_num_returns_mismatch_is_an_error(pa_module):
    """A task returning fewer values than num_returns fails every return ref with ValueError."""
    @pa.remote(num_returns=2)
    def one():
        return (1,)

    refs = one.remote()
    for ref in refs:
        with pytest.raises(ValueError, match="num_returns=2"):
            pa.get(ref)


def test_kwargs_and_closures(pa_module):
    """Keyword arguments and functions closing over local values run remotely."""
    offset = 10

    @pa.remote
    def f(a, *, b=0):
        return a + b + offset

    assert pa.get(f.remote(1, b=2)) == 13


# ---------------------------------------------------------------------- arguments
def test_top_level_ref_argument_is_resolved_to_its_value(pa_module):
    """A ref passed as a top-level argument reaches the task as its value."""
    @pa.remote
    def kind(x):
        return type(x).__name__, x

    assert pa.get(kind.remote(add_one.remote(1))) == ("int", 2)
    assert pa.get(kind.remote(pa.put([1, 2]))) == ("list", [1, 2])
    assert pa.get(add_one.remote(x=add_one.remote(0))) == 2


def test_dependent_task_starts_only_after_its_argument_is_ready(pa_module, tmp_path):
    """A task is not dispatched until its ref arguments are ready (recorded event order)."""
    log = tmp_path / "events"
    gate = tmp_path / "gate"

    @pa.remote
    def producer(log, gate):
        while not os.path.exists(gate):
            time.sleep(0.01)
        append_line(log, "producer-done")
        return 7

    @pa.remote
    def consumer(log, value):
        append_line(log, "consumer-start")
        return value * 2

    ref = consumer.remote(str(log), producer.remote(str(log), str(gate)))
    # The consumer must not run (nor hold a worker) while the producer waits: another task
    # still completes meanwhile on the pool's second CPU.
    assert pa.get(add_one.remote(1), timeout=30) == 2
    gate.touch()
    assert pa.get(ref, timeout=30) == 14
    assert read_lines(log) == ["producer-done", "consumer-start"]


def test_refs_nested_in_containers_arrive_as_refs(pa_module):
    """Refs inside a list or dict reach the task as ObjectRefs that it can pa.get."""
    @pa.remote
    def inspect_nested(items, mapping):
        assert all(isinstance(r, pa.ObjectRef) for r in items)
        assert isinstance(mapping["r"], pa.ObjectRef)
        return pa.get(items) + [pa.get(mapping["r"])]

    items = [add_one.remote(1), pa.put(10)]
    assert pa.get(inspect_nested.remote(items, {"r": add_one.remote(99)})) == [2, 10, 100]


def test_unpicklable_argument_raises_at_the_call_site(pa_module):
    """An argument that cannot be pickled makes .remote() raise TypeError (no task, no hang)."""
    with pytest.raises(TypeError, match="serialize"):
        add_one.remote(threading.Lock())


def test_unpicklable_result_raises_from_get(pa_module):
    """A result that cannot be pickled fails the task: get raises a TaskError, not a hang."""
    @pa.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(TaskError, match="pickle"):
        pa.get(returns_lock.remote(), timeout=30)


# ---------------------------------------------------------------------- errors
class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def test_task_error_is_both_task_error_and_the_original_class(pa_module):
    """get re-raises a remote ValueError as an instance of TaskError and ValueError, with the
    remote traceback in its message."""
    @pa.remote
    def fails_deep_inside():
        raise ValueError("bad input 42")

    with pytest.raises(ValueError) as info:
        pa.get(fails_deep_inside.remote())
    error = info.value
    assert isinstance(error, TaskError)
    assert "bad input 42" in str(error)
    assert "Traceback" in str(error) and "fails_deep_inside" in str(error)


def test_custom_exception_keeps_its_class_and_attributes(pa_module):
    """A user-defined exception class can be caught by its class and keeps its attributes."""
    @pa.remote
    def fails():
        raise CustomError("custom", code=7)

    with pytest.raises(CustomError) as info:
        pa.get(fails.remote())
    assert isinstance(info.value, TaskError)
    assert info.value.code == 7


def test_task_depending_on_a_failed_task_fails_with_the_original_error(pa_module):
    """A task whose argument failed fails with that argument's error, without running."""
    @pa.remote
    def fails():
        raise KeyError("root cause")

    failed = fails.remote()
    dependent = add_one.remote(add_one.remote(failed))
    with pytest.raises(KeyError, match="root cause"):
        pa.get(dependent, timeout=30)


def test_get_of_a_list_raises_the_error_of_a_failed_element(pa_module):
    """get on a list raises if any element failed."""
    @pa.remote
    def fails():
        raise RuntimeError("one of many")

    with pytest.raises(RuntimeError, match="one of many"):
        pa.get([add_one.remote(1), fails.remote(), add_one.remote(2)], timeout=30)


# ---------------------------------------------------------------------- get timeout
def test_get_timeout_raises_get_timeout_error_which_is_a_timeout_error(pa_module, tmp_path):
    """get(timeout=) gives up with GetTimeoutError (also a TimeoutError); the task goes on."""
    gate = tmp_path / "gate"
    ref = wait_for_file.remote(str(gate))
    with pytest.raises(GetTimeoutError):
        pa.get(ref, timeout=0.05)
    with pytest.raises(TimeoutError):
        pa.get([ref], timeout=0)
    gate.touch()
    assert pa.get(ref, timeout=30) == "gate"


def test_get_rejects_bad_arguments(pa_module):
    """get with a non-ref, or a negative timeout, raises TypeError / ValueError."""
    with pytest.raises(TypeError):
        pa.get(1)
    with pytest.raises(TypeError):
        pa.get([pa.put(1), 2])
    with pytest.raises(ValueError):
        pa.get(pa.put(1), timeout=-1)


# ---------------------------------------------------------------------- nested tasks
@pa.remote
def fib(n):
    if n < 2:
        return n
    return sum(pa.get([fib.remote(n - 1), fib.remote(n - 2)]))


def test_tasks_submitted_from_tasks_do_not_deadlock_the_pool(pa_module):
    """With 2 CPUs, a recursive task tree of depth 4+ completes: blocked workers lend CPUs."""
    assert pa.get(fib.remote(5), timeout=60) == 5


def test_ref_returned_from_a_task_is_usable_by_the_driver(pa_module):
    """A task may return a ref to a task it submitted; the driver can get through it."""
    @pa.remote
    def submit_inner():
        return [add_one.remote(41)]

    (inner,) = pa.get(submit_inner.remote(), timeout=30)
    assert pa.get(inner, timeout=30) == 42


# ---------------------------------------------------------------------- cancel
def test_cancel_queued_task_drops_it(pa_module, tmp_path):
    """Cancelling a task that has not started: it never runs and get raises TaskCancelledError."""
    gate = tmp_path / "gate"
    log = tmp_path / "ran"

    @pa.remote
    def record(log):
        append_line(log, "ran")

    blockers = [wait_for_file.remote(str(gate)) for _ in range(2)]
    queued = record.remote(str(log))
    pa.cancel(queued)
    gate.touch()
    with pytest.raises(TaskCancelledError):
        pa.get(queued, timeout=30)
    pa.get(blockers, timeout=30)
    assert pa.get(record.remote(str(log)), timeout=30) is None
    assert read_lines(log) == ["ran"]  # only the second record ran


def test_cancel_running_task_interrupts_it(pa_module, tmp_path):
    """Cancelling a running task interrupts it; get raises TaskCancelledError; the worker
    survives to run more tasks."""
    started = tmp_path / "started"

    @pa.remote
    def long_running(started):
        append_line(started, "x")
        time.sleep(60)

    ref = long_running.remote(str(started))
    assert wait_until(started.exists, 30)
    pa.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pa.get(ref, timeout=30)
    assert pa.get(add_one.remote(1), timeout=30) == 2


def test_force_cancel_kills_the_worker(pa_module, tmp_path):
    """cancel(force=True) kills the worker running the task; get raises TaskCancelledError and
    is not retried."""
    started = tmp_path / "started"

    @pa.remote(max_retries=3)
    def stubborn(started):
        append_line(started, str(os.getpid()))
        while True:
            try:
                time.sleep(60)
            except BaseException:
                pass

    ref = stubborn.remote(str(started))
    assert wait_until(lambda: read_lines(started), 30)  # the pid is written, not just the file
    (pid,) = read_lines(started)
    pa.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        pa.get(ref, timeout=30)
    assert wait_until(lambda: not process_alive(int(pid)), 10)
    assert read_lines(started) == [pid]  # not retried
    assert pa.get(add_one.remote(1), timeout=30) == 2


def test_cancel_finished_task_keeps_its_value(pa_module):
    """Cancelling a task that already finished changes nothing."""
    ref = add_one.remote(1)
    assert pa.get(ref) == 2
    pa.cancel(ref)
    assert pa.get(add_one.remote(ref), timeout=30) == 3
    assert pa.get(ref) == 2


# ---------------------------------------------------------------------- retries
def test_worker_crash_is_retried_up_to_max_retries(pa_module, tmp_path):
    """A task whose worker dies (os._exit) is re-run on a new worker until it succeeds."""
    attempts = tmp_path / "attempts"

    @pa.remote(max_retries=3)
    def crash_twice(path):
        append_line(path, "x")
        if len(read_lines(path)) < 3:
            os._exit(1)
        return "survived"

    assert pa.get(crash_twice.remote(str(attempts)), timeout=60) == "survived"
    assert len(read_lines(attempts)) == 3


def test_worker_crash_past_max_retries_raises_worker_crashed_error(pa_module, tmp_path):
    """When every attempt crashes, get raises WorkerCrashedError after 1 + max_retries runs."""
    attempts = tmp_path / "attempts"

    @pa.remote(max_retries=1)
    def always_crash(path):
        append_line(path, "x")
        os._exit(1)

    with pytest.raises(WorkerCrashedError):
        pa.get(always_crash.remote(str(attempts)), timeout=60)
    assert len(read_lines(attempts)) == 2
    assert pa.get(add_one.remote(1), timeout=30) == 2  # the pool recovered


def test_exceptions_are_not_retried_by_default(pa_module, tmp_path):
    """Without retry_exceptions a raising task runs once."""
    attempts = tmp_path / "attempts"

    @pa.remote(max_retries=3)
    def raises(path):
        append_line(path, "x")
        raise ValueError("once")

    with pytest.raises(ValueError):
        pa.get(raises.remote(str(attempts)), timeout=30)
    assert len(read_lines(attempts)) == 1


def test_retry_exceptions_reruns_a_raising_task(pa_module, tmp_path):
    """retry_exceptions=True re-runs a task that raised, up to max_retries, then gives the
    last error."""
    attempts = tmp_path / "attempts"

    @pa.remote(max_retries=3, retry_exceptions=True)
    def flaky(path, succeed_at):
        append_line(path, "x")
        n = len(read_lines(path))
        if n < succeed_at:
            raise ValueError(f"attempt {n}")
        return n

    assert pa.get(flaky.remote(str(attempts), 3), timeout=30) == 3
    attempts.unlink()
    with pytest.raises(ValueError, match="attempt 4"):
        pa.get(flaky.remote(str(attempts), 100), timeout=30)
    assert len(read_lines(attempts)) == 4


def test_retry_exceptions_list_retries_only_those_classes(pa_module, tmp_path):
    """retry_exceptions=[ValueError] retries a ValueError but not a KeyError (as in Ray)."""
    attempts = tmp_path / "attempts"

    @pa.remote(max_retries=2, retry_exceptions=[ValueError])
    def raises(path, error_class):
        append_line(path, "x")
        raise error_class("boom")

    with pytest.raises(ValueError):
        pa.get(raises.remote(str(attempts), ValueError), timeout=30)
    assert len(read_lines(attempts)) == 3
    attempts.unlink()
    with pytest.raises(KeyError):
        pa.get(raises.remote(str(attempts), KeyError), timeout=30)
    assert len(read_lines(attempts)) == 1
    with pytest.raises(TypeError, match="retry_exceptions"):
        raises.options(retry_exceptions=["ValueError"])


def test_cancel_task_waiting_for_its_arguments(pa_module, tmp_path):
    """A task still waiting for a ref argument can be cancelled; it never runs."""
    gate = tmp_path / "gate"
    log = tmp_path / "ran"

    @pa.remote
    def record(log, _value):
        append_line(log, "ran")

    dependent = record.remote(str(log), wait_for_file.remote(str(gate)))
    pa.cancel(dependent)
    with pytest.raises(TaskCancelledError):
        pa.get(dependent, timeout=30)
    gate.touch()
    assert pa.get(record.remote(str(log), 0), timeout=30) is None
    assert read_lines(log) == ["ran"]


def test_cancel_task_blocked_in_get_interrupts_it(pa_module, tmp_path):
    """A running task blocked in pa.get on a child is interrupted by cancel."""
    gate = tmp_path / "gate"

    started = tmp_path / "started"

    @pa.remote
    def parent(gate, started):
        child = wait_for_file.remote(gate)
        append_line(started, "x")
        return pa.get(child)

    ref = parent.remote(str(gate), str(started))
    assert wait_until(started.exists, 30)
    pa.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pa.get(ref, timeout=30)
    gate.touch()
    assert pa.get(add_one.remote(1), timeout=30) == 2


# ---------------------------------------------------------------------- threads and asyncio
def test_many_threads_submit_and_get_concurrently(pa_module):
    """Several threads submitting and getting at once each see their own results."""
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(thread_index):
        try:
            refs = [identity.remote((thread_index, i)) for i in range(100)]
            results[thread_index] = pa.get(refs, timeout=60)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == {t: [(t, i) for i in range(100)] for t in range(4)}


async def test_await_ref_inside_asyncio(pa_module):
    """`await ref` and asyncio.gather(*refs) give values inside a running event loop."""
    assert await add_one.remote(1) == 2
    assert await asyncio.gather(*[add_one.remote(i) for i in range(10)]) == list(range(1, 11))


async def test_await_ref_raises_the_task_error(pa_module):
    """Awaiting a failed task raises the same dual-class error as get."""
    @pa.remote
    def fails():
        raise ZeroDivisionError("nope")

    with pytest.raises(ZeroDivisionError) as info:
        await fails.remote()
    assert isinstance(info.value, TaskError)


async def test_await_ready_refs_arrays_and_one_ref_twice(pa_module):
    """A ref that is already resolved, a value in the store, and one ref awaited by two
    coroutines at once all give their values."""
    ready = pa.put(7)
    assert await ready == 7
    big = pa.put(np.arange(100_000))
    assert int((await big)[-1]) == 99_999
    ref = add_one.remote(41)
    assert await asyncio.gather(ref, ref) == [42, 42]


async def test_cancelling_an_await_cancels_the_task_unless_shielded(pa_module, tmp_path):
    """Cancelling a coroutine that awaits a ref cancels the remote task (asyncio-native
    cancellation); behind asyncio.shield only the wait is cancelled and the ref stays usable."""
    gate = tmp_path / "gate"
    shielded = wait_for_file.remote(str(gate))
    waiter = asyncio.ensure_future(asyncio.shield(_await(shielded)))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.touch()
    assert await shielded == "gate"

    cancelled = wait_for_file.remote(str(tmp_path / "never"))
    waiter = asyncio.ensure_future(_await(cancelled))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    with pytest.raises(pa.TaskCancelledError):
        await cancelled


async def _await(ref):
    return await ref


def test_await_from_a_loop_in_another_thread(pa_module):
    """Each awaiting loop gets its own completions, also loops in other threads."""
    results = []

    def run_loop(offset):
        async def main():
            return await asyncio.gather(*[add_one.remote(offset + i) for i in range(50)])
        results.append(asyncio.run(main()))
    threads = [threading.Thread(target=run_loop, args=(100 * t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [[100 * t + i + 1 for i in range(50)] for t in range(3)]


async def test_sync_api_works_inside_a_running_loop(pa_module):
    """pa.get / pa.put / pa.wait may be called from a coroutine (they block the loop)."""
    ref = pa.put(5)
    assert pa.get(add_one.remote(ref)) == 6
    ready, _ = pa.wait([ref], timeout=10)
    assert ready == [ref]


def test_ref_future_completes_with_the_value(pa_module):
    """ref.future() is a concurrent.futures.Future resolving to the value (or the error)."""
    assert add_one.remote(1).future().result(timeout=30) == 2

    @pa.remote
    def fails():
        raise ValueError("in future")

    with pytest.raises(ValueError, match="in future"):
        fails.remote().future().result(timeout=30)


# ---------------------------------------------------------------------- output
def test_worker_stdout_reaches_the_driver_with_its_pid(pa_module, capfd):
    """What a task prints appears on the driver's stdout, prefixed with (pid=...)."""
    @pa.remote
    def shout(text):
        print(text)
        return os.getpid()

    pid = pa.get(shout.remote("hello-from-a-task-7731"), timeout=30)
    seen = []

    def printed():
        seen.append(capfd.readouterr().out)
        return "hello-from-a-task-7731" in "".join(seen)

    assert wait_until(printed, 10)
    line = next(l for l in "".join(seen).splitlines() if "hello-from-a-task-7731" in l)
    assert f"pid={pid}" in line and line.startswith("(")


def test_plain_script_runs_tasks_and_prints_worker_output():
    """A plain script (no pa.init call) runs tasks, and worker output reaches its stdout
    prefixed with the worker's pid."""

    script = (
        "import io, sys, time\n"
        "import pyactor as pa\n"
        "@pa.remote\n"
        "def f(x):\n"
        "    print('task-says', x)\n"
        "    return x * 2\n"
        "captured = sys.stdout = io.StringIO()\n"
        "values = pa.get([f.remote(i) for i in range(3)])\n"
        # worker output travels through the node: poll for it (another process's output)
        "deadline = time.monotonic() + 10\n"
        "while captured.getvalue().count('task-says') < 3 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "sys.stdout = sys.__stdout__\n"
        "print('result', values)\n"
        "print(captured.getvalue())\n"
    )
    result = run_python(script, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert "result [0, 2, 4]" in result.stdout
    lines = [l for l in result.stdout.splitlines() if "task-says" in l]
    assert len(lines) == 3 and all(l.startswith("(pid=") for l in lines), result.stdout


@pa.remote
class Signal:
    def __init__(self):
        self.is_set = False

    def set(self):
        self.is_set = True

    def check(self):
        return self.is_set


@pa.remote
def wait_for_signal(signal):
    """Blocks (in get, polling) until the signal is set."""
    deadline = time.monotonic() + 30
    while not pa.get(signal.check.remote()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pa.get(signal.check.remote())


@pa.remote
def set_signal(signal):
    pa.get(signal.set.remote())
    return True


def test_tasks_pipelined_behind_a_blocked_task_are_taken_back(pa_fresh):
    """A task blocked in get on one CPU cannot wait on a task queued behind it on its worker:
    the owner takes back what it pipelined there and runs it on a worker the node starts."""
    pa_fresh.init(num_cpus=1, object_store_memory=64 << 20)
    signal = Signal.remote()
    waiter = wait_for_signal.remote(signal)
    setter = set_signal.remote(signal)
    fillers = [add_one.remote(i) for i in range(40)]  # keep lease requests busy: pipelining
    assert pa_fresh.get(waiter, timeout=60) is True
    assert pa_fresh.get(setter, timeout=60) is True
    assert pa_fresh.get(fillers, timeout=60) == list(range(1, 41))


@pa.remote
class RefBox:
    def __init__(self):
        self.refs = []

    def put(self, refs):
        self.refs = refs

    def get(self):
        return self.refs


@pa.remote
def sleepy_child():
    time.sleep(60)
    return "child finished"


@pa.remote
def parent_of_a_sleepy_child(box):
    child = sleepy_child.remote()
    pa.get(box.put.remote([child]))  # nested: the box holds the ref itself
    return pa.get(child)


def test_cancel_is_recursive_by_default(pa_module):
    """Cancelling a task cancels the tasks it submitted (recursive=True, as in Ray)."""
    box = RefBox.remote()
    parent = parent_of_a_sleepy_child.remote(box)
    assert wait_until(lambda: pa_module.get(box.get.remote()), 30)
    (child,) = pa_module.get(box.get.remote())
    pa_module.cancel(parent)
    with pytest.raises(TaskCancelledError):
        pa_module.get(parent, timeout=30)
    with pytest.raises(TaskCancelledError):
        pa_module.get(child, timeout=30)


def test_cancel_with_recursive_false_leaves_children_running(pa_module, tmp_path):
    """recursive=False cancels only the task itself; its children run on (and a borrower can
    still cancel them: the request goes to their owner)."""
    box = RefBox.remote()
    parent = parent_of_a_sleepy_child.remote(box)
    assert wait_until(lambda: pa_module.get(box.get.remote()), 30)
    (child,) = pa_module.get(box.get.remote())
    pa_module.cancel(parent, recursive=False)
    with pytest.raises(TaskCancelledError):
        pa_module.get(parent, timeout=30)
    ready, _ = pa_module.wait([child], timeout=1.0)
    assert ready == []  # still running (it sleeps 60 s)
    pa_module.cancel(child)  # a ref we only borrow: the cancel goes to its owner
    with pytest.raises(TaskCancelledError):
        pa_module.get(child, timeout=30)


def test_refs_nested_in_arguments_do_not_delay_dispatch(pa_module, tmp_path):
    """A task whose argument only *contains* a pending ref runs at once (it gets the ref)."""
    gate = tmp_path / "gate"
    pending = wait_for_file.remote(str(gate))

    @pa.remote
    def takes_nested(refs):
        return type(refs[0]).__name__

    assert pa_module.get(takes_nested.remote([pending]), timeout=30) == "ObjectRef"
    gate.touch()
    assert pa_module.get(pending, timeout=30) == "gate"
