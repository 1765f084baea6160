"""Actors from a user's point of view: mailboxes, handles, concurrency, names, restarts, kill.

Most tests share one 2-CPU node (`pa_module`); tests that kill processes, hold CPUs or need a
second driver get their own (`pa_fresh`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time

import pytest

import pyactor as pa
from pyactor.exceptions import ActorDiedError

from conftest import process_alive, run_python, wait_until

GET_TIMEOUT_S = 30  # a bound so that a bug fails the test instead of hanging it


# ---------------------------------------------------------------------- actor classes
@pa.remote
class Recorder:
    def __init__(self, start=0):
        self.log = []
        self.start = start

    def add(self, item):
        self.log.append(item)
        return len(self.log) + self.start

    def items(self):
        return list(self.log)

    def pid(self):
        return os.getpid()


@pa.remote
def call_recorder(handle, item):
    return pa.get(handle.add.remote(item))


@pa.remote
class Forwarder:
    """An actor that calls another actor it was given."""

    def __init__(self, target):
        self.target = target

    def forward(self, item):
        return pa.get(self.target.add.remote(item))


def _get(refs):
    return pa.get(refs, timeout=GET_TIMEOUT_S)


def _call_after_crash(method):
    """The first successful result of `method.remote()` after a crash from outside: calls sent
    before this caller noticed the crash were in flight, and fail with ActorDiedError."""
    results = []

    def attempt():
        try:
            results.append(_get(method.remote()))
        except ActorDiedError:
            return False
        return True
    assert wait_until(attempt)
    return results[0]


# ---------------------------------------------------------------------- mailbox and handles
def test_calls_from_one_caller_run_in_send_order(pa_module):
    """Thousands of calls from one caller run in exactly the order they were sent."""
    recorder = Recorder.remote()
    refs = [recorder.add.remote(i) for i in range(3000)]
    assert _get(refs) == list(range(1, 3001))
    assert _get(recorder.items.remote()) == list(range(3000))


def test_each_actor_runs_in_its_own_process(pa_module):
    """Two actors of one class live in two distinct processes, neither of them the driver."""
    a, b = Recorder.remote(), Recorder.remote()
    pids = _get([a.pid.remote(), b.pid.remote()])
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_constructor_arguments_reach_init(pa_module):
    """Arguments of .remote(...) on the class are passed to __init__, refs resolved to values."""
    recorder = Recorder.remote(pa.put(100))
    assert _get(recorder.add.remote("x")) == 101


def test_handle_passed_to_task_can_call_methods(pa_module):
    """A task that receives a handle calls methods on the same actor."""
    recorder = Recorder.remote()
    assert sorted(_get([call_recorder.remote(recorder, i) for i in range(3)])) == [1, 2, 3]
    assert sorted(_get(recorder.items.remote())) == [0, 1, 2]


def test_actor_calls_another_actor(pa_module):
    """An actor holding a handle to another actor calls it and gets its results."""
    recorder = Recorder.remote()
    forwarder = Forwarder.remote(recorder)
    assert _get([forwarder.forward.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]
    assert _get(recorder.items.remote()) == [0, 1, 2, 3, 4]


@pa.remote
def wait_for_file(path):
    """Returns once `path` exists (another process creates it): a task whose end we control."""
    import time
    while not os.path.exists(path):
        time.sleep(0.005)
    return "from task"


@pa.remote
def raise_key_error():
    raise KeyError("upstream")


def test_call_waiting_for_a_ref_holds_back_later_calls(pa_module, tmp_path):
    """A call whose ref argument is not ready yet still runs before the calls sent after it."""
    recorder = Recorder.remote()
    gate = str(tmp_path / "gate")
    first = recorder.add.remote(wait_for_file.remote(gate))
    second = recorder.add.remote("sent second")
    open(gate, "w").close()
    _get([first, second])
    assert _get(recorder.items.remote()) == ["from task", "sent second"]


def test_call_with_failed_ref_argument_fails_with_its_error(pa_module):
    """A call whose ref argument failed raises that error; later calls still run."""
    recorder = Recorder.remote()
    with pytest.raises(KeyError, match="upstream"):
        _get(recorder.add.remote(raise_key_error.remote()))
    assert _get(recorder.add.remote("next")) == 1


def test_cancelling_a_call_waiting_for_its_argument_unblocks_the_queue(pa_module, tmp_path):
    """Cancelling a call that waits for a ref argument lets the calls behind it run."""
    recorder = Recorder.remote()
    gate = str(tmp_path / "gate")
    waiting = recorder.add.remote(wait_for_file.remote(gate))
    pa.cancel(waiting)
    assert _get(recorder.add.remote("behind")) == 1
    with pytest.raises(pa.TaskCancelledError):
        _get(waiting)
    open(gate, "w").close()
    assert _get(recorder.items.remote()) == ["behind"]


def test_actor_created_in_a_task_is_usable_by_the_driver(pa_module):
    """A task may create an actor and return its handle; the driver then calls it."""
    @pa.remote
    def make_recorder():
        recorder = Recorder.remote()
        pa.get(recorder.add.remote("made in task"))
        return recorder

    recorder = _get(make_recorder.remote())
    assert _get(recorder.items.remote()) == ["made in task"]


def test_method_error_is_raised_and_actor_lives_on(pa_module):
    """An exception in a method reaches the caller as itself; the actor keeps serving."""
    @pa.remote
    class Fragile:
        def fail(self):
            raise KeyError("missing")

        def ok(self):
            return "ok"

    actor = Fragile.remote()
    with pytest.raises(KeyError, match="missing"):
        _get(actor.fail.remote())
    assert _get(actor.ok.remote()) == "ok"


def test_unknown_method_is_an_attribute_error(pa_module):
    """Calling a method the class does not define fails at once, on the caller's side."""
    recorder = Recorder.remote()
    with pytest.raises(AttributeError, match="nope"):
        recorder.nope.remote()


