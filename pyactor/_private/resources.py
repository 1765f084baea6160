"""Resource sets and one node's resource accounting, in exact fixed-point arithmetic.

A resource is a named quantity: "CPU", "GPU", "memory" (bytes) or any custom name
({"accelerator_x": 2}). Requests may be fractional (num_gpus=0.5, num_cpus=0.25), so every amount
is held as an integer count of 1/SCALE units: 0.1 + 0.2 is exactly 0.3 here, and a million
allocate/release cycles return a node to exactly its total. User amounts are rounded to the
nearest unit (as Ray rounds to four decimals); a positive amount that would round to zero is
refused rather than silently turned into a free request.

Data flow:

    user dict --from_dict--> ResourceSet (immutable, hashable: also a queue's "shape")
    NodeResources.allocate(demand) --> Allocation(resources, gpu_ids)  (mutates the node)
    NodeResources.free(allocation)                                     (gives it all back)

GPUs are also instances: the runtime sets CUDA_VISIBLE_DEVICES from `Allocation.gpu_ids`. A
request for k whole GPUs gets k distinct ids that nobody else holds; a fractional request (< 1)
gets one id shared with other fractional holders whose shares sum to at most 1 on that id.
Fractional requests go to the fullest GPU they fit on (best fit), which keeps whole GPUs free for
whole-GPU requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from numbers import Real
from typing import Mapping, Sequence

SCALE = 10_000  # fixed-point units per whole resource (resolution 0.0001)
CPU = "CPU"
GPU = "GPU"
MEMORY = "memory"

_CANONICAL_FIRST = (CPU, GPU, MEMORY)


def _sort_key(name: str) -> tuple[int, str]:
    return (_CANONICAL_FIRST.index(name), "") if name in _CANONICAL_FIRST else (3, name)


def to_units(name: object, amount: object) -> int:
    """Validate one user amount and convert it to fixed-point units."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"resource names must be non-empty strings, got {name!r}")
    if isinstance(amount, bool) or not isinstance(amount, (Real, Decimal)):
        raise ValueError(f"resource {name!r} must be a number, got {amount!r}")
    if not isinstance(amount, int) and not math.isfinite(amount):
        raise ValueError(f"resource {name!r} must be finite, got {amount!r}")
    if amount < 0:
        raise ValueError(f"resource {name!r} must not be negative, got {amount!r}")
    if isinstance(amount, int):
        return int(amount) * SCALE
    units = round(Fraction(amount) * SCALE)
    if units == 0 and amount > 0:
        raise ValueError(
            f"resource {name!r} amount {amount!r} is below the resolution of {1 / SCALE}")
    return units


def units_to_amount(units: int) -> int | float:
    """Fixed-point units back to a user number: an int when whole, else a float."""
    whole, rest = divmod(units, SCALE)
    return whole if rest == 0 else units / SCALE


