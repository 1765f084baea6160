"""Public names loaded on first use (PEP 562), for pyactor, pyactor.util, pyactor.rl and
pyactor.tune: a process that needs only part of a package (a node daemon, a trial actor that
only reports) does not import the rest.

    __getattr__, __dir__ = lazy_exports(globals(), {"name": "module.path", ...})
"""

from __future__ import annotations

import importlib


def lazy_exports(namespace: dict, exports: dict[str, str], submodules: tuple = ()):
    """The module-level __getattr__ and __dir__ of a package: `exports` maps each public name to
    the module defining it; `submodules` are names of the package's own submodules, imported
    whole. A name loaded once is stored in the package, so later lookups skip __getattr__."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            if name in submodules:
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return namespace["__all__"]

    return __getattr__, __dir__
