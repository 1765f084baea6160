"""Environments for pyactor.rl: what a user names (a gymnasium id, a gymnasium.Env subclass, a
name given to `register_env`) becomes a vectorised env with same-step autoreset.

    env spec --resolve_creator--> creator(env_config) -> gymnasium.Env
             --make_vector_env--> VectorEnv of num_envs copies (native vector env when the id has
                                  one, e.g. CartPole; else SyncVectorEnv), autoreset in the same step

Same-step autoreset: when a copy's episode ends, `step` returns the first observation of the next
episode and keeps the true last one in `info["final_obs"]`; `step_vector_env` puts that last one
into `next_obs`, so a transition (obs, action, reward, next_obs) is always real, and the runner's
next observation is the reset one.

Spaces: Box observations; Discrete or Box actions. Anything else is refused here, in the driver,
with the env named, before an actor starts.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

import numpy as np

try:
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("pyactor.rl needs gymnasium: pip install 'pyactor[rl]'") from error

_REGISTRY: dict[str, Callable[[dict], gym.Env]] = {}


class EnvError(RuntimeError):
    """An environment misbehaved (raised in reset/step, or returned NaN); the message names the env
    and carries its traceback."""


def register_env(name: str, creator: Callable[[dict], gym.Env]) -> None:
    """Make `name` usable as `env=` in any config: `creator(env_config)` returns a gymnasium.Env."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_env: name must be a non-empty str, got {name!r}")
    if not callable(creator):
        raise TypeError(f"register_env: creator for {name!r} must be callable, got {creator!r}")
    _REGISTRY[name] = creator


class RegisteredEnv:
    """A registered name with its creator, to ship to env-runner processes (whose registry is
    empty): callable like the creator, named like the registration."""

    def __init__(self, name: str, creator: Callable[[dict], gym.Env]):
        self.__name__ = name
        self.creator = creator

    def __call__(self, env_config: dict) -> gym.Env:
        return self.creator(env_config)


def portable(env: Any) -> Any:
    """`env` as something another process can use: registered names become RegisteredEnv."""
    if isinstance(env, str) and env in _REGISTRY:
        return RegisteredEnv(env, _REGISTRY[env])
    return env


def env_name(env: Any) -> str:
    """A short printable name for an env spec (used in run directory names and errors)."""
    if isinstance(env, str):
        return env
    return getattr(env, "__name__", type(env).__name__)


def resolve_creator(env: Any) -> Callable[[dict], gym.Env]:
    """A function env_config -> gymnasium.Env for a registered name, gymnasium id or Env class."""
    if isinstance(env, str):
        if env in _REGISTRY:
            return _REGISTRY[env]
        try:
            gym.spec(env)
        except gym.error.Error as error:
            raise ValueError(f"unknown env {env!r}: not registered with rl.register_env and not a "
                             f"gymnasium id ({error})") from None
        return lambda env_config: gym.make(env, **env_config)
    if isinstance(env, type) and issubclass(env, gym.Env):
        return lambda env_config: env(**env_config) if env_config else env()
    if callable(env):
        return env
    raise TypeError(f"env must be a gymnasium id, a registered name or a gymnasium.Env subclass, "
                    f"got {env!r}")


