"""Turn a param_space into concrete configs: expand the grids, draw the domains.

    param_space --parse_space--> constants + domain paths + grid paths
                --grid_variants--> one skeleton per grid combination (first grid key varies
                                   fastest, keys in sorted path order, as Ray Tune)
                --resolve--> each Domain drawn; sample_from functions called with a view of the
                             config so far, in passes, until every value is concrete

A path is a tuple of dict keys / list indices from the root to a leaf. `resolved_vars` maps the
paths of the values that were drawn or gridded to their values; format_vars turns it into the
short tag of a trial ("lr=0.0012,width=64").
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterator

from .sample import Domain, as_generator


class _Unresolved(Exception):
    """A sample_from function read a value that is not drawn yet: retry it in a later pass."""


def is_grid(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "grid_search" in value


def check_space(space: Any, owner: str = "param_space") -> dict:
    if not isinstance(space, dict):
        raise TypeError(f"{owner} must be a dict of parameter names to values or search-space "
                        f"domains (tune.uniform(...), ...), got {type(space).__name__}")
    return space


def parse_space(space: dict) -> tuple[list, list]:
    """(domain vars, grid vars): lists of (path, Domain) and (path, values), the grids sorted by
    path so every run expands them in the same order."""
    domains: list = []
    grids: list = []

    def walk(node: Any, path: tuple) -> None:
        if is_grid(node):
            values = node["grid_search"]
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"grid_search at {_path_str(path)} needs a non-empty list")
            grids.append((path, list(values)))
        elif isinstance(node, Domain):
            domains.append((path, node))
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + (key,))
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, path + (index,))

    walk(space, ())
    grids.sort(key=lambda item: tuple(map(str, item[0])))
    return domains, grids


def has_unresolved(space: Any) -> bool:
    domains, grids = parse_space(space) if isinstance(space, dict) else ([], [])
    return bool(domains or grids)


def grid_size(space: dict) -> int:
    size = 1
    for _, values in parse_space(space)[1]:
        size *= len(values)
    return size


def generate_variants(space: dict, random_state: Any = None) -> Iterator[tuple[dict, dict]]:
    """(resolved_vars, config) for every grid combination of `space`, each domain drawn once."""
    rng = as_generator(random_state)
    domains, grids = parse_space(check_space(space))
    # Only a grid value that is a container or a domain can bring more to resolve.
    may_nest = any(isinstance(v, (dict, list, tuple, Domain)) for _, vs in grids for v in vs)
    for combination in _grid_combinations(grids):
        config = copy.deepcopy(space)
        resolved: dict = {}
        for (path, _), value in zip(grids, combination):
            assign_value(config, path, value)
            resolved[path] = value
        resolved.update(_resolve_domains(config, domains, rng))
        if may_nest and has_unresolved(config):
            # A grid value held further domains or grids (grid_search([{"a": uniform(...)}])).
            for inner_vars, inner in generate_variants(config, rng):
                yield {**resolved, **inner_vars}, inner
        else:
            yield resolved, config


def _grid_combinations(grids: list) -> Iterator[tuple]:
    """Every combination of the grid values, the first grid varying fastest."""
    if not grids:
        yield ()
        return
    indices = [0] * len(grids)
    while True:
        yield tuple(values[i] for (_, values), i in zip(grids, indices))
        position = 0
        while position < len(grids):
            indices[position] += 1
            if indices[position] < len(grids[position][1]):
                break
            indices[position] = 0
            position += 1
        if position == len(grids):
            return


def _resolve_domains(config: dict, domains: list, rng: Any) -> dict:
    """Draw every domain into `config` (in place); sample_from functions that read a value not
    drawn yet are retried after the others, as many passes as it takes."""
    resolved: dict = {}
    pending = list(domains)
    while pending:
        waiting = []
        for path, domain in pending:
            try:
                value = domain.sample(_SpecView(config), random_state=rng)
            except _Unresolved:
                waiting.append((path, domain))
                continue
            except Exception as error:
                raise ValueError(f"could not draw {_path_str(path)} from {domain!r}: "
                                 f"{type(error).__name__}: {error}") from error
            assign_value(config, path, value)
            resolved[path] = value
        if len(waiting) == len(pending):
            names = ", ".join(_path_str(path) for path, _ in waiting)
            raise ValueError(f"sample_from could not resolve {names}: each reads a value that "
                             "is never drawn (a cycle, or a grid value read by sample_from)")
        pending = waiting
    return resolved


class _SpecView:
    """What a sample_from function receives: `spec.config.x`, `spec["config"]["x"]` and
    `spec["x"]` all read x; reading a value not drawn yet postpones the function."""

    __slots__ = ("_node",)

    def __init__(self, node: Any):
        self._node = node

    def _get(self, key: Any) -> Any:
        node = self._node
        if key == "config" and isinstance(node, dict) and "config" not in node:
            return self
        value = node[key]
        if isinstance(value, Domain) or is_grid(value):
            raise _Unresolved(key)
        return _SpecView(value) if isinstance(value, (dict, list, tuple)) else value

    def __getitem__(self, key: Any) -> Any:
        return self._get(key)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._get(name)
        except (KeyError, TypeError):
            raise AttributeError(name) from None

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self._get(key)
        except (KeyError, IndexError):
            return default

    def __contains__(self, key: Any) -> bool:
        return key in self._node

    def __iter__(self):
        return iter(self._node)

    def __len__(self) -> int:
        return len(self._node)

    def keys(self):
        return self._node.keys()

    def __repr__(self) -> str:
        return f"spec({self._node!r})"


def assign_value(node: Any, path: tuple, value: Any) -> None:
    """Set the leaf at `path`; tuples on the way are rebuilt since they cannot be changed."""
    parents = [node]
    for key in path[:-1]:
        node = node[key]
        parents.append(node)
    for depth in range(len(path) - 1, -1, -1):
        container, key = parents[depth], path[depth]
        if isinstance(container, tuple):
            value = container[:key] + (value,) + container[key + 1:]
            continue
        container[key] = value
        return
    raise ValueError("the top of a param_space must be a dict")


def get_value(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def format_vars(resolved_vars: dict) -> str:
    """'lr=0.0012,width=64': each drawn value under the last key of its path, sorted, floats to 4
    decimals, characters unfit for a folder name replaced by '_'."""
    return ",".join(f"{_clean(path[-1])}={_clean(value)}"
                    for path, value in sorted(resolved_vars.items(),
                                              key=lambda item: tuple(map(str, item[0]))))


def _clean(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return re.sub(r"[^a-zA-Z0-9_.-]+", "_", str(value)).strip("_")


def _path_str(path: tuple) -> str:
    return "/".join(map(str, path)) or "<root>"

