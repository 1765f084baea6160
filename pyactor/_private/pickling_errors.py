"""Saying which part of a value could not be pickled.

Pickle's own error names only the type it stopped at (`cannot pickle '_thread.lock' object`),
not where that object sits. When serializing a put value, an argument or a remote function
fails, these functions look again, member by member (container items, instance attributes, a
function's globals and closure variables, a class's methods), for the first part that does not
pickle on its own, and name it. They run only after a failure, so the normal path pays nothing.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterator

import cloudpickle

_MAX_DEPTH = 4  # how deep to look inside containers before naming the container itself
_MAX_MEMBERS = 200  # members tried per container: a huge list is named, not searched


def _pickles(value: Any) -> bool:
    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001 - any failure means "this part does not pickle"
        return False
    return True


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}." \
                                                                 f"{cls.__qualname__}"


def _members(value: Any) -> Iterator[tuple[str, Any]]:
    """(path suffix, member) of the parts pickle would save for `value`."""
    if isinstance(value, dict):
        for key, item in list(value.items())[:_MAX_MEMBERS]:
            yield f"[{key!r}]", item
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value[:_MAX_MEMBERS]):
            yield f"[{index}]", item
    elif isinstance(value, (set, frozenset)):
        for item in list(value)[:_MAX_MEMBERS]:
            yield f" item {item!r}", item
    elif inspect.isfunction(value):
        for name, item in _function_variables(value):
            yield f" {name}", item
    elif not isinstance(value, type) and isinstance(getattr(value, "__dict__", None), dict):
        for name, item in list(vars(value).items())[:_MAX_MEMBERS]:
            yield f".{name}", item


def _function_variables(function) -> Iterator[tuple[str, Any]]:
    """The globals and closure variables a function's code uses, as pickle saves them."""
    try:
        variables = inspect.getclosurevars(function)
    except (TypeError, ValueError):
        return
    for name, item in variables.nonlocals.items():
        yield f"closes over {name!r}", item
    for name, item in variables.globals.items():
        yield f"uses the global {name!r}", item


def find_unpicklable(value: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """(path, part): the innermost part of `value` that does not pickle, named from `path`."""
    if depth < _MAX_DEPTH:
        for suffix, member in _members(value):
            if not _pickles(member):
                return find_unpicklable(member, path + suffix, depth + 1)
    return path, value


def describe_failure(value: Any, what: str, error: BaseException) -> str:
    """A message naming `what` was being serialized and, when found, the part that failed."""
    path, part = find_unpicklable(value, "value")
    message = f"could not serialize {what} (a {_type_name(value)})"
    if part is value:
        return f"{message}: {error}"
    return f"{message}: {path} is a {_type_name(part)}, which cannot be serialized ({error})"


def describe_code_failure(code: Any, error: BaseException) -> str:
    """The message for a remote function or actor class whose code does not pickle."""
    if isinstance(code, type):
        what = f"actor class {code.__qualname__}"
        for name, member in vars(code).items():
            function = getattr(member, "__func__", member)
            if inspect.isfunction(function) and not _pickles(function):
                path, part = find_unpicklable(function, f"its method {name!r}", 1)
                return f"could not serialize {what}: {path}, a {_type_name(part)}, which " \
                       f"cannot be serialized ({error})"
        return f"could not serialize {what}: {error}"
    what = f"remote function {getattr(code, '__qualname__', code)!r}"
    path, part = find_unpicklable(code, "it", 1)
    if part is code:
        return f"could not serialize {what}: {error}"
    return f"could not serialize {what}: {path}, a {_type_name(part)}, which cannot be " \
           f"serialized ({error})"
