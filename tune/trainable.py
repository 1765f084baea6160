"""What a trial runs: a function trainable, a `tune.Trainable` subclass, or (by name) an rl
algorithm; `with_resources` attaches a trial's resource request to any of them.

`run_trainable` is the body of the trainable thread of a trial actor (see session.py): it calls
the user's code and turns its end into the session's last message, ("done", ...) or
("error", traceback).
"""

from __future__ import annotations

import inspect
import os
import pickle
import traceback
from typing import Any, Callable

from pyactor.tune import session as _session
from pyactor.tune.checkpoint import Checkpoint

_DICT_CHECKPOINT = "_dict_checkpoint.pkl"


class Trainable:
    """A class trainable: override setup(config), step() -> dict, and for checkpoints
    save_checkpoint(checkpoint_dir) -> dict | None and load_checkpoint(checkpoint). A step's
    result may set "done": True to end the trial."""

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {})
        self.iteration = 0
        self.setup(self.config)

    # ---- to override
    def setup(self, config: dict) -> None:
        pass

    def step(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define step() -> dict")

    def save_checkpoint(self, checkpoint_dir: str) -> dict | None:
        raise NotImplementedError(f"{type(self).__name__} does not define save_checkpoint()")

    def load_checkpoint(self, checkpoint: dict | str) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define load_checkpoint()")

    def reset_config(self, new_config: dict) -> bool:
        """Return True when this instance switched to new_config in place (actor reuse skips
        setup); the default False makes a new instance."""
        return False

    def cleanup(self) -> None:
        pass

    # ---- used by the trial actor
    def train(self) -> dict:
        result = self.step()
        if not isinstance(result, dict):
            raise TypeError(f"{type(self).__name__}.step() must return a dict, "
                            f"got {type(result).__name__}")
        self.iteration += 1
        return result

    def save(self, checkpoint_dir: str) -> Checkpoint:
        os.makedirs(checkpoint_dir, exist_ok=True)
        data = self.save_checkpoint(checkpoint_dir)
        if data is not None:
            with open(os.path.join(checkpoint_dir, _DICT_CHECKPOINT), "wb") as file:
                pickle.dump(data, file)
        return Checkpoint(checkpoint_dir)

    def restore(self, checkpoint: Checkpoint) -> None:
        path = os.path.join(checkpoint.path, _DICT_CHECKPOINT)
        if os.path.exists(path):
            with open(path, "rb") as file:
                self.load_checkpoint(pickle.load(file))
        else:
            self.load_checkpoint(checkpoint.path)


class _WithResources:
    """A trainable with the resources each of its trials asks for."""

    def __init__(self, trainable, resources: dict):
        self.trainable = trainable
        self.resources = resources
        self.__name__ = getattr(trainable, "__name__", str(trainable))


def with_resources(trainable, resources: dict | Callable):
    """Attach per-trial resources: {"cpu": 0.5, "gpu": 1, "my_resource": 2} (or a function of
    the trial's config returning such a dict)."""
    if not callable(resources):
        resources = normalize_resources(resources)
    return _WithResources(trainable, resources)


def normalize_resources(resources) -> dict:
    """{"cpu"/"CPU": n, "gpu"/"GPU": n, custom: n} -> {"CPU": n, "GPU": n, custom: n}."""
    if not isinstance(resources, dict):
        raise TypeError(f"resources must be a dict like {{'cpu': 1, 'gpu': 0}}, "
                        f"got {type(resources).__name__}")
    normalized = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"resource names must be non-empty strings, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
            raise ValueError(f"resource {name!r} must be a non-negative number, got {amount!r}")
        key = {"cpu": "CPU", "gpu": "GPU"}.get(name.lower(), name)
        if amount:
            normalized[key] = amount
    normalized.setdefault("CPU", 0)
    return normalized


def trainable_name(trainable) -> str:
    if isinstance(trainable, str):
        return trainable
    return getattr(trainable, "__name__", type(trainable).__name__)


def is_class_trainable(trainable) -> bool:
    return inspect.isclass(trainable) and issubclass(trainable, Trainable)


def check_function_trainable(trainable) -> None:
    if is_class_trainable(trainable):
        return
    if not callable(trainable):
        raise TypeError(f"a trainable must be a function of config, a tune.Trainable subclass "
                        f"or an rl algorithm's name, got {type(trainable).__name__}")
    try:
        inspect.signature(trainable).bind({})
    except TypeError:
        raise TypeError(f"function trainable {trainable_name(trainable)!r} must take one "
                        f"argument, the config dict") from None
    except ValueError:
        pass  # builtins without a signature


# ------------------------------------------------------------------ in the trainable thread
def run_trainable(session, trainable, config: dict, keep: dict, checkpoint_every: int,
                  checkpoint_at_end: bool) -> None:
    """The trainable thread's body. keep holds a class trainable's instance between trials of
    one actor (for reset_config)."""
    _session.install(session)
    try:
        if is_class_trainable(trainable):
            _run_class(session, trainable, config, keep, checkpoint_every, checkpoint_at_end)
        else:
            _run_function(session, trainable, config)
    except _session.StopTrial:
        session.deliver(("stopped", None, None))
    except BaseException:
        session.deliver(("error", traceback.format_exc(), None))
    else:
        session.deliver(("done", None, None))
    finally:
        session.mark_finished()


def _run_function(session, function, config: dict) -> None:
    returned = function(config)
    # A trial resumed from its last checkpoint may have nothing left to do: that is an end, not
    # a trainable that never reports.
    if not session.reported and session.iteration == 0:
        if isinstance(returned, dict) and returned:
            session.report(returned, None)   # the older style: the return value is the result
        else:
            raise RuntimeError(f"trainable {trainable_name(function)!r} returned without "
                               f"calling tune.report(...): no metrics to compare")


def _run_class(session, cls, config, keep, checkpoint_every, checkpoint_at_end) -> None:
    instance = keep.pop("instance", None)
    if instance is not None and not (type(instance) is cls and instance.reset_config(config)):
        instance.cleanup()
        instance = None
    if instance is None:
        instance = cls(config)
    else:
        instance.config = dict(config)
    instance.iteration = session.iteration
    keep["instance"] = instance          # the actor calls save() on it between results
    if session.start_checkpoint is not None:
        instance.restore(session.start_checkpoint)
    while True:
        result = instance.train()
        done = bool(result.pop("done", False))
        checkpoint = None
        iteration = session.iteration + 1
        if (checkpoint_every and iteration % checkpoint_every == 0) or (done and checkpoint_at_end):
            checkpoint = instance.save(os.path.join(session.trial_dir, f"checkpoint_{iteration:06d}"))
        session.report(result, checkpoint)
        if done:
            return
