"""Asynchronous pipelines: the learner takes each runner's work as it arrives, with no barrier
across runners, while the other runners keep stepping with the weights they have.

Two shapes, one per family:

    IMPALA / APPO (AsyncSamplingAlgorithm): fragments as they arrive
        runner i: sample() ---- fragment ----> driver: record it, ask runner i for the next one
                  (keeps stepping with          at once, learner.update(fragments that arrived),
                   slightly stale weights)      one weights put for every runner
                  <-- set_weights(ref) -------  (queued behind the sample in flight: the lag is
                                                 the update count between acting and learning)

    A3C (AsyncGradientAlgorithm): gradients as they arrive (Mnih et al. 2016, Algorithm S3)
        runner i: sample(), loss, backward on   driver: apply the gradient (one optimiser step),
                  its own module copy --------> weights version + 1, send the new weights to
                  gradient + episodes           runner i only and ask it for the next gradient
                  <-- set_weights, compute ---  (the others still hold older weights)

Both report `policy_lag`: the learner's weights version when the work is consumed minus the
version that produced it (mean over the iteration; `policy_lag_max` too). One training iteration
consumes at least `min_env_steps_per_iteration` env steps (default: one fragment from every
runner). Requests in flight are asyncio tasks of the loop that made them; a different loop (train()
then `results()`) drops them and asks again.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import numpy as np
import torch

import pyactor as pa
from pyactor.exceptions import ActorDiedError
from pyactor.rl.algorithm import Algorithm
from pyactor.rl.rollout import EnvRunner, EnvRunnerGroup

# The part of a fragment that the driver's bookkeeping (Algorithm.record_fragment) reads.
FRAGMENT_COUNTERS = ("env_steps", "weights_version", "runner_index", "episode_returns",
                     "episode_lengths", "episode_env_indices")


class GradientEnvRunner(EnvRunner):
    """An env runner that also trains its own module copy's gradients (A3C's worker): it samples
    a fragment and returns the flat gradient of `loss_fn` on it, not the fragment."""

    def compute_gradients(self, num_steps: int, loss_fn: Callable, config: dict) -> dict[str, Any]:
        fragment = self.sample(num_steps)
        batch = {key: torch.from_numpy(fragment[key]) for key in
                 ("obs", "next_obs", "actions", "rewards", "terminateds", "truncateds")}
        self.module.zero_grad(set_to_none=True)
        loss, metrics = loss_fn(self.module, batch, config)
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                 for p in self.module.parameters()]
        out = {key: fragment[key] for key in FRAGMENT_COUNTERS}
        if "obs_stats" in fragment:
            out["obs_stats"] = fragment["obs_stats"]
        out["gradients"] = torch.cat([g.reshape(-1) for g in grads]).numpy()
        out["metrics"] = metrics
        return out


class InFlight:
    """One request in flight on every runner; `ready()` returns the results that completed (at
    least one), each from a runner that is then free for `submit` again. A runner that died is
    counted (EnvRunnerGroup.runner_died), `on_restart(index)` runs, and it is asked again."""

    def __init__(self, group: EnvRunnerGroup, submit: Callable[[int], Any],
                 on_restart: Callable[[int], None] | None = None):
        self.group = group
        self.submit = submit  # index -> ObjectRef (remote runners) or the result (local one)
        self.on_restart = on_restart
        self.tasks: dict[int, asyncio.Future] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, index: int) -> None:
        if self.group.local is None:
            self.tasks[index] = asyncio.ensure_future(_resolve(self.submit(index)))

    async def ready(self) -> list[tuple[int, Any]]:
        if self.group.local is not None:  # num_env_runners=0: the work happens here, now
            return [(0, self.submit(0))]
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # first call, or another event loop: ask every runner afresh
            if self.loop is None:
                # Every runner's process up first: requests queued for a runner still starting
                # while the driver puts weights for the others were seen never to run.
                await asyncio.gather(*(runner.pid.remote() for runner in self.group.runners))
            self.loop, self.tasks = loop, {}
            for index in range(len(self.group.runners)):
                self.start(index)
        while True:
            done, _ = await asyncio.wait(self.tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            results = []
            for index, task in list(self.tasks.items()):
                if task not in done:
                    continue
                del self.tasks[index]
                try:
                    results.append((index, task.result()))
                    self.group.runner_delivered(index)
                except ActorDiedError as error:
                    self.group.runner_died(index, error)  # raises past the restart limits
                    if self.on_restart is not None:
                        self.on_restart(index)
                    self.start(index)
            if results:
                return results

    def close(self) -> None:
        """Cancel the requests in flight (their results are no longer wanted)."""
        tasks, self.tasks = list(self.tasks.values()), {}
        for task in tasks:
            task.cancel()
        if tasks and self.loop is not None and not self.loop.is_closed() \
                and not self.loop.is_running():
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


async def _resolve(ref) -> Any:
    return await ref


def mean_metrics(metrics: list[dict]) -> dict[str, float]:
    """The mean of each numeric metric over the updates of one iteration."""
    out: dict[str, float] = {}
    for key in metrics[0] if metrics else ():
        values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
        if values:
            out[key] = float(np.mean(values))
    return out


class AsyncAlgorithmBase(Algorithm):
    """What both asynchronous shapes share: the requests in flight, the iteration size, the
    policy-lag maximum, and cancelling requests on stop."""

    def __init__(self, config):
        self._in_flight: InFlight | None = None
        self._lag_max = 0
        super().__init__(config)

    def iteration_env_steps(self) -> int:
        c = self.config
        runners = max(c.num_env_runners, 1)
        return c.min_env_steps_per_iteration or \
            runners * c.num_envs_per_runner * c.rollout_fragment_length

    def record_fragment(self, fragment: dict) -> None:
        self._lag_max = max(self._lag_max, self.weights_version - int(fragment["weights_version"]))
        super().record_fragment(fragment)

    def _result(self, metrics: dict, elapsed: float, env_steps: int) -> dict[str, Any]:
        result = super()._result(metrics, elapsed, env_steps)
        result["policy_lag_max"] = self._lag_max
        self._lag_max = 0
        return result

    def stop(self) -> None:
        if getattr(self, "_in_flight", None) is not None:
            self._in_flight.close()
            self._in_flight = None
        super().stop()


class AsyncSamplingAlgorithm(AsyncAlgorithmBase):
    """IMPALA's pipeline: the learner updates on the fragments that have arrived, runners keep
    sampling. A subclass gives `update_kwargs()` (e.g. the scheduled learning rate)."""

    def update_kwargs(self) -> dict:
        return {}

    def _sample_request(self, index: int):
        length = self.config.rollout_fragment_length
        if self.env_runner_group.local is not None:
            return self.env_runner_group.local.sample(length)
        return self.env_runner_group.runners[index].sample.remote(length)

    async def training_step(self) -> dict:
        if self._in_flight is None:
            self._in_flight = InFlight(self.env_runner_group, self._sample_request)
        metrics, consumed = [], 0
        while consumed < self.iteration_env_steps():
            arrived = await self._in_flight.ready()
            for index, _ in arrived:
                self._in_flight.start(index)  # the runner steps on while the learner works
            fragments = [fragment for _, fragment in arrived]
            for fragment in fragments:
                self.record_fragment(fragment)
                consumed += int(fragment["env_steps"])
            metrics.append(await self.learner.update(fragments, **self.update_kwargs()))
            self.sync_weights()  # queued behind each runner's sample in flight
        return {**mean_metrics(metrics), "num_updates": len(metrics)}


class AsyncGradientAlgorithm(AsyncAlgorithmBase):
    """A3C's pipeline: runners (GradientEnvRunner) send gradients; the learner applies each as it
    arrives with `apply_flat_gradients(gradients, **update_kwargs())` and that runner alone gets
    the new weights. A subclass gives `loss_fn` (module, batch, config) -> (loss, metrics)."""

    env_runner_class = GradientEnvRunner
    loss_fn: Callable = None  # set by the algorithm file (a module-level function: it travels)

    def update_kwargs(self) -> dict:
        return {}

    def _gradient_request(self, index: int):
        args = (self.config.rollout_fragment_length, type(self).loss_fn, self.config.to_dict())
        group = self.env_runner_group
        if group.local is not None:
            return group.local.compute_gradients(*args)
        return group.runners[index].compute_gradients.remote(*args)

    def _send_weights_to(self, index: int) -> None:
        """The current weights to runner `index` only (A3C: each worker copies the shared
        parameters before its next rollout)."""
        flat = self.learner.call("get_flat_weights")
        stats = self.obs_stats.to_dict() if self.obs_stats is not None else None
        group = self.env_runner_group
        if group.local is not None:
            group.local.set_weights(flat, self.weights_version, stats)
        else:
            group.runners[index].set_weights.remote(pa.put(flat), self.weights_version, stats)

    async def training_step(self) -> dict:
        if self._in_flight is None:
            self._in_flight = InFlight(self.env_runner_group, self._gradient_request,
                                       on_restart=self._send_weights_to)
        metrics, consumed = [], 0
        while consumed < self.iteration_env_steps():
            for index, result in await self._in_flight.ready():
                self.record_fragment(result)
                consumed += int(result["env_steps"])
                stats = await self.learner.call_async(
                    "apply_flat_gradients", result["gradients"], self.update_kwargs())
                self.weights_version += 1
                self._send_weights_to(index)
                self._in_flight.start(index)
                metrics.append({**result["metrics"], **stats})
        return {**mean_metrics(metrics), "num_updates": len(metrics)}
