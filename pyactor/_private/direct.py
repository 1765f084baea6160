"""The synchronous fast path: a thread that waits in `get` for a call nobody has sent yet sends
the call itself, over its own connection to the worker, and is woken by the answer.

The ordinary path (runtime.py) crosses two threads in the caller: the user thread hands the call
to the IO thread, and the IO thread hands the answer back. On a virtual machine each hand-off is
a wake-up of 25-50 us, as much as the rest of a round trip. A program that calls and then waits
(`pa.get(f.remote())`, `pa.get(actor.method.remote())`) needs neither:

    user thread                                              worker (task endpoint, main thread)
    f.remote()   register the returns; queue the call for the IO thread as usual
    pa.get(ref)  claim the call (the IO thread will skip it)
                 --PushTask / ActorCall on this thread's BlockingConnection---------> run
                 <--TaskDone on the same connection------------------------------------|
                 resolve the entry here, return the value

A call is claimed only where taking it off the ordinary path cannot be seen:
- it has no ref arguments and one return value (a wait with a timeout that runs out hands the
  answer to a helper thread, so the call still completes);
- a task: an idle lease of its shape is held; it is marked busy, so the IO thread neither
  pipelines onto it nor hands it back meanwhile;
- an actor call: no other call of this process to that actor is queued, in flight or on its way
  to the IO thread; calls made meanwhile (by other threads) are held until it answers, so calls
  still run in the order they were made;
- the thread has not cancelled it, nor killed the actor (the IO thread has yet to hear of it).
Everything else, and every failure (the worker dies, a connection breaks, the wait is
interrupted), goes back to the IO thread, which retries or fails the call as it would have.
While it waits, the thread polls the socket for up to SPIN_BEFORE_SLEEP_NS without the GIL
(csrc/net.c) before it sleeps in the kernel.

Sending at submit. Queueing the call for the IO thread at `.remote()` wakes that thread only
for it to find the call claimed. So a thread whose last call was claimed by its own `get`
(`sync`) claims and sends its next call in `.remote()` itself; the answer stays on its
connection, unread (`_Outstanding`), until

    .remote() --claim, send------------------------------------------> worker runs it at once
    pa.get(ref)  the same ref: wait for the answer as above (the common case, nobody woken)
    anything else first (another .remote(), a get / wait / await of other refs, a cancel):
                 `hand_over_mine`: take the answer if it is there, else lend the connection to
                 the IO thread, which reads it when it comes; the thread stops sending at
                 submit until one of its calls is claimed again
    nothing (the thread computes, sleeps, or is gone): a kernel timer (wake_timer.py) that
                 ticks every BACKSTOP_S / 2 while calls are sent at submit wakes the IO thread,
                 which takes every answer left unread for BACKSTOP_S / 2 or more likewise

so a call always starts at once; only the noticing of its answer can be late, by up to
BACKSTOP_S, for a thread that went off without waiting (and for the calls to the same actor
that other threads made meanwhile, held behind it to keep the order). The timer starts ticking
at the first send at submit and stops at a tick that finds nothing sent since the last one and
nothing unread: no syscall per call (arming and disarming a one-shot timer per call cost two
syscalls, ~7 us on a VM, where the timer's reprogramming traps to the host), one wake-up of the
IO thread per tick while calls flow (400 a second), none when they stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from pyactor._private import protocol as P
from pyactor._private import transport
from pyactor.exceptions import GetTimeoutError, ProtocolError

logger = logging.getLogger("pyactor.direct")

# spec.route: which path sends a call. Set once, under DirectPath.lock.
ROUTE_OPEN = 0  # not taken yet
ROUTE_LOOP = 1  # the IO thread took it
ROUTE_DIRECT = 2  # a waiting thread took it

# How long a new connection to a worker may take to open (connect and handshake).
CONNECT_TIMEOUT_S = 10.0
# Connections one thread keeps to workers it called; the least recently used beyond this close.
CHANNELS_PER_THREAD = 32
# How long a waiting thread polls for the answer before it sleeps in the kernel. An answer that
# comes within it wakes nobody: the worker, woken by the call, often runs on this core, and the
# round trip falls from ~80-120 us to ~40-55 us (bench: quick microbenchmark, 0 vs 30/60/100/200
# us). A slower answer costs at most this much CPU, on a core this thread would leave idle.
SPIN_BEFORE_SLEEP_NS = 100_000
# How long an answer sent for at submit may stay unclaimed before the IO thread takes it (see
# "Sending at submit"): the most its noticing can be late when the thread went off to compute.
BACKSTOP_S = 0.005


_TASK_DONE_KIND = P.KIND_OF[P.TaskDone]
_TASK_DONE_LENGTH = 1 + len(P.TaskDone._fields)
_new_tuple = tuple.__new__


def _task_done(raw, task_id: bytes | None) -> P.TaskDone | None:
    """The TaskDone that `raw` (a received message) is, answering `task_id` if one is given;
    None for anything else. It builds what P.decode would, without its generic checks (the
    ones here suffice) and its NamedTuple constructor call: this is on every round trip."""
    if type(raw) is list and len(raw) == _TASK_DONE_LENGTH and raw[0] == _TASK_DONE_KIND \
            and (task_id is None or raw[1] == task_id):
        return _new_tuple(P.TaskDone, raw[1:])
    return None


def _message_name(raw) -> str:
    """What a worker sent in place of a call's TaskDone, for the log."""
    try:
        message = P.decode(raw)
    except ProtocolError as error:
        return f"a broken message ({error})"
    if type(message) is P.TaskDone:
        return "the TaskDone of another call"
    return type(message).__name__


