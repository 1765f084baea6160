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

# Connections one thread keeps to workers it called; the least recently used beyond this close.
CHANNELS_PER_THREAD = 32
# How long a waiting thread polls for the answer before it sleeps in the kernel. An answer that
# comes within it wakes nobody: the worker, woken by the call, often runs on this core, and the
# round trip falls from ~80-120 us to ~40-55 us (bench: quick microbenchmark, 0 vs 30/60/100/200
# us). A slower answer costs at most this much CPU, on a core this thread would leave idle.
SPIN_BEFORE_SLEEP_NS = 100_000


class _Channel:
    __slots__ = ("conn", "functions", "busy")

    def __init__(self, conn: transport.BlockingConnection):
        self.conn = conn
        self.functions: set[bytes] = set()  # function ids whose code went out on it
        self.busy = False  # a thread waits on it (close() must not pull the socket away)


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
        self.closed = False

    # ------------------------------------------------------------------ user threads
    def note_submitted(self, spec) -> None:
        """The calling thread submitted `spec`: the one call `get` may take over next."""
        self._local.last = spec

    def note_cancelled(self, task_id: bytes) -> None:
        """This thread cancels a call: a later `get` of it must not send it (the cancel is on
        its way to the IO thread, which drops the call)."""
        spec = getattr(self._local, "last", None)
        if spec is not None and spec.task_id == task_id:
            self._local.last = None

    def try_run(self, entry, timeout_s: float | None = None) -> None:
        """Run the call that makes `entry` on this thread, if it may be. On return the entry is
        resolved, or pending on the ordinary path (the caller then waits as usual); raises
        GetTimeoutError after timeout_s, the answer then going to the ordinary path."""
        spec = getattr(self._local, "last", None)
        if spec is None or spec.num_returns != 1 or spec.entries[0] is not entry:
            return
        self._local.last = None
        if self.closed or spec.has_ref_args:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if spec.actor is None:
            lease = self._claim_task(spec)
            if lease is not None:
                self._run_task(spec, lease, deadline, timeout_s)
        else:
            claim = self._claim_actor_call(spec)
            if claim is not None:
                self._run_actor_call(spec, *claim, deadline, timeout_s)

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

    def _run_task(self, spec, lease, deadline, timeout_s) -> None:
        runtime = self.runtime

        def push(channel: _Channel) -> P.PushTask:
            blob = None
            if spec.function_id not in channel.functions:
                channel.functions.add(spec.function_id)
                blob = spec.function_blob
            return P.PushTask(spec.task_id, spec.function_id, blob, spec.args, spec.kwargs, 1,
                              runtime.address, lease.gpu_ids, spec.name, spec.namespace,
                              spec.job_id)
        self._exchange(lease.address, spec, push, deadline, timeout_s,
                       lambda done, lost: self._settle_task(spec, lease, done, lost))

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

    def _run_actor_call(self, spec, view, address, incarnation, sequence, deadline,
                        timeout_s) -> None:
        runtime = self.runtime

        def call(_channel: _Channel) -> P.ActorCall:
            return P.ActorCall(spec.task_id, view.actor_id, spec.method, spec.args, spec.kwargs,
                               1, runtime.address, sequence)
        self._exchange(address, spec, call, deadline, timeout_s,
                       lambda done, lost: self._settle_actor_call(spec, view, incarnation, done,
                                                                  lost))

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
    def _exchange(self, address, spec, build, deadline, timeout_s, settle) -> None:
        """Send build(channel) to the worker at `address`, wait for its TaskDone, then call
        settle(done, None), or settle(None, lost) when the connection broke."""
        try:
            channel = self._channel(address)
        except Exception as error:  # noqa: BLE001 - refused, reset, timed out, bad handshake
            logger.debug("direct connection to %s failed: %s", address, error)
            settle(None, _Lost(sent=False))
            return
        channel.busy = True
        self._calls[spec.task_id] = (channel, spec)
        self.calls_sent += 1
        try:
            try:
                channel.conn.send(P.encode(build(channel)))
            except OSError:
                self._drop(channel, address)
                raise _Lost(sent=True) from None  # some of it may have gone out
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
        done = P.decode(raw)
        if type(done) is not P.TaskDone or done.task_id != spec.task_id:
            logger.error("a worker answered a direct call with %s", type(done).__name__)
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
            done = P.decode(channel.conn.receive())
        except Exception:  # noqa: BLE001 - the connection broke: the call is lost
            done = None
        if type(done) is not P.TaskDone:
            done = None
        self._close(channel)
        settle(done, None if done is not None else _Lost(sent=True))

    # ------------------------------------------------------------------ connections
    def _channel(self, address) -> _Channel:
        channels = getattr(self._local, "channels", None)
        if channels is None:
            channels = self._local.channels = OrderedDict()
        key = (address[0], address[1])
        channel = channels.get(key)
        if channel is not None and not channel.conn.closed:
            channels.move_to_end(key)
            return channel
        channel = _Channel(transport.BlockingConnection(key[0], key[1], self.runtime.token))
        with self._channels_lock:
            if self.closed:
                channel.conn.close()
                raise ConnectionError("the runtime is shutting down")
            self._all_channels.add(channel)
        channels[key] = channel
        while len(channels) > CHANNELS_PER_THREAD:
            self._close(channels.popitem(last=False)[1])
        return channel

    def _forget(self, address) -> None:
        channels = getattr(self._local, "channels", None)
        if channels is not None:
            channels.pop((address[0], address[1]), None)

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