def check_spaces(env: Any, observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse spaces the modules cannot handle, naming the env and the space."""
    name = env_name(env)
    if not isinstance(observation_space, gym.spaces.Box):
        raise ValueError(f"env {name!r}: observation space {observation_space} is not supported "
                         f"(pyactor.rl handles Box observations)")
    if isinstance(action_space, gym.spaces.Discrete):
        return
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            raise ValueError(f"env {name!r}: Box action space {action_space} must be bounded")
        return
    raise ValueError(f"env {name!r}: action space {action_space} is not supported "
                     f"(pyactor.rl handles Discrete and 1-d Box actions)")


def probe_spaces(env: Any, env_config: dict) -> tuple[gym.Space, gym.Space]:
    """Build one copy of the env in this process to read (and check) its spaces."""
    creator = resolve_creator(env)
    try:
        instance = creator(dict(env_config))
    except Exception as error:
        raise EnvError(f"env {env_name(env)!r} could not be created: {error!r}\n"
                       f"{traceback.format_exc()}") from error
    if not isinstance(instance, gym.Env):
        raise TypeError(f"env {env_name(env)!r}: the creator returned {type(instance).__name__}, "
                        f"not a gymnasium.Env")
    try:
        check_spaces(env, instance.observation_space, instance.action_space)
        return instance.observation_space, instance.action_space
    finally:
        instance.close()


def make_vector_env(env: Any, env_config: dict | None, num_envs: int, seed: int | None = None
                    ) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env` as one vector env with same-step autoreset, reset with `seed`
    (copy i gets seed + i) by the first `reset` the caller makes."""
    env_config = dict(env_config or {})
    if isinstance(env, str) and env not in _REGISTRY:
        resolve_creator(env)  # unknown ids fail here with the message above
        spec = gym.spec(env)
        if spec.vector_entry_point is not None and not env_config:
            native = gym.make_vec(env, num_envs=num_envs, vectorization_mode="vector_entry_point")
            if native.metadata.get("autoreset_mode") == AutoresetMode.SAME_STEP:
                return native
            if _CartPoleSameStep.fits(native):
                return _CartPoleSameStep(native)
            native.close()
    creator = resolve_creator(env)
    return gym.vector.SyncVectorEnv([lambda: creator(dict(env_config)) for _ in range(num_envs)],
                                    autoreset_mode=AutoresetMode.SAME_STEP)


class _CartPoleSameStep(gym.vector.VectorWrapper):
    """gymnasium 1.x's vectorised CartPole (20x faster than N CartPole objects) only autoresets
    on the step after an end; this steps its state itself with the same-step autoreset: an ended
    copy reports its last observation and starts again from a state drawn as the env's reset()
    draws it. `step_with_final_obs` is the runner's path (no info dict); `step` is gymnasium's
    interface with info["final_obs"]."""

    REQUIRED = ("state", "steps", "prev_done", "np_random", "low", "high", "force_mag", "tau",
                "gravity", "masspole", "total_mass", "length", "polemass_length",
                "x_threshold", "theta_threshold_radians", "max_episode_steps")

    @classmethod
    def fits(cls, envs) -> bool:
        inner = envs.unwrapped
        return type(inner).__name__ == "CartPoleVectorEnv" and \
            all(hasattr(inner, name) for name in cls.REQUIRED) and \
            getattr(inner, "kinematics_integrator", "euler") == "euler" and \
            not getattr(inner, "_sutton_barto_reward", False)

    def __init__(self, envs):
        super().__init__(envs)
        self.metadata = {**envs.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self._ones = np.ones(self.num_envs, np.float32)

    def step_with_final_obs(self, actions):
        """(obs to act on next, this step's true next_obs, rewards, terminateds, truncateds)."""
        env = self.env.unwrapped
        if np.any((actions != 0) & (actions != 1)):
            raise ValueError(f"CartPole actions must be 0 or 1, got {actions!r}")
        x, x_dot, theta, theta_dot = env.state
        # Cart-pole dynamics of Barto, Sutton and Anderson (1983), explicit Euler steps of tau.
        force = np.where(actions == 1, env.force_mag, -env.force_mag)
        cos, sin = np.cos(theta), np.sin(theta)
        temp = (force + env.polemass_length * theta_dot * theta_dot * sin) / env.total_mass
        theta_acc = (env.gravity * sin - cos * temp) / (
            env.length * (4.0 / 3.0 - env.masspole * cos * cos / env.total_mass))
        x_acc = temp - env.polemass_length * theta_acc * cos / env.total_mass
        state = np.stack((x + env.tau * x_dot, x_dot + env.tau * x_acc,
                          theta + env.tau * theta_dot, theta_dot + env.tau * theta_acc))
        x, theta = state[0], state[2]
        terminateds = (np.abs(x) > env.x_threshold) | (np.abs(theta) > env.theta_threshold_radians)
        env.steps += 1
        truncateds = env.steps >= env.max_episode_steps
        next_obs = state.T.astype(np.float32)
        done = terminateds | truncateds
        obs = next_obs
        if done.any():
            state[:, done] = env.np_random.uniform(env.low, env.high, size=(4, int(done.sum())))
            env.steps[done] = 0
            obs = state.T.astype(np.float32)
        env.state = state
        env.prev_done[:] = False  # the inner env's own next-step reset never fires
        return obs, next_obs, self._ones.copy(), terminateds, truncateds

    def step(self, actions):
        obs, next_obs, rewards, terminateds, truncateds = self.step_with_final_obs(
            np.asarray(actions))
        done = terminateds | truncateds
        info = {"final_obs": next_obs, "_final_obs": done} if done.any() else {}
        return obs, rewards, terminateds, truncateds, info


def step_vector_env(envs: gym.vector.VectorEnv, actions: np.ndarray, name: str):
    """One step of every copy: (obs for the next step, next_obs of this transition, rewards,
    terminateds, truncateds). An exception from the env is re-raised as EnvError naming the env
    with its traceback."""
    try:
        if type(envs) is _CartPoleSameStep:
            return envs.step_with_final_obs(actions)
        obs, rewards, terminateds, truncateds, info = envs.step(actions)
    except Exception as error:
        raise EnvError(f"env {name!r} raised in step(): {error!r}\n{traceback.format_exc()}"
                       ) from error
    next_obs = obs
    done = terminateds | truncateds
    if done.any():
        next_obs = obs.copy()
        for i in np.flatnonzero(done):
            next_obs[i] = info["final_obs"][i]
    return obs, next_obs, rewards, terminateds, truncateds


def reset_vector_env(envs: gym.vector.VectorEnv, seed: int | None, name: str) -> np.ndarray:
    try:
        obs, _ = envs.reset(seed=seed)
    except Exception as error:
        raise EnvError(f"env {name!r} raised in reset(): {error!r}\n{traceback.format_exc()}"
                       ) from error
    return obs


def check_finite(name: str, what: str, array: np.ndarray) -> None:
    """NaN or inf in what an env returned is a bug in the env: stop with a message naming it."""
    if not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[0].tolist()
        raise EnvError(f"env {name!r} returned a non-finite value in {what} at index {where}")
