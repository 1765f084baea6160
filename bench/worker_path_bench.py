"""The worker's own cost per call: from its task endpoint reading a call to its answer written.

Inside a real worker (an actor for the actor rows, a leased worker for the task rows), ready-made
frames of PushTask / ActorCall are fed to a Connection of the worker's task endpoint, built the
way its server builds them, whose transport only counts what is written. So what is timed is
exactly the Python a call costs the worker between its socket becoming readable and its
TaskDone being handed to the transport: framing, decode, dispatch, bookkeeping, the call,
encode, the write call. Not in it: the three syscalls of a round trip (read, write,
epoll_wait: the same as a bare echo server's; rtt_bench.py measures the whole round trip).

    python bench/worker_path_bench.py [--calls 20000] [--repeats 5] [--table]

Rows (one JSON object a line, {"name", "value", "unit"}, medians over repeats):

    worker_actor_call_cpu_us       CPU us per actor call: no arguments, returns None
    worker_actor_call_arg_cpu_us   CPU us per actor call taking one small value and returning it
    worker_task_cpu_us             CPU us per task: no arguments, returns None
    worker_actor_call_python_calls Python function calls per actor call (cProfile: exact, and
    worker_task_python_calls       the same on a loaded machine)
    msgpack_floor_cpu_us           baseline, same run and process: unpack the call's frame and
                                   pack a TaskDone-sized answer with its header (what any
                                   framing on msgpack costs), per call

CPU times here are of a hot loop and so lower than in a round trip, where the worker runs cold
after each wake-up; ratios between builds carry over. Compare two builds with

    python bench/alternate_builds.py --before /tmp/before --script bench/worker_path_bench.py \\
        --rows worker_actor_call_cpu_us,worker_task_cpu_us,worker_actor_call_python_calls
"""

from __future__ import annotations

import argparse
import json
import statistics

import pyactor as pa


def measure_inside_worker(kind: str, calls: int, profile: bool) -> dict:
    """Run in a worker: feed `calls` frames of `kind` ('actor', 'actor_arg', 'task') to a task
    endpoint connection; CPU us per call, or Python calls per call when `profile`."""
    import cProfile
    import os
    import pstats
    import time

    from pyactor._private import api, serialization, transport
    from pyactor._private import protocol as P
    from pyactor._private.ids import new_task_id

    executor = api.runtime_for_call().executor
    written = []

    class CountingTransport:
        def write(self, data):
            written.append(len(data))

        def close(self):
            pass

        def get_extra_info(self, name, default=None):
            return default

    endpoint = transport._Endpoint(b"t" * 32, executor._on_task_message, None, None,
                                   transport.DEFAULT_MAX_FRAME_BYTES, 5.0, True)
    conn = transport.Connection(endpoint, "bench")
    conn._transport = CountingTransport()
    conn._authenticated = True
    conn._decoder = transport.FrameDecoder()

    def noop():
        return None

    function_id = os.urandom(16)
    owner = ["127.0.0.1", 1]
    argument = [[P.VALUE_INLINE, serialization.serialize_to_bytes(12345)]]

    def frame(index: int) -> bytes:
        task_id = new_task_id()
        if kind == "task":
            message = P.PushTask(task_id, function_id,
                                 serialization.dumps_function(noop) if index == 0 else None,
                                 [], {}, 1, owner, executor.gpu_ids, "noop", api._namespace,
                                 api._job_id)
        else:
            message = P.ActorCall(task_id, executor.actor_id,
                                  "noop" if kind == "actor" else "identity",
                                  argument if kind == "actor_arg" else [], {}, 1, owner, index)
        return transport.encode_frame(P.encode(message))

    frames = [frame(index) for index in range(calls + 1)]
    saved = executor.current_task, executor.current_owner
    conn.data_received(frames[0])  # the first task carries the function: not timed
    profiler = cProfile.Profile() if profile else None
    started = time.thread_time()
    if profiler:
        profiler.enable()
    for data in frames[1:]:
        conn.data_received(data)
    if profiler:
        profiler.disable()
    cpu_s = time.thread_time() - started
    executor.current_task, executor.current_owner = saved
    if len(written) != calls + 1:
        raise RuntimeError(f"{len(written)} answers written for {calls + 1} calls")
    if profiler:
        return {"python_calls": pstats.Stats(profiler).total_calls / calls}
    return {"cpu_us": cpu_s / calls * 1e6}


def msgpack_floor_us(calls: int) -> float:
    """Unpack a call's frame and pack an answer of the same shape, per call (this process)."""
    import time

    import msgpack

    from pyactor._private import protocol as P
    from pyactor._private import serialization, transport
    from pyactor._private.ids import new_task_id

    task_id = new_task_id()
    data = transport.encode_frame(P.encode(P.ActorCall(task_id, b"a" * 16, "noop", [], {}, 1,
                                                       ["127.0.0.1", 1], 0)))
    answer = P.encode(P.TaskDone(task_id, [[P.VALUE_INLINE, serialization.serialize_to_bytes(
        None), None, None]], None, False))
    packer = msgpack.Packer(use_bin_type=True)
    started = time.thread_time()
    for _ in range(calls):
        msgpack.unpackb(data[4:], raw=False)
        body = packer.pack(answer)
        len(body).to_bytes(4, "big") + body
    return (time.thread_time() - started) / calls * 1e6


@pa.remote
class Target:
    def noop(self):
        return None

    def identity(self, value):
        return value

    def measure(self, kind: str, calls: int, profile: bool) -> dict:
        return measure_inside_worker(kind, calls, profile)


@pa.remote
def measure_in_task_worker(calls: int, profile: bool) -> dict:
    return measure_inside_worker("task", calls, profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table", action="store_true", help="a table instead of JSON lines")
    args = parser.parse_args(argv)

    pa.init(num_cpus=1)
    target = Target.remote()
    samples: dict[str, list[float]] = {name: [] for name in (
        "worker_actor_call_cpu_us", "worker_actor_call_arg_cpu_us", "worker_task_cpu_us",
        "msgpack_floor_cpu_us")}
    for _ in range(args.repeats):  # in turns, so every row sees the same machine
        samples["worker_actor_call_cpu_us"].append(
            pa.get(target.measure.remote("actor", args.calls, False))["cpu_us"])
        samples["worker_actor_call_arg_cpu_us"].append(
            pa.get(target.measure.remote("actor_arg", args.calls, False))["cpu_us"])
        samples["worker_task_cpu_us"].append(
            pa.get(measure_in_task_worker.remote(args.calls, False))["cpu_us"])
        samples["msgpack_floor_cpu_us"].append(msgpack_floor_us(args.calls))
    profile_calls = min(args.calls, 2000)
    rows = [(name, statistics.median(values), "us") for name, values in samples.items()]
    rows.append(("worker_actor_call_python_calls", pa.get(target.measure.remote(
        "actor", profile_calls, True))["python_calls"], "calls"))
    rows.append(("worker_task_python_calls", pa.get(measure_in_task_worker.remote(
        profile_calls, True))["python_calls"], "calls"))
    pa.kill(target)
    pa.shutdown()
    if args.table:
        floor = statistics.median(samples["msgpack_floor_cpu_us"])
        print(f"{args.repeats} repeats x {args.calls} calls; baseline: msgpack floor "
              f"{floor:.2f} us per call, same run")
        for name, value, unit in rows:
            ratio = f"{value / floor:6.2f}x floor" if unit == "us" else ""
            print(f"{name:<34} {value:10.2f} {unit:<6} {ratio}")
        return 0
    for name, value, unit in rows:
        print(json.dumps({"name": name, "value": value, "unit": unit}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
