"""Trial actors and the resources they hold: start, lend out, take back, reuse, kill.

A trial asks for a resource shape ({"CPU": 0.25}, {"CPU": 1, "GPU": 1}, {"CPU": 1, "x": 2}); an
actor is created with exactly that request, so the node's scheduler places it and enforces it.
When a trial ends its actor goes back to the idle list of its shape and the next trial of the
same shape gets it without a process start (reuse_actors=True, the default; Ray's default starts
a process per trial). Amounts are compared in fixed point so 8 x 0.125 CPU fits in 1 CPU exactly.
"""

from __future__ import annotations

import pyactor as pa

_SCALE = 10_000


def _units(amount: float) -> int:
    return round(amount * _SCALE)


def shape_of(resources: dict) -> tuple:
    return tuple(sorted((name, _units(amount)) for name, amount in resources.items() if amount))


class TrialActorPool:
    def __init__(self, total: dict, reuse: bool):
        self._total = {name: _units(amount) for name, amount in total.items()}
        self._used: dict[str, int] = {}
        self._idle: dict[tuple, list] = {}       # shape -> idle actor handles
        self._reuse = reuse
        self._actor_class = None
        self.started = 0                          # processes started (for the benchmark)

    def feasible(self, resources: dict) -> bool:
        """Could this shape ever run here (on an otherwise empty cluster)?"""
        return all(units <= self._total.get(name, 0) for name, units in shape_of(resources))

    def describe_total(self) -> dict:
        return {name: units / _SCALE for name, units in self._total.items()}

    def can_start(self, resources: dict) -> bool:
        shape = shape_of(resources)
        if self._idle.get(shape):
            return True
        if self._fits(shape):
            return True
        # Idle actors of other shapes hold resources nobody uses: free them for this one.
        for other in list(self._idle):
            while self._idle.get(other) and not self._fits(shape):
                self._kill(self._idle[other].pop(), other)
        return self._fits(shape)

    def acquire(self, resources: dict, actor_resources: dict | None = None):
        """An actor for a trial counted as `resources`; the actor itself asks the node for
        actor_resources (default: the same)."""
        shape = shape_of(resources)
        idle = self._idle.get(shape)
        if idle:
            return idle.pop()
        for name, units in shape:
            self._used[name] = self._used.get(name, 0) + units
        self.started += 1
        return self._new_actor(resources if actor_resources is None else actor_resources)

    def release(self, actor, resources: dict) -> None:
        """The trial on this actor ended; the actor is healthy."""
        shape = shape_of(resources)
        if self._reuse:
            self._idle.setdefault(shape, []).append(actor)
        else:
            self._kill(actor, shape)

    def discard(self, actor, resources: dict) -> None:
        """The actor died or is in an unknown state: free its resources, make sure it is gone."""
        self._kill(actor, shape_of(resources))

    def shutdown(self) -> None:
        for shape, actors in self._idle.items():
            while actors:
                self._kill(actors.pop(), shape)

    def _fits(self, shape: tuple) -> bool:
        return all(self._used.get(name, 0) + units <= self._total.get(name, 0)
                   for name, units in shape)

    def _kill(self, actor, shape: tuple) -> None:
        for name, units in shape:
            self._used[name] -= units
        try:
            pa.kill(actor)
        except Exception:
            pass  # already gone

    def _new_actor(self, resources: dict):
        if self._actor_class is None:
            from pyactor.tune.trial_actor import TrialActor
            self._actor_class = pa.remote(TrialActor)
        custom = {name: amount for name, amount in resources.items()
                  if name not in ("CPU", "GPU")}
        return self._actor_class.options(max_concurrency=1, num_cpus=resources.get("CPU", 0),
                                         num_gpus=resources.get("GPU", 0),
                                         resources=custom or None).remote()
