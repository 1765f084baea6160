"""The worker's hot wait after an answer (worker_spin.py, csrc/net.c pa_poll_spin): the poll ends
on any watched socket, lets other threads run, and the adaptive switch rests and wakes; a worker
that spins still serves other callers, runs signal handlers and takes cancellation."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

import pyactor as pa
from pyactor._private.worker_spin import MISSES_TO_REST, CallSpinner
from pyactor._store_cffi import ffi, lib
from conftest import wait_until

LONG_SPIN_NS = 60 * 10**9  # a spin only something readable can end
HANG_GUARD_S = 5  # far below LONG_SPIN_NS: a call that had to wait for the spin's end fails


def _fds(*sockets) -> object:
    return ffi.new("int[]", [s.fileno() for s in sockets])


def test_poll_spin_returns_as_soon_as_any_socket_is_readable():
    """Nothing readable: 0 once the bound passed. Data on any one of the sockets, or a peer
    that closed: how many are readable. No sockets: 0."""
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    try:
        fds = _fds(first, second)
        assert lib.pa_poll_spin(fds, 2, 1_000_000, -1, 0) == 0
        second_peer.send(b"x")
        assert lib.pa_poll_spin(fds, 2, LONG_SPIN_NS, -1, 0) == 1
        first_peer.close()
        assert lib.pa_poll_spin(fds, 2, 0, -1, 0) == 2
        assert lib.pa_poll_spin(fds, 0, 1_000_000, -1, 0) == 0
    finally:
        for s in (first, first_peer, second, second_peer):
            s.close()


def test_poll_spin_watches_more_sockets_than_one_poll_takes():
    """Sockets beyond the first poll() chunk of 64 are watched too."""
    pairs = [socket.socketpair() for _ in range(70)]
    try:
        fds = _fds(*(mine for mine, _ in pairs))
        pairs[-1][1].send(b"x")
        assert lib.pa_poll_spin(fds, len(pairs), LONG_SPIN_NS, -1, 0) == 1
    finally:
        for mine, peer in pairs:
            mine.close()
            peer.close()


def test_poll_spin_releases_the_gil_so_other_threads_run():
    """A thread that needs the GIL to send can end a spin: the poll does not hold it."""
    mine, peer = socket.socketpair()
    spinning = threading.Event()
    sender = threading.Thread(target=lambda: (spinning.wait(), peer.send(b"x")))
    sender.start()
    try:
        spinning.set()  # from here until the C call, this thread keeps the GIL
        assert lib.pa_poll_spin(_fds(mine), 1, LONG_SPIN_NS, -1, 0) == 1
    finally:
        sender.join()
        mine.close()
        peer.close()


def test_poll_spin_gives_up_when_more_tasks_are_runnable_than_allowed():
    """With /proc/loadavg to read, a spin ends as PA_SPIN_CROWDED once more tasks are
    runnable than max_runnable (this thread is one: 0 allowed is always crowded); with
    room for everyone, it waits out its bound."""
    mine, peer = socket.socketpair()
    loadavg = os.open("/proc/loadavg", os.O_RDONLY)
    try:
        fds = _fds(mine)
        assert lib.pa_poll_spin(fds, 1, LONG_SPIN_NS, loadavg, 0) == lib.PA_SPIN_CROWDED
        assert lib.pa_poll_spin(fds, 1, 1_000_000, loadavg, 1 << 30) == 0
        peer.send(b"x")  # something readable comes first: the count is not even read
        assert lib.pa_poll_spin(fds, 1, LONG_SPIN_NS, loadavg, 0) == 1
    finally:
        os.close(loadavg)
        mine.close()
        peer.close()


class FakeClock:
    def __init__(self):
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


def test_the_spinner_rests_after_misses_and_spins_again_when_calls_come_soon():
    """MISSES_TO_REST waits in a row that catch nothing stop the spinning; a batch answered
    later than the bound after the last one leaves it resting, one answered within the bound
    starts it again (with a wait at once); a wait that catches something resets the count of
    misses."""
    clock = FakeClock()
    mine, peer = socket.socketpair()
    try:
        spinner = CallSpinner(spin_ns=1_000, clock=clock)
        spinner.max_runnable = 1 << 30  # (a busy test machine must not cut these waits short)
        spinner.watch("connection", mine.fileno())
        for _ in range(MISSES_TO_REST - 1):
            spinner.after_batch()
        peer.send(b"x")
        spinner.after_batch()  # caught: the misses start again from zero
        assert (spinner.caught, spinner.missed, spinner.spinning) == (1, MISSES_TO_REST - 1, True)
        mine.recv(1)
        for _ in range(MISSES_TO_REST):
            assert spinner.spinning
            spinner.after_batch()
        assert spinner.resting and not spinner.spinning
        misses = spinner.missed
        clock.now_ns += 1_001  # the next batch ends after a pause longer than the bound
        spinner.after_batch()  # resting: no wait, the batch's end is noted
        assert spinner.resting and spinner.missed == misses
        clock.now_ns += 1_000  # the next within the bound: its call came sooner still
        peer.send(b"x")
        spinner.after_batch()
        assert spinner.spinning and not spinner.resting and spinner.caught == 2
    finally:
        spinner.close()
        mine.close()
        peer.close()


def test_a_crowded_machine_cuts_waits_short_and_spaces_them_out_without_a_miss():
    """With more tasks runnable than the spinner allows, a wait ends at once and counts as
    crowded, not as a miss (it says nothing about when the next call comes); the next 1, 2,
    4... batches then skip their wait; the first wait that is not crowded starts over."""
    mine, peer = socket.socketpair()
    spinner = CallSpinner(spin_ns=LONG_SPIN_NS)
    try:
        spinner.max_runnable = 0  # this thread alone is one too many
        spinner.watch("connection", mine.fileno())
        crowded_after = []
        for _ in range(10):
            spinner.after_batch()  # would hang for minutes if it waited
            crowded_after.append(spinner.crowded)
        assert crowded_after == [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
        assert (spinner.missed, spinner.spinning) == (0, True)
        spinner.max_runnable = 1 << 30
        peer.send(b"x")
        spinner.after_batch()  # (the four after the third crowded wait were skipped)
        assert (spinner.caught, spinner.crowded) == (1, 3)
        mine.recv(1)
        spinner.max_runnable = 0
        spinner.after_batch()
        spinner.after_batch()  # skipped: one batch only, the count started over
        spinner.after_batch()
        assert spinner.crowded == 5
    finally:
        spinner.close()
        mine.close()
        peer.close()


def test_a_spinner_stopped_for_good_never_spins_again():
    """An async or threaded actor's spinner: after_batch waits for nothing, however soon
    the batches come."""
    spinner = CallSpinner(spin_ns=LONG_SPIN_NS)
    spinner.stop_for_good()
    for _ in range(MISSES_TO_REST + 2):
        spinner.after_batch()  # would hang for a minute if it spun
    assert not spinner.spinning and not spinner.resting and spinner.missed == 0


def test_a_negative_bound_is_refused():
    with pytest.raises(ValueError, match="spin_ns"):
        CallSpinner(spin_ns=-1)


def _spinner():
    from pyactor._private import api
    return api.runtime_for_call().executor.spinner


@pa.remote
class Spinning:
    def __init__(self):
        self.marker = ""
        signal.signal(signal.SIGUSR2, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.marker:
            open(self.marker, "w").close()

    def set_bound(self, spin_ns: int, marker: str = "") -> int:
        """Spin up to spin_ns after each answer from now on (this one's too)."""
        self.marker = marker
        spinner = _spinner()
        spinner.spin_ns, spinner.spinning, spinner.resting = spin_ns, True, False
        spinner.max_runnable = 1 << 30  # a busy test machine must not cut the waits short
        return os.getpid()

    def state(self) -> tuple:
        spinner = _spinner()
        return spinner.spinning, spinner.resting, spinner.caught, spinner.missed

    def block(self, marker: str) -> None:
        open(marker, "w").close()
        time.sleep(60)  # until cancelled

    def ping(self) -> str:
        return "pong"

    def watched(self) -> tuple:
        """(the fds the spinner polls, the task endpoint's open connections' and listeners')"""
        from pyactor._private import api
        executor = api.runtime_for_call().executor
        spinner = executor.spinner
        polled = sorted(spinner._fds[i] for i in range(spinner._fd_count))
        endpoint = sorted([c.fileno() for c in executor.server.connections]
                          + executor.server.listener_filenos())
        return polled, endpoint


@pa.remote
class Relay:
    def ping(self, actor) -> str:
        return pa.get(actor.ping.remote())


def test_another_callers_call_ends_the_spin_and_is_served(pa_module):
    """While the actor spins after answering the driver, a call from another caller (another
    process, on its own, already open connection) ends the wait at once and is answered."""
    actor, relay = Spinning.remote(), Relay.remote()
    assert pa.get(relay.ping.remote(actor)) == "pong"  # its connection to the actor is open
    pa.get(actor.set_bound.remote(LONG_SPIN_NS))  # from now on the actor spins a minute
    caught_before = pa.get(actor.state.remote())[2]  # (this call ended the first spin)
    assert pa.get(relay.ping.remote(actor), timeout=HANG_GUARD_S) == "pong"
    assert pa.get(actor.state.remote())[2] >= caught_before + 1
    pa.get(actor.set_bound.remote(0))
    pa.kill(actor)
    pa.kill(relay)


def test_the_spinner_watches_every_open_connection_and_the_listener(pa_module):
    """Each caller's connection is polled from its handshake until it closes."""
    actor, relay = Spinning.remote(), Relay.remote()
    assert pa.get(relay.ping.remote(actor)) == "pong"
    for _ in range(3):  # (the driver's own connections to the actor are all open after these)
        polled, endpoint = pa.get(actor.watched.remote())
    assert polled == endpoint and len(polled) >= 3  # the driver's, the relay's, the listener
    pa.kill(relay)
    assert wait_until(lambda: len(pa.get(actor.watched.remote())[0]) == len(polled) - 1, 30)
    polled, endpoint = pa.get(actor.watched.remote())
    assert polled == endpoint
    pa.kill(actor)


@pa.remote
def ping_from_a_task(actor) -> str:
    return pa.get(actor.ping.remote())


def test_a_new_callers_connection_ends_the_spin(pa_module):
    """A caller that connects while the actor spins (a task's worker that never called it:
    the listener is watched too) is accepted at once and its call answered."""
    actor = Spinning.remote()
    pa.get(ping_from_a_task.remote(Spinning.remote()))  # a worker for the task, started
    pa.get(actor.set_bound.remote(LONG_SPIN_NS))
    assert pa.get(ping_from_a_task.remote(actor), timeout=HANG_GUARD_S) == "pong"
    pa.get(actor.set_bound.remote(0))
    pa.kill(actor)


def test_a_spinning_worker_runs_signal_handlers(pa_module, tmp_path):
    """A signal sent to a worker that spins after each answer is handled without any further
    call: the wait is bounded, and the handler runs when it ends."""
    actor = Spinning.remote()
    marker = tmp_path / "signalled"
    pid = pa.get(actor.set_bound.remote(2_000_000, str(marker)))  # 2 ms
    for _ in range(20):
        pa.get(actor.ping.remote())
    os.kill(pid, signal.SIGUSR2)
    assert wait_until(marker.exists, 30)
    pa.kill(actor)


def test_a_spinning_worker_takes_cancellation(pa_module, tmp_path):
    """A call that reaches an actor while it spins runs, and pa.cancel interrupts it; the
    actor serves on."""
    actor = Spinning.remote()
    pa.get(actor.set_bound.remote(LONG_SPIN_NS))
    marker = tmp_path / "running"
    ref = actor.block.remote(str(marker))
    assert wait_until(marker.exists, 30)
    pa.cancel(ref)
    with pytest.raises(pa.exceptions.TaskCancelledError):
        pa.get(ref, timeout=30)
    assert pa.get(actor.ping.remote(), timeout=30) == "pong"
    pa.get(actor.set_bound.remote(0))
    pa.kill(actor)


@pa.remote
class Paced:
    def set_bound(self, spin_ns: int) -> None:
        spinner = _spinner()
        spinner.spin_ns, spinner.spinning, spinner.resting = spin_ns, True, False
        spinner.max_runnable = 1 << 30

    def state(self) -> tuple:
        spinner = _spinner()
        return spinner.spinning, spinner.resting

    def ping(self) -> None:
        return None


def test_a_worker_rests_when_calls_pause_and_spins_when_they_come_back_to_back(pa_module):
    """Calls with pauses much longer than the bound between them turn spinning off; calls
    made back to back turn it on again."""
    actor = Paced.remote()
    pa.get(actor.set_bound.remote(20_000_000))  # 20 ms
    for _ in range(MISSES_TO_REST):
        time.sleep(0.2)  # the behaviour under test: a caller that pauses between calls
        pa.get(actor.ping.remote())
    time.sleep(0.2)  # (back to back, this call would itself start the spinning again)
    assert pa.get(actor.state.remote()) == (False, True)
    for _ in range(3):
        pa.get(actor.ping.remote())
    assert pa.get(actor.state.remote()) == (True, False)
    pa.kill(actor)


@pa.remote(max_concurrency=2)
class Threaded:
    def state(self) -> tuple:
        spinner = _spinner()
        return spinner.usable, spinner.spinning, spinner.resting


@pa.remote
class Async:
    async def state(self) -> tuple:
        spinner = _spinner()
        return spinner.usable, spinner.spinning, spinner.resting


@pytest.mark.parametrize("actor_class", [Threaded, Async])
def test_threaded_and_async_actors_never_spin(pa_module, actor_class):
    """Their answers and coroutines need the event loop, which a spin would hold."""
    actor = actor_class.remote()
    assert pa.get(actor.state.remote()) == (False, False, False)
    pa.kill(actor)