@dataclass(frozen=True)
class ResourceSet:
    """An immutable, hashable bag of non-negative resource amounts.

    `units` holds (name, amount in 1/SCALE units) pairs in canonical order (CPU, GPU, memory,
    then custom names alphabetically), zero amounts left out, so equal sets compare and hash equal.
    Build one with `from_dict`; the constructor is for code that already holds units.
    """

    units: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        assert all(isinstance(u, int) and u > 0 for _, u in self.units), self.units
        assert list(self.units) == sorted(self.units, key=lambda item: _sort_key(item[0]))

    @classmethod
    def from_dict(cls, amounts: Mapping[str, object]) -> "ResourceSet":
        """Validate user amounts; ValueError names the first bad resource."""
        return cls.from_units({name: to_units(name, amount) for name, amount in amounts.items()})

    @classmethod
    def from_units(cls, units: Mapping[str, int]) -> "ResourceSet":
        for name, amount in units.items():
            if amount < 0:
                raise ValueError(f"resource {name!r} must not be negative, got "
                                 f"{units_to_amount(amount)!r}")
        kept = sorted(((n, int(u)) for n, u in units.items() if u), key=lambda i: _sort_key(i[0]))
        return cls(tuple(kept))

    def to_dict(self) -> dict[str, int | float]:
        return {name: units_to_amount(units) for name, units in self.units}

    def units_dict(self) -> dict[str, int]:
        return dict(self.units)

    def units_of(self, name: str) -> int:
        for key, units in self.units:
            if key == name:
                return units
        return 0

    def get(self, name: str) -> int | float:
        return units_to_amount(self.units_of(name))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.units)

    @property
    def is_empty(self) -> bool:
        return not self.units

    def __add__(self, other: "ResourceSet") -> "ResourceSet":
        merged = self.units_dict()
        for name, units in other.units:
            merged[name] = merged.get(name, 0) + units
        return ResourceSet.from_units(merged)

    def __sub__(self, other: "ResourceSet") -> "ResourceSet":
        """Difference; ValueError if any amount would go below zero."""
        merged = self.units_dict()
        for name, units in other.units:
            left = merged.get(name, 0) - units
            if left < 0:
                raise ValueError(f"cannot subtract {other}: resource {name!r} would become "
                                 f"negative ({units_to_amount(merged.get(name, 0))} - "
                                 f"{units_to_amount(units)})")
            merged[name] = left
        return ResourceSet.from_units(merged)

    def fits_in(self, other: "ResourceSet") -> bool:
        """True when every amount here is at most the same amount in `other`."""
        return all(units <= other.units_of(name) for name, units in self.units)

    def only(self, *names: str) -> "ResourceSet":
        """The part of this set with the given names (e.g. the CPUs a blocked worker lends)."""
        return ResourceSet(tuple(item for item in self.units if item[0] in names))

    def __repr__(self) -> str:
        return f"ResourceSet({self.to_dict()})"


@dataclass(frozen=True)
class Allocation:
    """What one granted request holds: its resources and, if it asked for GPUs, which ones."""

    resources: ResourceSet
    gpu_ids: tuple[int, ...] = ()

    @property
    def gpu_share_units(self) -> int:
        """Units held on each id in `gpu_ids`: SCALE for whole GPUs, the fraction otherwise."""
        gpu_units = self.resources.units_of(GPU)
        return min(gpu_units, SCALE)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(gpu_id) for gpu_id in self.gpu_ids)


def check_gpu_demand(demand: ResourceSet) -> None:
    """ValueError unless the GPU amount is below 1 or a whole number (1.5 GPUs has no ids)."""
    gpu_units = demand.units_of(GPU)
    if gpu_units > SCALE and gpu_units % SCALE:
        raise ValueError(f"a request for more than one GPU must be a whole number, got "
                         f"{units_to_amount(gpu_units)} GPUs")


