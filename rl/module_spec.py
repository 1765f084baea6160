"""ModuleSpec: the picklable recipe from which the learner and every env runner build the same
RLModule, kept free of torch so that an env runner whose policy runs in numpy never imports it.

    ModuleSpec(module_class, observation_space, action_space, model_config)
      --pickled to a runner--> the class travels as its import path when it has one, so
                               unpickling imports nothing until the class is needed
      .numpy_policy()  -------> for the stock ActorCriticModule: its numpy copy (rl/numpy_policy),
                               built from the spaces and the config alone (no torch import)
      .build()  --------------> the torch module (imports the class, hence torch)

Importing torch costs an env-runner process seconds of CPU at start (3.7 s of user time on the
shared two-core machine), more than a whole CartPole fragment pipeline needs per iteration.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from pyactor.rl.numpy_policy import ACTIVATIONS, NumpyActorCritic, actor_critic_layout

DEFAULT_MODEL = {"hidden": [64, 64], "activation": "tanh", "init_log_std": 0.0}

# The module whose forward passes rl/numpy_policy.py reproduces (tests/rl/test_module.py checks
# the layout and the outputs against it).
STOCK_ACTOR_CRITIC = "pyactor.rl.module:ActorCriticModule"


def _import_path(cls: type) -> str | None:
    """`module:qualname` when importing that gives back `cls` itself, else None (a class made in
    a function or a test travels by value, as pickle would send it)."""
    module, qualname = getattr(cls, "__module__", None), getattr(cls, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is cls else None


def _resolve(path: str) -> type:
    module, qualname = path.split(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


class ModuleSpec:
    """A picklable recipe for a module: the learner and every env runner build the same one."""

    def __init__(self, module_class: type, observation_space, action_space,
                 model_config: dict | None = None):
        self._module_class: type | None = module_class
        self._class_path = _import_path(module_class)
        self.observation_space = observation_space
        self.action_space = action_space
        self.model_config = dict(model_config or {})

    @property
    def module_class(self) -> type:
        if self._module_class is None:
            self._module_class = _resolve(self._class_path)
        return self._module_class

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state["_class_path"] is not None:  # by name: the receiver imports it when it builds
            state["_module_class"] = None
        return state

    def build(self):
        return self.module_class(self.observation_space, self.action_space, self.model_config)

    def numpy_policy(self) -> NumpyActorCritic | None:
        """The numpy copy of the stock ActorCriticModule (all-zero weights until
        set_flat_weights), made without torch; None for any other module class."""
        if self._class_path != STOCK_ACTOR_CRITIC:
            return None
        config = {**DEFAULT_MODEL, **self.model_config}
        if config["activation"] not in ACTIVATIONS:
            raise ValueError(f"model activation {config['activation']!r} is not one of "
                             f"{sorted(ACTIVATIONS)}")
        discrete = not hasattr(self.action_space, "low")  # Discrete; else a 1-d Box
        n_out = int(self.action_space.n) if discrete else int(self.action_space.shape[0])
        n_obs = int(np.prod(self.observation_space.shape))
        layout = actor_critic_layout(n_obs, list(config["hidden"]), n_out, discrete)
        return NumpyActorCritic(layout, config["activation"], discrete)
