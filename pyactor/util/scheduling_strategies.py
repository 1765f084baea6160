"""Scheduling strategies for `.options(scheduling_strategy=...)`, as in ray.util.scheduling_strategies.

    task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()

runs the task in bundle 0 of `pg`, its resources counted against that bundle;
`placement_group_bundle_index=-1` (the default) lets it run in any bundle that can hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run in a bundle of `placement_group` (index -1: any bundle that can hold the work)."""

    placement_group: Any
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None

    def __post_init__(self) -> None:
        from pyactor.util.placement_group import PlacementGroup
        if not isinstance(self.placement_group, PlacementGroup):
            raise TypeError(f"placement_group must be a PlacementGroup, got "
                            f"{type(self.placement_group).__name__}")
        index = self.placement_group_bundle_index
        if isinstance(index, bool) or not isinstance(index, int) or \
                not -1 <= index < self.placement_group.bundle_count:
            raise ValueError(f"placement_group_bundle_index must be -1 or a bundle index below "
                             f"{self.placement_group.bundle_count}, got {index!r}")
        if self.placement_group_capture_child_tasks:
            raise ValueError("placement_group_capture_child_tasks is not supported: schedule "
                             "child tasks into the group explicitly")
