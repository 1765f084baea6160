"""Checking a remote call's arguments against the function's signature, in the caller.

A call with the wrong arguments should fail at `.remote()`, naming the function, not later in a
worker (as Ray does). `inspect.Signature.bind` costs microseconds a call, a lot on the submit
path, so each signature is compiled once into an empty stub function with the same parameters
(defaults replaced by None: only their presence matters) and a call is checked by calling the
stub: the interpreter's own argument binding, ~0.1 us, raising the TypeError Python would.

A signature travels as text (`signature_text`): actor handles carry their methods' signatures
to other processes (tasks, `get_actor`), which compile them on first use.
"""

from __future__ import annotations

import inspect
from typing import Callable

_stubs: dict[tuple[str, str], Callable] = {}


def signature_text(function, *, drop_first: bool = False) -> str | None:
    """The parameters of `function` as text such as "(a, b=None, *rest, key, **options)",
    or None when it has no inspectable signature (then calls are not checked)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    if drop_first and parameters and parameters[0].kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        parameters = parameters[1:]
    stripped = [p.replace(annotation=inspect.Parameter.empty,
                          default=None if p.default is not inspect.Parameter.empty
                          else inspect.Parameter.empty) for p in parameters]
    return str(inspect.Signature(stripped))


def method_signature_text(cls: type, name: str) -> str | None:
    """Like signature_text for a method as called on an instance (no `self`)."""
    static = inspect.getattr_static(cls, name, None)
    if isinstance(static, staticmethod):
        return signature_text(static.__func__)
    if isinstance(static, classmethod):
        return signature_text(static.__func__, drop_first=True)
    if inspect.isfunction(static):
        return signature_text(static, drop_first=True)
    return None  # a callable attribute of another kind: leave it to the worker


def stub(name: str, text: str | None) -> Callable | None:
    """A function with the parameters in `text` that does nothing (cached by text)."""
    if text is None:
        return None
    key = (name, text)
    function = _stubs.get(key)
    if function is None:
        namespace: dict = {}
        safe_name = name if name.isidentifier() else "remote_function"
        try:
            exec(f"def {safe_name}{text}: pass", namespace)  # noqa: S102 - text from inspect
        except SyntaxError:
            return None
        function = _stubs[key] = namespace[safe_name]
    return function


def wrong_arguments(what: str, error: TypeError) -> TypeError:
    """The error for a call whose arguments do not fit: names the function called."""
    detail = str(error)
    # The stub's message starts with "name() ...": keep what follows.
    if "() " in detail:
        detail = detail.split("() ", 1)[1]
    return TypeError(f"{what}.remote() called with the wrong arguments: {detail}")