class _ThreadState:
    """One thread's place on the direct path (its own thread reads and writes it; `sync` is
    also cleared by the IO thread when it takes the thread's answer)."""

    __slots__ = ("last", "sync", "outstanding", "channels")

    def __init__(self):
        self.last = None  # the call `get` may claim next (made the ordinary way)
        self.sync = False  # its last call was claimed by its own get: send the next at submit
        self.outstanding: _Outstanding | None = None  # sent at submit, answer not read yet
        self.channels: OrderedDict = OrderedDict()  # (host, port) -> _Channel, LRU order


class _Outstanding:
    """A call sent at submit whose answer nobody has started reading. `taken` (under
    DirectPath.lock) says who reads it: the thread's get, its hand-over, or the IO thread."""

    __slots__ = ("channel", "address", "spec", "settle", "state", "sent_s", "taken")

    def __init__(self, channel, address, spec, settle, state):
        self.channel, self.address, self.spec, self.settle = channel, address, spec, settle
        self.state = state
        self.sent_s = time.monotonic()
        self.taken = False


class _Channel:
    __slots__ = ("conn", "functions", "busy", "lent", "abandoned")

    def __init__(self, conn: transport.BlockingConnection):
        self.conn = conn
        self.functions: set[bytes] = set()  # function ids whose code went out on it
        self.busy = False  # a thread waits on it (close() must not pull the socket away)
        # Under DirectPath.lock: the IO thread reads an answer on it (its thread must not use
        # it); its thread stopped waiting for it to come back (the IO thread closes it).
        self.lent = False
        self.abandoned = False


class _Lost(Exception):
    """The call's connection broke; `sent` says whether the call may have reached the worker."""

    def __init__(self, sent: bool):
        super().__init__()
        self.sent = sent