class NodeResources:
    """One node's totals and what is available now, with GPU instance bookkeeping.

    Availability is signed: a worker that reclaims CPUs it lent while blocked may push CPU below
    zero (oversubscription, as in Ray). `available()` clamps at zero for display and
    `oversubscribed()` says by how much; the exact accounting is kept underneath.
    """

    def __init__(self, total: ResourceSet, gpu_ids: Sequence[int] | None = None):
        gpu_units = total.units_of(GPU)
        if gpu_units % SCALE:
            raise ValueError(f"a node's GPU total must be a whole number, got "
                             f"{units_to_amount(gpu_units)}")
        if gpu_ids is None:
            gpu_ids = range(gpu_units // SCALE)
        gpu_ids = tuple(gpu_ids)
        if len(gpu_ids) != gpu_units // SCALE or len(set(gpu_ids)) != len(gpu_ids):
            raise ValueError(f"gpu_ids {list(gpu_ids)} must be {gpu_units // SCALE} distinct ids "
                             f"to match the node's GPU total")
        self._total = total
        self._available: dict[str, int] = total.units_dict()
        self._gpu_free_units: dict[int, int] = {gpu_id: SCALE for gpu_id in gpu_ids}

    @property
    def total(self) -> ResourceSet:
        return self._total

    @property
    def gpu_ids(self) -> tuple[int, ...]:
        return tuple(self._gpu_free_units)

    def copy(self) -> "NodeResources":
        clone = NodeResources.__new__(NodeResources)
        clone._total = self._total
        clone._available = dict(self._available)
        clone._gpu_free_units = dict(self._gpu_free_units)
        return clone

    def available(self) -> ResourceSet:
        return ResourceSet.from_units({n: max(u, 0) for n, u in self._available.items()})

    def oversubscribed(self) -> ResourceSet:
        return ResourceSet.from_units({n: max(-u, 0) for n, u in self._available.items()})

    def gpu_free_units(self) -> dict[int, int]:
        return dict(self._gpu_free_units)

    def can_ever_fit(self, demand: ResourceSet) -> bool:
        return demand.fits_in(self._total)

    def allocate(self, demand: ResourceSet) -> Allocation | None:
        """Take `demand` if it fits now (amounts and GPU instances); None otherwise."""
        if any(units > self._available.get(name, 0) for name, units in demand.units):
            return None
        gpu_ids = self._pick_gpus(demand.units_of(GPU))
        if gpu_ids is None:
            return None
        allocation = Allocation(demand, gpu_ids)
        self.commit(allocation)
        return allocation

    def commit(self, allocation: Allocation) -> None:
        """Apply an allocation chosen elsewhere (on a copy of this node with less free)."""
        for name, units in allocation.resources.units:
            self._available[name] = self._available.get(name, 0) - units
        share = allocation.gpu_share_units
        for gpu_id in allocation.gpu_ids:
            self._gpu_free_units[gpu_id] -= share
            assert self._gpu_free_units[gpu_id] >= 0, (gpu_id, allocation)

    def free(self, allocation: Allocation) -> None:
        for name, units in allocation.resources.units:
            self._available[name] += units
        share = allocation.gpu_share_units
        for gpu_id in allocation.gpu_ids:
            self._gpu_free_units[gpu_id] += share
            assert self._gpu_free_units[gpu_id] <= SCALE, (gpu_id, allocation)

    def add_total(self, resources: ResourceSet) -> None:
        """Grow the node by non-GPU resources (a placement group's bundle resources)."""
        assert GPU not in resources.names
        self._total = self._total + resources
        for name, units in resources.units:
            self._available[name] = self._available.get(name, 0) + units

    def remove_total(self, resources: ResourceSet) -> None:
        """Shrink the node by resources added with `add_total` (nobody may hold them now)."""
        self._total = self._total - resources
        for name, units in resources.units:
            self._available[name] -= units
            if name not in self._total.names:
                assert self._available[name] == 0, (name, self._available[name])
                del self._available[name]

    def give(self, resources: ResourceSet) -> None:
        """Add non-GPU resources back (a blocked worker lending its CPUs)."""
        assert GPU not in resources.names
        for name, units in resources.units:
            self._available[name] += units

    def take(self, resources: ResourceSet) -> None:
        """Remove non-GPU resources even if that drives them negative (reclaiming lent CPUs)."""
        assert GPU not in resources.names
        for name, units in resources.units:
            self._available[name] -= units

    def reserve(self, demand: ResourceSet) -> None:
        """Set `demand` aside although it does not fit (used on a scratch copy by the scheduler).

        Amounts go negative where they fall short. If its GPUs cannot be picked now, every GPU is
        held back, so no younger request can take a GPU that the waiting one needs.
        """
        for name, units in demand.units:
            self._available[name] = self._available.get(name, 0) - units
        gpu_units = demand.units_of(GPU)
        gpu_ids = self._pick_gpus(gpu_units)
        if gpu_ids is None:
            self._gpu_free_units = dict.fromkeys(self._gpu_free_units, 0)
        else:
            for gpu_id in gpu_ids:
                self._gpu_free_units[gpu_id] -= min(gpu_units, SCALE)

    def _pick_gpus(self, gpu_units: int) -> tuple[int, ...] | None:
        if gpu_units == 0:
            return ()
        if gpu_units >= SCALE:
            whole_free = [i for i, free in self._gpu_free_units.items() if free == SCALE]
            count = gpu_units // SCALE
            return tuple(sorted(whole_free)[:count]) if len(whole_free) >= count else None
        fitting = [(free, i) for i, free in self._gpu_free_units.items() if free >= gpu_units]
        return (min(fitting)[1],) if fitting else None
