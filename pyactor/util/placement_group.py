"""Placement groups, as ray.util.placement_group: reserve bundles of resources across the
cluster at once (gang scheduling), then schedule tasks and actors into them.

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    pa.get(pg.ready())                       # or `await pg.ready()`, or pg.wait(timeout_seconds)
    task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    remove_placement_group(pg)               # kills its actors, fails the work waiting for it

The head keeps the groups (pyactor/_private/placement_groups.py has the picture); this module is
the user's side: it validates, asks the head, and rewrites the demand of work scheduled into a
group to the group's resource names. `ready()` is, as in Ray, a zero-CPU task scheduled into the
group: it runs once a bundle is reserved, and returns the group.
"""

from __future__ import annotations

import os

from pyactor._private import protocol as P
from pyactor._private.bundle_placement import STRATEGIES
from pyactor._private.placement_groups import demand_in_bundle
from pyactor._private.resources import ResourceSet, check_gpu_demand


class PlacementGroup:
    """A handle to a placement group (picklable: pass it to tasks and actors)."""

    def __init__(self, pg_id: bytes, bundle_specs: list[dict], strategy: str = "PACK"):
        self.id = pg_id
        self.bundle_specs = bundle_specs
        self.strategy = strategy

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that resolves to this group once its bundles are reserved (raises
        PlacementGroupRemovedError if it is removed first)."""
        from pyactor.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        strategy = PlacementGroupSchedulingStrategy(self, -1)
        return _bundle_reservation_check.options(scheduling_strategy=strategy).remote(self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """True once the group is ready, False if `timeout_seconds` passed first."""
        import pyactor as pa
        ready, _ = pa.wait([self.ready()], timeout=timeout_seconds)
        return bool(ready)

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()}, {self.strategy}, {self.bundle_specs})"


def _check_ready(pg: PlacementGroup) -> PlacementGroup:
    return pg


def _make_reservation_check():
    from pyactor._private.remote_function import RemoteFunction
    return RemoteFunction(_check_ready, {"num_cpus": 0, "max_retries": 0,
                                         "name": "bundle_reservation_check"})


_bundle_reservation_check = _make_reservation_check()


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None) -> PlacementGroup:
    """Reserve `bundles` (resource dicts) with a strategy: PACK, SPREAD, STRICT_PACK or
    STRICT_SPREAD. Returns at once; `ready()` says when the bundles are reserved. A group that
    no alive node set could ever hold raises InfeasibleResourcesError here."""
    from pyactor._private.api import get_namespace, runtime_for_call
    specs = _validate_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    runtime = runtime_for_call()
    pg_id = os.urandom(10)
    runtime.node_request(P.CreatePlacementGroup, pg_id, specs, strategy, name, get_namespace(),
                         lifetime == "detached", runtime.address)
    return PlacementGroup(pg_id, specs, strategy)


def _validate_bundles(bundles) -> list[dict]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("bundles must be a non-empty list of resource dicts")
    specs = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict):
            raise TypeError(f"bundle {i} must be a dict of resources, got "
                            f"{type(bundle).__name__}")
        try:
            resources = ResourceSet.from_dict(bundle)
            check_gpu_demand(resources)
        except ValueError as error:
            raise ValueError(f"bundle {i}: {error}") from None
        if resources.is_empty:
            raise ValueError(f"bundle {i} asks for no resources: {bundle!r}")
        specs.append(resources.to_dict())
    return specs


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Free the group's bundles; its actors are killed and work waiting for it fails."""
    from pyactor._private.api import runtime_for_call
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() takes a PlacementGroup, got "
                        f"{type(placement_group).__name__}")
    runtime = runtime_for_call()
    runtime.run_in_loop(runtime.tasks.forget_group, placement_group.id)  # before the removal
    runtime.node_request(P.RemovePlacementGroup, placement_group.id)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """Every group by id (hex), or one group's row: state (PENDING, CREATED, RESCHEDULING,
    REMOVED), strategy, bundles and bundles_to_node_id."""
    from pyactor._private.api import runtime_for_call
    runtime = runtime_for_call()
    if placement_group is None:
        return runtime.node_request(P.PlacementGroupInfo, b"", "", "")
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"placement_group_table() takes a PlacementGroup or None, got "
                        f"{type(placement_group).__name__}")
    return runtime.node_request(P.PlacementGroupInfo, placement_group.id, "", "") or {}


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group of that name in the current namespace (ValueError if none)."""
    from pyactor._private.api import get_namespace, runtime_for_call
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError("get_placement_group() needs the group's name")
    view, specs = runtime_for_call().node_request(P.PlacementGroupInfo, b"",
                                                  placement_group_name, get_namespace())
    return PlacementGroup(bytes.fromhex(view["placement_group_id"]), specs, view["strategy"])


def resolve_scheduling_strategy(strategy, demand: dict) -> tuple[dict, tuple | None]:
    """(demand to schedule with, (pg_id, bundle index) or None) for `scheduling_strategy=`;
    ValueError when the work can never fit the bundle(s) it is scheduled into."""
    from pyactor.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    if strategy is None or strategy == "DEFAULT":
        return demand, None
    if not isinstance(strategy, PlacementGroupSchedulingStrategy):
        raise ValueError(f"scheduling_strategy must be None, 'DEFAULT' or a "
                         f"PlacementGroupSchedulingStrategy, got {strategy!r}")
    pg, index = strategy.placement_group, strategy.placement_group_bundle_index
    wanted = ResourceSet.from_dict(demand)
    bundles = [ResourceSet.from_dict(b) for b in pg.bundle_specs]
    candidates = bundles if index < 0 else [bundles[index]]
    if not any(wanted.fits_in(b) for b in candidates):
        where = "any bundle" if index < 0 else f"bundle {index}"
        raise ValueError(f"requested {wanted.to_dict()} cannot fit {where} of placement group "
                         f"{pg.id.hex()}: bundles {pg.bundle_specs}")
    return demand_in_bundle(demand, pg.id.hex(), index), (pg.id, index)