class DirectPath:
    def __init__(self, runtime):
        self.runtime = runtime
        # The route lock: a claim, and the IO thread taking a call or changing what a claim
        # reads (an actor's queue), happen one at a time.
        self.lock = threading.Lock()
        self._local = threading.local()
        self._channels_lock = threading.Lock()
        self._all_channels: set[_Channel] = set()  # every thread's, closed at shutdown
        self._calls: dict[bytes, tuple] = {}  # task id -> (channel, spec) while it waits
        self.calls_sent = 0  # how many calls went this way (tests, diagnostics)
        self.sent_at_submit = 0  # how many of them went out in .remote() (tests, diagnostics)
        self.closed = False
        # Calls sent at submit whose answers nobody reads yet (under lock); while there are
        # any, the timer ticks (see "Sending at submit").
        self.unclaimed: dict[bytes, _Outstanding] = {}
        self._timer = None  # WakeTimer, once the IO thread watches it (_start_timer)
        self._timer_requested = False
        self._ticking = False  # (under lock)
        self._sends_at_last_tick = 0

    # ------------------------------------------------------------------ user threads
    def _state(self) -> _ThreadState:
        try:
            return self._local.state
        except AttributeError:
            state = self._local.state = _ThreadState()
            return state

    def note_submitted(self, spec) -> None:
        """The calling thread submitted `spec` the ordinary way: the one call `get` may take
        over next."""
        self._state().last = spec

    def note_cancelled(self, task_id: bytes) -> None:
        """This thread cancels a call: a later `get` of it must not send it (the cancel is on
        its way to the IO thread, which drops the call); one sent at submit has its answer
        handed over (it brings the cancellation's outcome)."""
        state = self._state()
        if state.last is not None and state.last.task_id == task_id:
            state.last = None
        if state.outstanding is not None:
            self._hand_over(state)

    def send_at_submit(self, spec) -> bool:
        """The calling thread just made `spec`: send it now on its own connection, if its last
        call was claimed by its own get and this one may go directly. True if it was taken
        (sent, or being settled through the IO thread); False: submit it the ordinary way."""
        state = self._state()
        if state.outstanding is not None:  # it did not wait for its last call: stop sending
            self._hand_over(state)        # at submit until a get claims a call again
            state.sync = False
            return False
        if not state.sync or spec.num_returns != 1 or spec.has_ref_args or spec.streaming or \
                self.closed:
            return False
        if self._timer is None:  # not started yet (see try_run), or no timerfd here
            return False
        call = self._claim(spec)
        if call is None:
            return False
        address, build, settle = call
        channel = self._send(address, spec, build, settle, state)
        if channel is None:
            return True  # (settled: the IO thread sends or fails it)
        self.sent_at_submit += 1
        state.last = None
        outstanding = _Outstanding(channel, address, spec, settle, state)
        with self.lock:  # (the timer starts and stops under the lock: never left off)
            self.unclaimed[spec.task_id] = outstanding
            armed = self._ticking or self._start_ticking()
        state.outstanding = outstanding
        if not armed:  # the kernel refused: nothing would take the answer later
            self._hand_over(state)
        return True

    def hand_over_mine(self) -> None:
        """This thread is about to do something other than wait for the call it sent at
        submit: hand that call's answer over first (see "Sending at submit")."""
        state = self._state()
        if state.outstanding is not None:
            self._hand_over(state)

    def try_run(self, entry, timeout_s: float | None = None) -> None:
        """Run the call that makes `entry` on this thread, if it may be. On return the entry is
        resolved, or pending on the ordinary path (the caller then waits as usual); raises
        GetTimeoutError after timeout_s, the answer then going to the ordinary path."""
        state = self._state()
        outstanding = state.outstanding
        if outstanding is not None:
            if outstanding.spec.entries[0] is entry:
                state.outstanding = None
                if self._take(outstanding):  # nobody else reads it: wait for it here
                    deadline = None if timeout_s is None else time.monotonic() + timeout_s
                    self._wait(outstanding.channel, outstanding.address, outstanding.spec,
                               outstanding.settle, deadline, timeout_s)
                else:  # the IO thread took it (it resolves the entry): no longer in step
                    state.sync = False
                return
            self._hand_over(state)
            state.sync = False
        spec = state.last
        if spec is None or spec.num_returns != 1 or spec.entries[0] is not entry:
            return
        state.last = None
        if self.closed or spec.has_ref_args:
            return
        call = self._claim(spec)
        if call is None:
            return
        address, build, settle = call
        state.sync = True
        if not self._timer_requested:  # the first thread in step: the IO thread starts it
            self._timer_requested = True
            self.runtime.run_in_loop(self._start_timer)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        channel = self._send(address, spec, build, settle, state, timeout_s)
        if channel is not None:
            self._wait(channel, address, spec, settle, deadline, timeout_s)

    # ------------------------------------------------------------------ answers left unread
    def _take(self, outstanding: _Outstanding) -> bool:
        """Become the reader of an answer sent for at submit; False if someone already is."""
        with self.lock:
            if outstanding.taken:
                return False
            outstanding.taken = True
            self.unclaimed.pop(outstanding.spec.task_id, None)
        return True  # (the timer ticks on: see _on_timer)

    def _hand_over(self, state: _ThreadState) -> None:
        """Its thread will not wait for its outstanding answer now: settle it if it is there
        already, else lend the connection to the IO thread, which reads it when it comes."""
        outstanding, state.outstanding = state.outstanding, None
        if not self._take(outstanding):
            return
        channel = outstanding.channel
        try:
            done = channel.conn.poll_message()
        except (OSError, ProtocolError):
            self._end_outstanding(outstanding, None)
            return
        if done is not None:
            self._end_outstanding(outstanding, done)
            return
        with self.lock:
            channel.lent = True  # (this thread's next call to that worker: see _channel)
        self.runtime.run_in_loop(self._read_on_loop, outstanding)

    def _end_outstanding(self, outstanding: _Outstanding, raw) -> None:
        """An outstanding call's answer was read (`raw`), or its connection broke (None)."""
        channel = outstanding.channel
        done = None if raw is None else _task_done(raw, outstanding.spec.task_id)
        self._calls.pop(outstanding.spec.task_id, None)
        channel.busy = False
        if done is not None:
            with self.lock:
                channel.lent = False
                close = channel.abandoned
            if close:
                self._close(channel)
            outstanding.settle(done, None)
            return
        if raw is not None:
            logger.error("a worker answered a direct call with %s", _message_name(raw))
        self._close(channel)  # (its thread's cache drops a closed channel)
        outstanding.settle(None, _Lost(sent=True))

    # IO thread
    def _start_timer(self) -> None:
        """IO thread: watch the backstop timer. Made when a thread first gets in step (a
        process that never does pays nothing); without timerfd nothing is sent at submit."""
        from pyactor._private.wake_timer import WakeTimer
        timer = WakeTimer.create()
        if timer is not None and not self.closed:
            self.runtime.loop.add_reader(timer.fd, self._on_timer)
            self._timer = timer

    def stop_timer(self) -> None:
        """IO thread, at shutdown."""
        with self.lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            self.runtime.loop.remove_reader(timer.fd)
            timer.close()

    def _start_ticking(self) -> bool:
        """Under lock: start the timer; False if the kernel refused (then nothing would take an
        answer left unread)."""
        self._ticking = self._timer.tick(BACKSTOP_S / 2)
        return self._ticking

    def _on_timer(self) -> None:
        """IO thread, at each tick: answers left unclaimed BACKSTOP_S / 2 after their send or
        longer are taken here; the ticking stops when nothing was sent since the last tick and
        nothing is left unread."""
        timer = self._timer
        if timer is None:
            return
        timer.clear()
        due = time.monotonic() - BACKSTOP_S / 2
        with self.lock:
            late = [o for o in self.unclaimed.values() if o.sent_s <= due]
            for outstanding in late:
                outstanding.taken = True
                outstanding.channel.lent = True
                outstanding.state.sync = False  # its thread is off doing something else
                del self.unclaimed[outstanding.spec.task_id]
            sends = self.sent_at_submit
            if not self.unclaimed and sends == self._sends_at_last_tick and self._ticking:
                self._ticking = False
                timer.disarm()
            self._sends_at_last_tick = sends
        for outstanding in late:
            self._read_on_loop(outstanding)

    def _read_on_loop(self, outstanding: _Outstanding) -> None:
        """IO thread: read a lent connection's answer now, or when it becomes readable."""
        if not self._read_lent(outstanding):
            try:
                self.runtime.loop.add_reader(outstanding.channel.conn.fileno(), self._read_lent,
                                      outstanding)
            except (OSError, ValueError):  # closed meanwhile (shutdown)
                self._end_outstanding(outstanding, None)

    def _read_lent(self, outstanding: _Outstanding) -> bool:
        """IO thread: settle the call if its answer is whole (True), else False."""
        conn = outstanding.channel.conn
        try:
            done = conn.poll_message()
        except (OSError, ProtocolError, ValueError):
            done = False
        if done is None:
            return False
        try:
            # (the loop made the socket non-blocking to watch it: its thread's recv blocks)
            self.runtime.loop.remove_reader(conn.fileno())
            conn.block_again()
        except (OSError, ValueError):
            pass
        self._end_outstanding(outstanding, done or None)
        return True

    def _claim(self, spec):
        """Take `spec` off the ordinary path if it may go directly: (connection key,
        build(channel) -> message, settle(done, lost)), or None."""
        if spec.actor is None:
            lease = self._claim_task(spec)
            return None if lease is None else self._task_call(spec, lease)
        claim = self._claim_actor_call(spec)
        return None if claim is None else self._actor_call(spec, *claim)

    # ------------------------------------------------------------------ tasks
    def _claim_task(self, spec):
        queue = self.runtime.tasks.queues.get(spec.scheduling_key)
        if queue is None:
            return None
        with self.lock:
            if spec.route != ROUTE_OPEN:
                return None
            for lease in list(queue.leases):
                if not (lease.in_flight or lease.blocked or lease.returned or lease.direct_busy
                        or lease.conn.closed):
                    lease.direct_busy = True
                    lease.direct_uses += 1
                    spec.route = ROUTE_DIRECT
                    break
            else:
                return None
        spec.lease = lease
        self.runtime.tasks.running[spec.task_id] = spec  # so cancel finds it, as a running task
        return lease

    def _task_call(self, spec, lease):
        """(connection key, build(channel) -> message, settle(done, lost)) of a claimed task."""
        runtime = self.runtime

        def push(channel: _Channel) -> P.PushTask:
            blob = None
            if spec.function_id not in channel.functions:
                channel.functions.add(spec.function_id)
                blob = spec.function_blob
            return P.PushTask(spec.task_id, spec.function_id, blob, spec.args, spec.kwargs, 1,
                              runtime.address, lease.gpu_ids, spec.name, spec.namespace,
                              spec.job_id)
        # The worker's identity is part of the connection's key: a port freed by a dead
        # worker and taken by a new one must not be reached through the dead one's
        # connection (its end-of-stream would read as this call's worker dying).
        return (lease.address[0], lease.address[1], lease.worker_id), push, \
            lambda done, lost: self._settle_task(spec, lease, done, lost)

    def _settle_task(self, spec, lease, done: P.TaskDone | None, lost: _Lost | None) -> None:
        """The direct task ended: answered, or its connection broke (`lost`)."""
        runtime = self.runtime
        runtime.tasks.running.pop(spec.task_id, None)
        self._release_lease(lease)
        if done is not None:
            runtime.task_answered(spec, done)
        elif lost.sent:
            runtime.run_in_loop(runtime.tasks.direct_task_lost, spec, lease)
        else:  # nothing went out: the ordinary path sends it
            spec.lease = None
            runtime.run_in_loop(runtime.tasks.enqueue, spec)

    def _release_lease(self, lease) -> None:
        with self.lock:
            lease.direct_busy = False
            lease.blocked = False  # set if the task waited in get (WorkerBlocking): it is done
            waiting = bool(lease.queue.tasks)
        if waiting:  # tasks of its shape queued meanwhile: the lease is free for them now
            self.runtime.run_in_loop(self.runtime.tasks.pump, lease.queue)

    # ------------------------------------------------------------------ actor calls
    def _claim_actor_call(self, spec):
        view = self.runtime.actors.actors.get(spec.actor)
        if view is None:
            return None
        with self.lock:
            if spec.route != ROUTE_OPEN or view.direct_spec is not None or \
                    view.submitted - view.accepted - view.claimed != 1 or view.queue or \
                    view.in_flight or view.state != "alive" or view.conn is None or \
                    view.conn.closed or view.kills_pending:
                return None  # (the one call on its way to the IO thread is this one)
            spec.route = ROUTE_DIRECT
            view.claimed += 1
            view.direct_spec = spec
            view.sequence += 1
            claim = (view, view.address, view.incarnation, view.sequence)
        self.runtime.actors.by_task[spec.task_id] = view
        return claim

    def _actor_call(self, spec, view, address, incarnation, sequence):
        """(connection key, build(channel) -> message, settle(done, lost)) of a claimed actor
        call."""
        runtime = self.runtime

        def call(_channel: _Channel) -> P.ActorCall:
            return P.ActorCall(spec.task_id, view.actor_id, spec.method, spec.args, spec.kwargs,
                               1, runtime.address, sequence)
        return (address[0], address[1], view.actor_id, incarnation), call, \
            lambda done, lost: self._settle_actor_call(spec, view, incarnation, done, lost)

    def _settle_actor_call(self, spec, view, incarnation, done: P.TaskDone | None,
                           lost: _Lost | None) -> None:
        runtime = self.runtime
        if done is not None:
            runtime.actors.by_task.pop(spec.task_id, None)
            self._release_actor(view)
            runtime.task_answered(spec, done)
        elif lost.sent:  # the IO thread settles it, then lets the held calls go
            runtime.run_in_loop(runtime.actors.direct_call_lost, spec, incarnation)
        else:
            runtime.run_in_loop(runtime.actors.direct_call_unsent, spec)

    def _release_actor(self, view) -> None:
        with self.lock:
            view.direct_spec = None
            waiting = bool(view.queue) or view.end_when_idle
        if waiting:  # calls held behind this one, or the last handle went meanwhile
            self.runtime.run_in_loop(self.runtime.actors.after_direct_call, view)

    # ------------------------------------------------------------------ the exchange
    def _send(self, address, spec, build, settle, state: _ThreadState,
              timeout_s: float | None = None) -> _Channel | None:
        """Send build(channel) to the worker at `address` on this thread's connection; the
        channel, whose answer is then due, or None when the call was settled as lost. A new
        connection gets at most timeout_s (a get's) to open: a worker that accepts and never
        answers the handshake must not hold the get past its timeout."""
        try:
            channel = self._channel(address, state, timeout_s)
        except Exception as error:  # noqa: BLE001 - refused, reset, timed out, bad handshake
            logger.debug("direct connection to %s failed: %s", address, error)
            settle(None, _Lost(sent=False))
            return None
        self.calls_sent += 1
        try:
            channel.conn.send(P.encode(build(channel)))
        except OSError:
            self._drop(channel, address)
            settle(None, _Lost(sent=True))  # some of it may have gone out
            return None
        channel.busy = True
        self._calls[spec.task_id] = (channel, spec)
        return channel

    def _wait(self, channel: _Channel, address, spec, settle, deadline, timeout_s) -> None:
        """Wait on this thread for the TaskDone of a call sent on `channel`, then call
        settle(done, None), or settle(None, lost) when the connection broke."""
        try:
            done = self._await_answer(channel, address, spec, deadline, timeout_s, settle)
        except _Lost as lost:
            settle(None, lost)
            return
        finally:
            channel.busy = False
            self._calls.pop(spec.task_id, None)
        settle(done, None)

    def _await_answer(self, channel: _Channel, address, spec, deadline, timeout_s,
                      settle) -> P.TaskDone:
        on_blocked = self.runtime.on_blocked
        if on_blocked is not None:
            on_blocked(True)
        try:
            raw = channel.conn.receive(SPIN_BEFORE_SLEEP_NS, deadline)
        except TimeoutError:
            self._hand_off(channel, address, settle)
            raise GetTimeoutError(f"get timed out after {timeout_s} s (1 of 1 objects not "
                                  f"ready)") from None
        except (OSError, ProtocolError):
            self._drop(channel, address)
            raise _Lost(sent=True) from None
        except BaseException:  # interrupted: KeyboardInterrupt, a signal handler's exception
            self._hand_off(channel, address, settle)
            raise
        finally:
            if on_blocked is not None:
                on_blocked(False)
        done = _task_done(raw, spec.task_id)
        if done is None:
            logger.error("a worker answered a direct call with %s", _message_name(raw))
            self._drop(channel, address)
            raise _Lost(sent=True)
        return done

    def _hand_off(self, channel: _Channel, address, settle) -> None:
        """This thread stops waiting, but the answer is still coming on this connection: a
        helper thread takes it, so nothing is lost."""
        self._forget(address)
        threading.Thread(target=self._finish_later, args=(channel, settle),
                         name="pyactor-direct-finish", daemon=True).start()

    def _finish_later(self, channel: _Channel, settle) -> None:
        """Take an abandoned wait's answer (a helper thread), then close its connection."""
        try:
            done = _task_done(channel.conn.receive(), None)
        except Exception:  # noqa: BLE001 - the connection broke: the call is lost
            done = None
        self._close(channel)
        settle(done, None if done is not None else _Lost(sent=True))

    # ------------------------------------------------------------------ connections
    def _channel(self, key: tuple, state: _ThreadState | None = None,
                 timeout_s: float | None = None) -> _Channel:
        """This thread's connection for `key`: (host, port, who answers there); a new one gets
        up to CONNECT_TIMEOUT_S, or timeout_s if shorter, to open."""
        channels = (state or self._state()).channels
        channel = channels.get(key)
        if channel is not None and not channel.conn.closed:
            if not channel.lent:
                channels.move_to_end(key)
                return channel
            with self.lock:  # the IO thread reads on it: it closes it when done
                channel.abandoned = True
                if not channel.lent:
                    channel.abandoned = False
                    channels.move_to_end(key)
                    return channel
        connect_s = CONNECT_TIMEOUT_S if timeout_s is None else \
            max(min(timeout_s, CONNECT_TIMEOUT_S), 0.001)
        channel = _Channel(transport.BlockingConnection(key[0], key[1], self.runtime.token,
                                                        connect_s))
        with self._channels_lock:
            if self.closed:
                channel.conn.close()
                raise ConnectionError("the runtime is shutting down")
            self._all_channels.add(channel)
        channels[key] = channel
        while len(channels) > CHANNELS_PER_THREAD:
            oldest = channels.popitem(last=False)[1]
            with self.lock:
                oldest.abandoned = True
                lent = oldest.lent
            if not lent:  # (a lent one is closed by the IO thread, once read)
                self._close(oldest)
        return channel

    def _forget(self, key: tuple) -> None:
        self._state().channels.pop(key, None)

    def _drop(self, channel: _Channel, address) -> None:
        self._forget(address)
        self._close(channel)

    def _close(self, channel: _Channel) -> None:
        channel.conn.close()
        with self._channels_lock:
            self._all_channels.discard(channel)

    def abort_where(self, doomed) -> None:
        """Break the connections of calls for which doomed(spec) holds (any thread): their
        threads wake and hand the calls to the IO thread, which runs them elsewhere or fails
        them. For workers on a node declared dead that may never answer (it is stopped)."""
        for channel, spec in list(self._calls.values()):
            if doomed(spec):
                channel.conn.shutdown()

    def close(self) -> None:
        """Shut down: close every thread's connections (a thread blocked on one wakes)."""
        with self._channels_lock:
            self.closed = True
            channels, self._all_channels = self._all_channels, set()
        for channel in channels:
            if channel.busy:
                channel.conn.shutdown()
            else:
                channel.conn.close()
