"""A submitted task as the owner keeps it, and how its arguments are encoded.

Arguments are encoded in the submitting thread (pickling is the costly part, and it should not
run on the IO thread): a plain value becomes `[VALUE_INLINE, bytes]`, a large one is put in the
store first and passed like a ref, and a top-level ObjectRef becomes `[VALUE_REF, id, owner]`,
which the owner replaces by the value (or its store location) once it is ready. Refs nested in
containers stay inside the pickle and reach the task as refs.
"""

from __future__ import annotations

from typing import Any

from pyactor._private import serialization
from pyactor._private.direct import ROUTE_OPEN
from pyactor._private.object_ref import ObjectRef
from pyactor._private.protocol import VALUE_INLINE, VALUE_REF
from pyactor._private.task_events import now as _now


class TaskSpec:
    __slots__ = ("task_id", "function_id", "function_blob", "name", "args", "kwargs",
                 "has_ref_args", "held_refs", "num_returns", "entries", "demand",
                 "scheduling_key", "retries_left", "retry_exceptions", "actor", "method",
                 "cancelled", "lease", "attempt", "namespace", "route", "placement",
                 "job_id", "runtime_env", "submitted_at", "args_ready_at", "streaming")

    def __init__(self):
        self.held_refs: list = []  # ObjectRefs kept alive until the task finishes
        self.has_ref_args = False  # a top-level argument is a ref: resolve before sending
        self.cancelled = False
        self.lease = None
        self.attempt = 0
        self.actor = None
        self.method = ""
        self.route = ROUTE_OPEN  # which path sends it (direct.py)
        self.runtime_env = None  # its wire env (runtime_env.py), when it has one
        self.submitted_at = _now()  # made at .remote(): the task's history (task_events.py)
        self.args_ready_at = 0.0  # set when it had to wait for ref arguments
        self.demand = None  # a task's resources (remote_function.py); None for actor calls
        self.streaming = False  # a generator's call: its items come as they are yielded

    def encode_call(self, runtime, args: tuple, kwargs: dict) -> None:
        """Encode the call's arguments (in the submitting thread), noting whether any must be
        resolved first, so the IO thread looks at the arguments only when one must."""
        if not args and not kwargs:  # (has_ref_args stays False)
            self.args, self.kwargs = [], {}
            return
        self.args, self.kwargs = encode_args(runtime, args, kwargs, self.held_refs)
        self.has_ref_args = any(arg[0] == VALUE_REF for arg in self.args) or any(
            arg[0] == VALUE_REF for arg in self.kwargs.values())


def encode_args(runtime, args: tuple, kwargs: dict, held_refs: list) -> tuple[list, dict]:
    """Encode call arguments for the wire, noting the refs the task needs kept alive."""
    if not args and not kwargs:
        return [], {}
    return ([_encode_arg(runtime, a, held_refs) for a in args],
            {k: _encode_arg(runtime, v, held_refs) for k, v in kwargs.items()} if kwargs else {})


def _encode_arg(runtime, value: Any, held_refs: list) -> list:
    if type(value) is ObjectRef:  # (imported at the top: an import here costs us per argument)
        held_refs.append(value)
        return [VALUE_REF, value.id, value.owner_address]
    try:
        serialized = serialization.serialize(value)
    except Exception as error:  # PicklingError is no TypeError: give callers one clear type
        raise TypeError(f"could not serialize an argument of type {type(value).__name__} "
                        f"for a remote call: {error}") from error
    if serialized.contained_refs:
        held_refs.extend(serialized.contained_refs)
    if serialized.total_bytes < serialization.INLINE_THRESHOLD_BYTES:
        return [VALUE_INLINE, serialized.to_bytes()]
    ref = runtime.put_serialized(serialized)
    held_refs.append(ref)
    return [VALUE_REF, ref.id, ref.owner_address]
