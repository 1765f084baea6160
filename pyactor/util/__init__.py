"""pyactor.util: the helpers Ray users import from ray.util.

    from pyactor.util import ActorPool, Queue, Empty, Full
    from pyactor.util import placement_group, remove_placement_group, placement_group_table
    from pyactor.util.scheduling_strategies import PlacementGroupSchedulingStrategy

Names are loaded on first use (PEP 562), so `import pyactor.util` costs nothing until one is
touched.
"""

from __future__ import annotations

from pyactor._private.lazy_exports import lazy_exports

_EXPORTS = {
    "ActorPool": "pyactor.util.actor_pool",
    "Queue": "pyactor.util.queue", "Empty": "pyactor.util.queue", "Full": "pyactor.util.queue",
}

# Imported now, not on first use: the submodule and its function share the name
# `placement_group` (as in ray.util), and importing the submodule later would rebind the name
# to the module. It is light (no runtime is started).
from pyactor.util.placement_group import (PlacementGroup, get_placement_group,  # noqa: E402
                                          placement_group, placement_group_table,
                                          remove_placement_group)

__all__ = sorted([*_EXPORTS, "PlacementGroup", "get_placement_group", "placement_group",
                  "placement_group_table", "remove_placement_group"])


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
