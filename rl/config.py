"""AlgorithmConfig: the frozen dataclass every algorithm's config extends, with RLlib's builder
methods (each returns a new config) and validation at the boundary: an unknown key or a value of
the wrong type is refused with a message naming the key.

The registry maps an algorithm's name to its config class (imported on first use), for the CLI
and for `pyactor.tune` (`tune.Tuner("PPO", param_space={...})`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from typing import Any

# name -> "module:ConfigClass"; an algorithm registers itself with one line here.
ALGORITHMS: dict[str, str] = {
    "PPO": "pyactor.rl.ppo:PPOConfig",
    "DQN": "pyactor.rl.dqn:DQNConfig",
    "ES": "pyactor.rl.es:ESConfig",
    "ARS": "pyactor.rl.ars:ARSConfig",
    "A2C": "pyactor.rl.a2c:A2CConfig",
    "APEX": "pyactor.rl.apex:ApexDQNConfig",
    "A3C": "pyactor.rl.a3c:A3CConfig",
    "IMPALA": "pyactor.rl.impala:IMPALAConfig",
    "APPO": "pyactor.rl.appo:APPOConfig",
    "SAC": "pyactor.rl.sac:SACConfig",
    "DDPG": "pyactor.rl.ddpg:DDPGConfig",
    "TD3": "pyactor.rl.td3:TD3Config",
}


def get_config_class(name: str) -> type["AlgorithmConfig"]:
    """The config class of a registered algorithm (case-insensitive name)."""
    matches = {key.upper(): key for key in ALGORITHMS}
    if not isinstance(name, str) or name.upper() not in matches:
        raise ValueError(f"unknown algorithm {name!r}; registered: {', '.join(sorted(ALGORITHMS))}")
    module_name, class_name = ALGORITHMS[matches[name.upper()]].split(":")
    return getattr(importlib.import_module(module_name), class_name)


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    # environment
    env: Any = None
    env_config: dict = dataclasses.field(default_factory=dict)
    normalize_observations: bool = False
    # env runners
    num_env_runners: int = 2
    num_envs_per_runner: int = 8
    rollout_fragment_length: int = 32
    async_sampling: bool = True
    max_env_runner_restarts: int = -1
    num_cpus_per_env_runner: float = 1.0
    custom_resources_per_env_runner: dict = dataclasses.field(default_factory=dict)
    # training (shared by the algorithms)
    gamma: float = 0.99
    lr: float = 3e-4
    lr_schedule: typing.Optional[list] = None  # [[env_steps, lr], ...] piecewise linear
    grad_clip: typing.Optional[float] = 0.5
    model: dict = dataclasses.field(default_factory=dict)
    # resources
    num_learners: int = 0  # 0: the learner runs in the driver; 1: as an actor
    num_gpus_per_learner: float = 0.0
    # evaluation, reporting, debugging
    evaluation_num_episodes: int = 10
    metrics_num_episodes_for_smoothing: int = 100
    output: typing.Optional[str] = None  # run directory root (default ~/pyactor_results)
    log_to_tensorboard: bool = True
    seed: typing.Optional[int] = None

    algo_name = "Algorithm"  # class attribute: the registry name

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            _check_type(type(self).__name__, field.name, getattr(self, field.name), hints[field.name])
        self.validate()

    def validate(self) -> None:
        """Range checks; subclasses extend (call super)."""
        positive = ["num_envs_per_runner", "rollout_fragment_length", "evaluation_num_episodes",
                    "metrics_num_episodes_for_smoothing"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_env_runners < 0:
            raise ValueError(f"num_env_runners must be >= 0, got {self.num_env_runners}")
        if self.num_learners not in (0, 1):
            raise ValueError(f"num_learners must be 0 (learner in the driver) or 1, got "
                             f"{self.num_learners}")
        if self.max_env_runner_restarts < -1:
            raise ValueError("max_env_runner_restarts must be -1 (unlimited) or >= 0")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("lr_schedule",):
            check_schedule(name, getattr(self, name))

    # -- changing a config: every path goes through replace, which validates
    def replace(self, **changes) -> "AlgorithmConfig":
        names = {field.name for field in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown config key {key!r} for {type(self).__name__}{hint}")
        return dataclasses.replace(self, **changes)

    def environment(self, env: Any = None, **kw) -> "AlgorithmConfig":
        return self.replace(**({"env": env} if env is not None else {}), **kw)

    def env_runners(self, **kw) -> "AlgorithmConfig":
        return self.replace(**kw)

    def training(self, **kw) -> "AlgorithmConfig":
        return self.replace(**kw)

    def resources(self, **kw) -> "AlgorithmConfig":
        return self.replace(**kw)

    def evaluation(self, **kw) -> "AlgorithmConfig":
        return self.replace(**kw)

    def debugging(self, **kw) -> "AlgorithmConfig":
        return self.replace(**kw)

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def build(self):
        """Start the env runners and the learner; returns the Algorithm."""
        return self.algorithm_class()(self)

    @classmethod
    def algorithm_class(cls):
        raise NotImplementedError


def check_schedule(name: str, schedule) -> None:
    """A schedule is [[env_steps, value], ...] with increasing env_steps."""
    if schedule is None:
        return
    try:
        points = [(float(step), float(value)) for step, value in schedule]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of [env_steps, value] pairs, got {schedule!r}"
                         ) from None
    if not points or any(b[0] <= a[0] for a, b in zip(points, points[1:])):
        raise ValueError(f"{name} needs at least one point and increasing env_steps: {schedule!r}")


def schedule_value(schedule, default: float, env_steps: int) -> float:
    """Piecewise-linear interpolation of a schedule at `env_steps` (constant past the ends)."""
    if schedule is None:
        return default
    points = [(float(s), float(v)) for s, v in schedule]
    if env_steps <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if env_steps <= s1:
            return v0 + (v1 - v0) * (env_steps - s0) / (s1 - s0)
    return points[-1][1]


def _check_type(owner: str, name: str, value: Any, annotation: Any) -> None:
    if not _matches(value, annotation):
        raise TypeError(f"{owner}.{name} must be {_describe(annotation)}, got "
                        f"{type(value).__name__} {value!r}")


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, origin or annotation)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))
