"""Small deterministic envs shared by the pyactor.rl tests (imported by test modules)."""

from __future__ import annotations

import os
import signal

import gymnasium as gym
import numpy as np


class CountEnv(gym.Env):
    """obs = [steps taken in this episode]; reward 1 per step; terminates after `length` steps
    (or truncates when `truncate`). Actions are ignored."""

    def __init__(self, length: int = 3, truncate: bool = False):
        self.length = length
        self.truncate = truncate
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return (np.array([float(self.t)], np.float32), 1.0, end and not self.truncate,
                end and self.truncate, {})


class RaisingEnv(CountEnv):
    """Raises in step() after `length` steps."""

    def step(self, action):
        if self.t + 1 >= self.length:
            raise ZeroDivisionError("the env's own bug")
        return super().step(action)


class NaNRewardEnv(CountEnv):
    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


class KillOnceEnv(CountEnv):
    """SIGKILLs its own process at step `kill_at` the first time any copy in any process gets
    there (an O_EXCL marker file decides which one)."""

    def __init__(self, marker: str, kill_at: int = 5, length: int = 20):
        super().__init__(length)
        self.marker = marker
        self.kill_at = kill_at
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.kill_at:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


class NaNObsEnv(CountEnv):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return np.array([np.nan], np.float32), reward, terminated, truncated, info


class FailsAwayFromDriver(CountEnv):
    """Builds in the process whose pid is `driver_pid` and raises in any other (a runner)."""

    def __init__(self, driver_pid: int):
        if os.getpid() != driver_pid:
            raise RuntimeError("no licence server on this host")
        super().__init__()


class RunnerGate:
    """An async actor that holds runner 1's first fragment until runner 0 has started its
    second (the early re-request of EnvRunnerGroup.collect(next_steps))."""

    def __init__(self):
        self.second_started = None

    def _event(self):
        import asyncio
        if self.second_started is None:
            self.second_started = asyncio.Event()
        return self.second_started

    async def sample_started(self, runner_index: int, calls: int) -> None:
        if runner_index == 0 and calls == 2:
            self._event().set()

    async def wait_for_runner_0_second(self) -> None:
        await self._event().wait()


def gated_runner_class():
    """An EnvRunner whose runner 1 blocks its first sample() on a RunnerGate (imported here so
    that the envs above need no torch)."""
    import pyactor as pa
    from pyactor.rl.rollout import EnvRunner

    class GatedRunner(EnvRunner):
        def __init__(self, *args, gate=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.gate, self.calls = gate, 0

        def sample(self, num_steps, explore=True, **explore_kw):
            self.calls += 1
            pa.get(self.gate.sample_started.remote(self.runner_index, self.calls))
            if self.runner_index == 1 and self.calls == 1:
                pa.get(self.gate.wait_for_runner_0_second.remote())
            return super().sample(num_steps, explore, **explore_kw)

        def modules_loaded(self, names: list[str]) -> list[bool]:
            import sys
            return [name in sys.modules for name in names]

    return GatedRunner