def test_init_error_surfaces_on_first_call(pa_module):
    """A failing __init__ makes calls raise ActorDiedError carrying the original traceback."""
    @pa.remote
    class Broken:
        def __init__(self):
            self.explode_in_init()

        def explode_in_init(self):
            raise ZeroDivisionError("bad init")

        def method(self):
            return 1

    actor = Broken.remote()
    with pytest.raises(ActorDiedError) as info:
        _get(actor.method.remote())
    message = str(info.value)
    assert "ZeroDivisionError: bad init" in message
    assert "explode_in_init" in message  # the remote traceback, not just the message
    with pytest.raises(ActorDiedError):
        _get(actor.method.remote())


def test_many_actors_on_two_cpus(pa_module):
    """Ten actors (num_cpus=0 by default) all run at once on a 2-CPU node."""
    actors = [Recorder.remote() for _ in range(10)]
    assert _get([a.add.remote(i) for i, a in enumerate(actors)]) == [1] * 10
    assert _get([a.items.remote() for a in actors]) == [[i] for i in range(10)]


# ---------------------------------------------------------------------- num_returns
def test_num_returns_from_method_decorator(pa_module):
    """@pa.method(num_returns=2) makes a call return two refs, one per value."""
    @pa.remote
    class Splitter:
        @pa.method(num_returns=2)
        def split(self, x):
            return x, x * 2

    splitter = Splitter.remote()
    first, second = splitter.split.remote(21)
    assert _get([first, second]) == [21, 42]


def test_num_returns_from_call_options(pa_module):
    """.options(num_returns=3) on a method call returns three refs; 1 returns a single ref."""
    @pa.remote
    class Triple:
        def three(self):
            return ("a", "b", "c")

    actor = Triple.remote()
    refs = actor.three.options(num_returns=3).remote()
    assert _get(list(refs)) == ["a", "b", "c"]
    single = actor.three.options(num_returns=1).remote()
    assert isinstance(single, pa.ObjectRef) and _get(single) == ("a", "b", "c")


# ---------------------------------------------------------------------- concurrency
def test_async_actor_runs_calls_concurrently(pa_module):
    """N async calls that each wait for an event set by the N-th call all complete."""
    @pa.remote
    class Gathering:
        def __init__(self):
            self.arrived = 0
            self.all_here = None

        async def meet(self, n):
            if self.all_here is None:
                self.all_here = asyncio.Event()
            self.arrived += 1
            if self.arrived == n:
                self.all_here.set()
            await self.all_here.wait()
            return self.arrived

    actor = Gathering.remote()
    assert _get([actor.meet.remote(20) for _ in range(20)]) == [20] * 20


def test_async_actor_max_concurrency_caps_running_calls(pa_module):
    """With max_concurrency=2, calls meet in pairs and never more than two run at once."""
    @pa.remote(max_concurrency=2)
    class Pairs:
        def __init__(self):
            self.running = 0
            self.peak = 0
            self.entered = 0
            self.changed = None

        async def pair_up(self):
            if self.changed is None:
                self.changed = asyncio.Condition()
            async with self.changed:
                ticket = self.entered
                self.entered += 1
                self.running += 1
                self.peak = max(self.peak, self.running)
                self.changed.notify_all()
                # Wait for this call's partner: only possible if two calls run at once.
                await self.changed.wait_for(lambda: self.entered >= (ticket // 2 + 1) * 2)
                self.running -= 1
            return ticket

        async def peak_running(self):
            return self.peak

    actor = Pairs.remote()
    assert sorted(_get([actor.pair_up.remote() for _ in range(8)])) == list(range(8))
    assert _get(actor.peak_running.remote()) == 2


def test_threaded_actor_runs_sync_methods_in_parallel(pa_module):
    """A sync actor with max_concurrency=3 runs three calls at once (they meet at a barrier)."""
    @pa.remote(max_concurrency=3)
    class Threaded:
        def __init__(self):
            self.barrier = threading.Barrier(3, timeout=GET_TIMEOUT_S)

        def meet(self):
            self.barrier.wait()
            return threading.current_thread().name

    actor = Threaded.remote()
    names = _get([actor.meet.remote() for _ in range(3)])
    assert len(set(names)) == 3


def test_async_method_awaits_task_ref(pa_module):
    """An async actor method can `await` the ref of a task it submitted."""
    @pa.remote
    def square(x):
        return x * x

    @pa.remote
    class Summer:
        async def sum_squares(self, n):
            values = [await square.remote(i) for i in range(n)]
            return sum(values)

    actor = Summer.remote()
    assert _get(actor.sum_squares.remote(5)) == 0 + 1 + 4 + 9 + 16


@pa.remote(max_restarts=1)
class AsyncCounter:
    def __init__(self):
        self.count = 0

    async def inc(self):
        self.count += 1
        return self.count

    @pa.method(num_returns=2)
    async def pair(self):
        return "left", "right"

    async def fail(self):
        raise LookupError("async failure")

    def pid(self):
        return os.getpid()


def test_async_method_error_and_num_returns(pa_module):
    """An async method's exception reaches the caller; num_returns works on async methods."""
    actor = AsyncCounter.remote()
    with pytest.raises(LookupError, match="async failure"):
        _get(actor.fail.remote())
    left, right = actor.pair.remote()
    assert _get([left, right]) == ["left", "right"]


def test_async_actor_restarts_after_crash(pa_module):
    """A crashed async actor with max_restarts comes back with fresh state and a running loop."""
    actor = AsyncCounter.remote()
    assert _get([actor.inc.remote() for _ in range(3)]) == [1, 2, 3]
    old_pid = _get(actor.pid.remote())
    os.kill(old_pid, signal.SIGKILL)
    assert _call_after_crash(actor.inc) == 1
    assert _get(actor.pid.remote()) != old_pid


# ---------------------------------------------------------------------- names and namespaces
def test_named_actor_fetched_by_name(pa_module):
    """get_actor(name, namespace) returns a handle to the same actor."""
    original = Recorder.options(name="fetch-me", namespace="ns-a").remote()
    _get(original.add.remote("first"))
    fetched = pa.get_actor("fetch-me", namespace="ns-a")
    assert fetched == original
    assert _get(fetched.add.remote("second")) == 2
    assert _get(original.items.remote()) == ["first", "second"]


def test_names_are_scoped_by_namespace(pa_module):
    """One name in two namespaces names two actors; a name is not found in another namespace."""
    one = Recorder.options(name="shared-name", namespace="ns-1").remote()
    two = Recorder.options(name="shared-name", namespace="ns-2").remote()
    assert one != two
    _get([one.add.remote(1), two.add.remote(2)])
    assert _get(pa.get_actor("shared-name", namespace="ns-2").items.remote()) == [2]
    with pytest.raises(ValueError, match="shared-name"):
        pa.get_actor("shared-name", namespace="ns-3")


def test_default_namespace_is_used_for_names(pa_module):
    """A name given without a namespace is found by get_actor without a namespace."""
    actor = Recorder.options(name="in-default-ns").remote()
    assert pa.get_actor("in-default-ns") == actor


def test_actor_code_uses_its_creators_namespace(pa_module):
    """get_actor(name) without a namespace, inside an actor, looks in its creator's namespace."""
    @pa.remote
    class Finder:
        def add_to(self, name, item):
            return pa.get(pa.get_actor(name).add.remote(item))

    target = Recorder.options(name="found-from-actor").remote()
    assert _get(Finder.remote().add_to.remote("found-from-actor", "hi")) == 1
    assert _get(target.items.remote()) == ["hi"]


def test_duplicate_name_is_rejected(pa_module):
    """Creating a second actor with a taken name raises ValueError."""
    Recorder.options(name="taken", namespace="ns-dup").remote()
    with pytest.raises(ValueError, match="taken"):
        Recorder.options(name="taken", namespace="ns-dup").remote()


def test_get_if_exists_returns_the_existing_actor(pa_module):
    """get_if_exists=True returns the living actor of that name instead of a new one."""
    first = Recorder.options(name="singleton", namespace="ns-gie", get_if_exists=True).remote()
    _get(first.add.remote("a"))
    second = Recorder.options(name="singleton", namespace="ns-gie", get_if_exists=True).remote()
    assert second == first
    _get(second.add.remote("b"))
    assert _get(first.items.remote()) == ["a", "b"]


def test_get_actor_of_unknown_name_raises(pa_module):
    """get_actor of a name nobody took raises ValueError."""
    with pytest.raises(ValueError, match="nobody"):
        pa.get_actor("nobody", namespace="ns-empty")


# ---------------------------------------------------------------------- kill
def test_kill_makes_later_calls_raise_actor_died(pa_module):
    """After pa.kill, calls raise ActorDiedError and the actor's process is gone."""
    recorder = Recorder.remote()
    pid = _get(recorder.pid.remote())
    pa.kill(recorder)
    assert wait_until(lambda: not process_alive(pid))
    with pytest.raises(ActorDiedError):
        _get(recorder.add.remote(1))


def test_kill_frees_the_name(pa_module):
    """A killed named actor's name is free: get_actor fails, a new actor may take it."""
    actor = Recorder.options(name="reusable", namespace="ns-kill").remote()
    _get(actor.add.remote(1))
    pa.kill(actor)
    with pytest.raises(ValueError):
        pa.get_actor("reusable", namespace="ns-kill")
    again = Recorder.options(name="reusable", namespace="ns-kill", get_if_exists=True).remote()
    assert again != actor and _get(again.add.remote(3)) == 1
    with pytest.raises(ActorDiedError):
        _get(actor.add.remote(2))


def test_kill_with_restart_reruns_init(pa_module):
    """pa.kill(no_restart=False) restarts an actor with max_restarts: a new process, fresh state."""
    recorder = Recorder.options(max_restarts=1).remote()
    _get(recorder.add.remote("before"))
    old_pid = _get(recorder.pid.remote())
    pa.kill(recorder, no_restart=False)
    assert wait_until(lambda: not process_alive(old_pid))
    new_pid = _get(recorder.pid.remote())
    assert new_pid != old_pid
    assert _get(recorder.items.remote()) == []  # __init__ ran again


def test_kill_rejects_non_handles(pa_module):
    """pa.kill of something other than an actor handle raises TypeError."""
    with pytest.raises(TypeError):
        pa.kill("not an actor")


# ---------------------------------------------------------------------- restarts
@pa.remote
class Blocker:
    def __init__(self):
        self.inits = 1

    def pid(self):
        return os.getpid()

    def block_first_time(self, marker):
        """Blocks forever in the first incarnation that sees no marker; returns after that."""
        if os.path.exists(marker):
            return "retried"
        with open(marker, "w"):
            pass
        threading.Event().wait()

    def state(self):
        return self.inits


def test_killed_process_is_restarted_and_init_reruns(pa_module):
    """SIGKILL from outside restarts an actor with max_restarts: new pid, __init__ run again."""
    recorder = Recorder.options(max_restarts=2).remote()
    _get(recorder.add.remote("lost"))
    old_pid = _get(recorder.pid.remote())
    os.kill(old_pid, signal.SIGKILL)
    new_pid = _call_after_crash(recorder.pid)
    assert new_pid != old_pid
    assert _get(recorder.items.remote()) == []


def test_restarted_actor_gets_its_constructor_arguments_again(pa_module):
    """__init__ of a restarted actor gets the original arguments, a large stored one included."""
    @pa.remote(max_restarts=1)
    class Holder:
        def __init__(self, blob, tag):
            self.summary = (len(blob), blob[:3], tag)

        def get(self):
            return self.summary

        def pid(self):
            return os.getpid()

    blob = bytes(range(256)) * 4096  # 1 MiB: travels through the store, not inline
    holder = Holder.remote(pa.put(blob), tag="t")
    expected = (len(blob), blob[:3], "t")
    assert _get(holder.get.remote()) == expected
    os.kill(_get(holder.pid.remote()), signal.SIGKILL)
    assert _call_after_crash(holder.get) == expected


def test_call_in_flight_fails_when_actor_dies_without_retries(pa_module, tmp_path):
    """A call running when the process is killed raises ActorDiedError (max_task_retries=0)."""
    actor = Blocker.options(max_restarts=1).remote()
    pid = _get(actor.pid.remote())
    marker = str(tmp_path / "started")
    in_flight = actor.block_first_time.remote(marker)
    assert wait_until(lambda: os.path.exists(marker))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        _get(in_flight)
    assert _get(actor.block_first_time.remote(marker)) == "retried"  # restarted, serving


def test_call_in_flight_is_retried_with_max_task_retries(pa_module, tmp_path):
    """With max_task_retries=1 a call interrupted by a crash runs again on the restarted actor."""
    actor = Blocker.options(max_restarts=1, max_task_retries=1).remote()
    pid = _get(actor.pid.remote())
    marker = str(tmp_path / "started")
    in_flight = actor.block_first_time.remote(marker)
    assert wait_until(lambda: os.path.exists(marker))
    os.kill(pid, signal.SIGKILL)
    assert _get(in_flight) == "retried"
    assert _get(actor.pid.remote()) != pid


def test_retried_calls_keep_their_order(pa_module, tmp_path):
    """Calls retried after a crash run again in the order they were sent, before later ones."""
    @pa.remote(max_restarts=1, max_task_retries=-1)
    class CrashOnce:
        def __init__(self, marker):
            self.marker = marker
            self.log = []

        def add(self, item):
            self.log.append(item)
            if item == 200 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return item

        def items(self):
            return self.log

    actor = CrashOnce.remote(str(tmp_path / "crashed"))
    assert _get([actor.add.remote(i) for i in range(500)]) == list(range(500))
    log = _get(actor.items.remote())  # the new incarnation's: a suffix, in order
    assert log == list(range(log[0], 500)) and log[0] <= 200


def test_actor_dies_for_good_after_max_restarts(pa_module):
    """Once max_restarts is spent, the next crash leaves the actor dead: calls raise."""
    actor = Blocker.options(max_restarts=1).remote()
    first = _get(actor.pid.remote())
    os.kill(first, signal.SIGKILL)
    second = _call_after_crash(actor.pid)
    assert second != first
    os.kill(second, signal.SIGKILL)
    with pytest.raises(ActorDiedError, match="max_restarts|died"):
        _get(actor.pid.remote())
    with pytest.raises(ActorDiedError):
        _get(actor.state.remote())


def test_actor_without_restarts_dies_on_crash(pa_module):
    """An actor with max_restarts=0 is dead after its process is killed."""
    actor = Blocker.remote()
    os.kill(_get(actor.pid.remote()), signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        _get(actor.pid.remote())


# ---------------------------------------------------------------------- resources
def test_actor_with_cpu_holds_it_until_killed(pa_fresh):
    """An actor with num_cpus=1 takes a CPU from available_resources and gives it back when
    killed."""
    pa.init(num_cpus=2)
    assert pa.available_resources()["CPU"] == 2
    actor = Recorder.options(num_cpus=1).remote()
    _get(actor.add.remote(1))
    assert pa.available_resources()["CPU"] == 1
    pa.kill(actor)
    assert wait_until(lambda: pa.available_resources()["CPU"] == 2)


def test_cpu_actors_beyond_capacity_wait_for_a_cpu(pa_fresh):
    """A third num_cpus=1 actor on a 2-CPU node starts once one of the first two is killed."""
    pa.init(num_cpus=2)
    first, second = (Recorder.options(num_cpus=1).remote() for _ in range(2))
    _get([first.add.remote(1), second.add.remote(1)])
    third = Recorder.options(num_cpus=1).remote()
    pending = third.add.remote("waited")
    ready, _ = pa.wait([pending], timeout=0.2)
    assert ready == []  # no CPU left for it (a bounded check, not synchronisation)
    pa.kill(first)
    assert _get(pending) == 1


def test_actor_needing_more_cpus_than_the_node_has_is_rejected(pa_module):
    """Creating an actor that can never fit on the node raises instead of waiting forever."""
    with pytest.raises(pa.exceptions.InfeasibleResourcesError):
        Recorder.options(num_cpus=64).remote()


# ---------------------------------------------------------------------- lifetimes
SECOND_DRIVER = """
import pyactor as pa
pa.init(address="127.0.0.1:{port}", token="{token}", namespace="lifetimes")

@pa.remote
class Keeper:
    def __init__(self):
        self.items = []
    def add(self, item):
        self.items.append(item)
        return list(self.items)

owned = Keeper.options(name="owned").remote()
detached = Keeper.options(name="detached", lifetime="detached").remote()
assert pa.get([owned.add.remote("o"), detached.add.remote("d")]) == [["o"], ["d"]]
print("created")
"""


def test_detached_actor_outlives_its_driver(pa_fresh):
    """When a driver exits, its actors die but its detached actor stays, fetchable by name."""
    pa.init(num_cpus=2)
    from pyactor._private import api
    runtime = api._runtime
    result = run_python(SECOND_DRIVER.format(port=runtime.node_port, token=runtime.token.hex()))
    assert "created" in result.stdout, result.stderr

    def owned_is_gone():
        try:
            pa.get_actor("owned", namespace="lifetimes")
        except ValueError:
            return True
        return False
    assert wait_until(owned_is_gone)
    detached = pa.get_actor("detached", namespace="lifetimes")
    assert _get(detached.add.remote("again")) == ["d", "again"]
    pa.kill(detached)


def test_task_finds_named_actors_in_its_submitters_namespace(pa_module):
    """A task calling get_actor(name) without a namespace looks in its driver's namespace."""
    @pa_module.remote
    class Named:
        def hello(self):
            return "hi"

    Named.options(name="found-from-a-task").remote()

    @pa_module.remote
    def call_by_name():
        return pa_module.get(pa_module.get_actor("found-from-a-task").hello.remote())

    assert pa_module.get(call_by_name.remote(), timeout=30) == "hi"


@pa.remote
class Lifetime:
    def pid(self):
        return os.getpid()

    def slow_pid(self, gate):
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()


@pa.remote
class Keeper:
    def keep(self, handle):
        self.handle = handle
        return True

    def ask(self):
        return pa.get(self.handle.pid.remote())


def test_an_actor_ends_when_no_handle_to_it_is_left(pa_module):
    """Unnamed actors whose handles are all dropped are ended (their process exits)."""
    pids = [pa_module.get(Lifetime.remote().pid.remote()) for _ in range(3)]
    gc.collect()
    assert wait_until(lambda: not any(process_alive(p) for p in pids), 20)


def test_calls_in_flight_finish_before_the_last_handle_ends_the_actor(pa_module, tmp_path):
    """Dropping the last handle while calls run lets them finish, then ends the actor."""
    gate = tmp_path / "gate"
    ref = Lifetime.remote().slow_pid.remote(str(gate))
    gc.collect()
    gate.touch()
    pid = pa_module.get(ref, timeout=30)
    assert wait_until(lambda: not process_alive(pid), 20)


def test_a_handle_held_by_another_actor_keeps_the_actor_alive(pa_module):
    """A borrowed handle counts: the actor lives while another process holds a handle."""
    target = Lifetime.remote()
    pid = pa_module.get(target.pid.remote())
    keeper = Keeper.remote()
    assert pa_module.get(keeper.keep.remote(target))
    del target
    gc.collect()
    assert pa_module.get(keeper.ask.remote(), timeout=30) == pid
    assert process_alive(pid)
    del keeper
    gc.collect()
    assert wait_until(lambda: not process_alive(pid), 20)


def test_named_and_detached_actors_outlive_their_handles(pa_module):
    """Actors with a name (or detached) live until killed, handles or not."""
    pid = pa_module.get(Lifetime.options(name="outlives-handles").remote().pid.remote())
    gc.collect()
    handle = pa_module.get_actor("outlives-handles")
    assert pa_module.get(handle.pid.remote(), timeout=30) == pid
    pa_module.kill(handle)


def test_objects_held_by_a_dead_borrower_are_freed(pa_module):
    """A store object that only a killed actor still held is freed: a dead borrower sends no
    RemoveBorrower, so the owner watches borrowers' connections instead."""
    import numpy as np

    def store_objects():
        return pa_module.nodes()[0]["ObjectStore"]["object_count"]

    before = store_objects()
    ref = pa_module.put(np.ones(1 << 20))
    keeper = Keeper.remote()
    assert pa_module.get(keeper.keep.remote([ref]))  # nested: the actor holds the ref itself
    del ref
    gc.collect()
    assert store_objects() == before + 1
    pa_module.kill(keeper)
    assert wait_until(lambda: store_objects() == before, 20)


@pa.remote
class Sleeper:
    def run(self, marker):
        open(marker, "w").close()
        time.sleep(60)
        return "finished"

    def ping(self):
        return "pong"


def test_cancelling_a_running_actor_call_interrupts_it_and_the_actor_serves_on(pa_module,
                                                                            tmp_path):
    """pa.cancel on a running call raises TaskCancelledError for it; the actor lives on."""
    marker = tmp_path / "running"
    sleeper = Sleeper.remote()
    ref = sleeper.run.remote(str(marker))
    assert wait_until(marker.exists, 30)
    pa_module.cancel(ref)
    with pytest.raises(pa.exceptions.TaskCancelledError):
        pa_module.get(ref, timeout=30)
    assert pa_module.get(sleeper.ping.remote(), timeout=30) == "pong"
