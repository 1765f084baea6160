"""Benchmark of pyactor.rl: PPO on CartPole-v1 and Pendulum-v1, env-runner sampling and ES
throughput, ES/ARS/A2C time to solve CartPole-v1, each beside a baseline measured in the same run.

    ppo_cartpole_s{0,1,2}   wall time from build() (actor start included) to a 100-episode mean
                            training return >= 475, and the env steps used; when
                            stable-baselines3 is installed, its PPO with rl-zoo's CartPole-v1
                            settings runs in alternation with ours, same seeds, and `ratio` is
                            ours / SB3 (below 1: faster). Both use one torch thread. The CPU
                            seconds are split: driver (update_cpu_s of it in learner updates),
                            runners (runner_first_iter_cpu_s of it by the first result: their
                            start-up), with the SGD steps taken
    ppo_update_per_s        PPO learner updates per CPU second (default config, CartPole-v1
                            fragments): the numpy update; baseline: the torch autograd update of
                            the same learner on the same fragments, alternated
    sampling_2x16           env steps/s of 2 runner actors x 16 CartPole envs, policy in the
                            loop; baseline: the same two runners' work done by one process
                            (ratio: actors / one process; two cores bound it by 2), with the
                            CPU microseconds per env step of the runners and of the driver, the
                            share of wall time each runner was on a CPU (`runner_busy`) and the
                            ratio two fully used cores would give at these CPU costs
                            (`cpu_ratio_bound`): what carries over from a shared machine
    runner_start_2x16       wall seconds from EnvRunnerGroup() to the first fragment of both
                            runners, and the runners' CPU seconds by then; baseline: runners
                            that import torch to build their module (as all did before)
    ppo_pendulum            env steps and time for PPO to reach a mean return >= -300 on
                            Pendulum-v1 (budget 200k env steps)
    dqn_cartpole_s{0,1,2}   wall time from build() to the first evaluation in which DQN's greedy
                            policy has a mean return >= 475 over 20 episodes (evaluated every
                            --dqn-eval-every iterations of learning; evaluation time counts), with
                            the env steps and learner updates used and the CPU seconds of all
                            the run's processes (budget --dqn-budget-s); updates/s and env
                            steps/s over the training time (evaluations taken out), the
                            driver's CPU seconds and all processes' CPU ms per update
    apex_{updates,env_steps}_per_s  Ape-X's learner updates/s and env steps/s with its defaults
                            (2 runners, 2 replay shards) once learning started; baseline: DQN
                            with the same 2 runners, alternated in the same run
    dqn_updates_per_s       DQN learner updates/s through the pipeline (the replay actor draws
                            the next prioritized batch while the driver runs SGD); baseline: the
                            same sampling and SGD one after the other in one process
    dqn_sgd_cpu_ms          CPU ms of one DQN SGD step (default config, batches of 128) with the
                            hand-derived numpy step of rl/q_step.py; baseline: the same step
                            through autograd, alternated in the same run
    es_steps_per_s          simulator steps/s of ES with 2 workers on CartPole-v1 over training
                            iterations 2-9 of the default config (the episode length grows as
                            the policy learns: the mean is in `episode_len`); baseline: a bare `env.step` loop on one
                            CartPole-v1 in one process, alternated with it in the same run
    {es,ars,a2c}_cartpole_s{0,1,2}  wall time from build() to a 100-episode mean training return
                            >= 475 on CartPole-v1 with the default config, and the env steps used.
                            ES's rows (group es_solve) add the CPU seconds of the driver and of
                            the busiest worker, the first iteration's time (workers' start-up
                            included) and a baseline: the CPU seconds one bare `env.step` loop,
                            measured between the runs, takes for the same env steps (`ratio`:
                            wall / baseline; `cpu_ratio`: all processes' CPU / baseline)
    {impala,appo}_cartpole_s{0,1,2}  the same for IMPALA and APPO (2 runners x 16 envs, the
                            default config), with the CPU seconds of the driver and the runner
                            processes (`cpu_s`: what carries over from a shared machine)
    {sac,td3,ddpg}_pendulum_s{0,1,2}  env steps until the greedy policy's mean return over 10
                            evaluation episodes (every 1,000 env steps) is >= -200 on Pendulum-v1
                            with the default config (budget 20k env steps, rl-zoo's for SAC),
                            with the wall time from build() (evaluations included), gradient
                            steps, gradient steps/s (over the run's wall time) and the CPU
                            seconds of the driver and every pyactor process (runner, replay)
    sac_updates_per_s       SACLearner gradient steps per CPU second on a Pendulum-sized batch
                            (default config); baseline: the same SAC step written plainly
                            (CleanRL's layout: two nn.Sequential critics, three Adam optimisers),
                            alternated with it in the same process

Every row prints its figure, the baseline measured in the same run (where there is one), the
env steps used and `cpu_s`: CPU seconds of the driver process (the pyactor node runs in it) plus
every runner / worker actor process, read from /proc before they stop. On a shared machine the
env steps, CPU seconds and ratios carry over; wall times do not.

    python bench/rl_bench.py [--json] [--seeds 0 1 2] [--only cartpole sampling ...]
                             [--skip sb3 pendulum dqn es ...]
    groups: cartpole (PPO, with the SB3 baseline unless `sb3` is skipped), ppo_update, sampling,
            pendulum, dqn, apex, es (es_steps_per_s), es_solve, ars, a2c, impala, appo, sac, td3, ddpg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import pyactor as pa
from pyactor import rl
from pyactor.rl import envs as rl_envs
from pyactor.rl.module import ActorCriticModule, ModuleSpec
from pyactor.rl.ppo import PENDULUM_V1
from pyactor.rl.rollout import EnvRunner, EnvRunnerGroup

CARTPOLE_TARGET = 475.0
PENDULUM_TARGET = -300.0
PENDULUM_CONFIG = PENDULUM_V1  # the preset shipped in rl/ppo.py


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def algo_cpu_s(algo, driver_cpu_start: float) -> float:
    """CPU seconds since the start of the driver and, whole, of the algorithm's actor processes."""
    runners = algo.env_runner_group.runners
    pids = pa.get([runner.pid.remote() for runner in runners]) if runners else []
    return time.process_time() - driver_cpu_start + sum(process_cpu_s(pid) for pid in pids)
PENDULUM_SOLVED = -200.0  # SAC, TD3, DDPG: greedy mean return (rl-zoo's SAC reaches ~ -150)


def ours_time_to(config: rl.PPOConfig, target: float, max_steps: int) -> dict:
    """Train from build() until the 100-episode mean return reaches `target`; the wall time, env
    steps, and the CPU seconds split between the driver (its learner updates apart) and the
    runner processes (those spent before the first result apart: their start-up)."""
    start, cpu_start = time.monotonic(), time.process_time()
    algo = config.build()
    update_cpu = [0.0]
    local = algo.learner.local
    if local is not None:  # the learner's own CPU: the instance's update, timed
        update = local.update

        def timed_update(*args, **kw):
            before = time.process_time()
            try:
                return update(*args, **kw)
            finally:
                update_cpu[0] += time.process_time() - before
        local.update = timed_update
    sgd_steps, runner_start_cpu = 0, None
    try:
        while True:
            result = algo.train()
            sgd_steps += int(result.get("learner/num_sgd_steps", 0))
            if runner_start_cpu is None:
                runner_start_cpu = algo_cpu_s(algo, time.process_time())
            if result["episode_return_mean"] >= target or result["env_steps_total"] >= max_steps:
                break
        elapsed = time.monotonic() - start
        driver_cpu = time.process_time() - cpu_start
        cpu_s = algo_cpu_s(algo, cpu_start)
    finally:
        algo.stop()
    reached = result["episode_return_mean"] >= target
    return {"time_s": elapsed, "env_steps": result["env_steps_total"], "cpu_s": cpu_s,
            "driver_cpu_s": driver_cpu, "update_cpu_s": update_cpu[0],
            "runner_cpu_s": cpu_s - driver_cpu, "runner_first_iter_cpu_s": runner_start_cpu,
            "sgd_steps": sgd_steps, "iterations": result["training_iteration"],
            "reached": reached, "return": result["episode_return_mean"]}


def ppo_update_per_s(rounds: int, updates: int = 20) -> dict:
    """PPO learner updates per CPU second with the default config on CartPole-v1 fragments:
    the numpy path (rl/numpy_learner.py) against the torch autograd path on the same fragments,
    alternated in this process."""
    from pyactor.rl.ppo import PPOLearner
    config = rl.PPOConfig(env="CartPole-v1", seed=0)
    obs_space, act_space = rl_envs.probe_spaces("CartPole-v1", {})
    spec = ModuleSpec(ActorCriticModule, obs_space, act_space, {})
    runners = [EnvRunner("CartPole-v1", {}, config.num_envs_per_runner, spec, seed=i,
                         runner_index=i) for i in range(config.num_env_runners)]
    fragments = [runner.sample(config.rollout_fragment_length) for runner in runners]
    ours, plain = (PPOLearner(spec, config.to_dict(), seed=0) for _ in range(2))
    plain.fused = None  # the torch autograd update

    def rate(learner) -> float:
        learner.update(fragments, lr=config.lr, clip_param=config.clip_param)
        before = time.process_time()
        for _ in range(updates):
            learner.update(fragments, lr=config.lr, clip_param=config.clip_param)
        return updates / (time.process_time() - before)

    results = [(rate(ours), rate(plain)) for _ in range(rounds)]
    for runner in runners:
        runner.close()
    return {"value": statistics.median(r for r, _ in results),
            "baseline": statistics.median(b for _, b in results),
            "env_steps_per_update": sum(int(f["env_steps"]) for f in fragments)}


def sb3_time_to_475(seed: int, max_steps: int = 100_000) -> dict:
    """rl-zoo's CartPole-v1 PPO: 8 envs x 32 steps, batch 256, 20 epochs, gamma 0.98,
    lambda 0.8, lr and clip linearly to 0 over its 1e5 steps."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class StopAt(BaseCallback):
        def _on_step(self) -> bool:
            buffer = self.model.ep_info_buffer
            return not (len(buffer) == 100 and np.mean([e["r"] for e in buffer]) >= CARTPOLE_TARGET)

    start, cpu_start = time.monotonic(), time.process_time()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = SB3PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                   n_epochs=20, ent_coef=0.0, learning_rate=lambda p: 1e-3 * p,
                   clip_range=lambda p: 0.2 * p, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=max_steps, callback=StopAt())
    buffer = model.ep_info_buffer
    ret = float(np.mean([e["r"] for e in buffer])) if buffer else float("nan")
    return {"time_s": time.monotonic() - start, "env_steps": int(model.num_timesteps),
            "cpu_s": time.process_time() - cpu_start,
            "reached": len(buffer) == 100 and ret >= CARTPOLE_TARGET, "return": ret}


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


burn_cpu = pa.remote(burn)


def parallel_ceiling(rounds: int, n: int = 2_000_000) -> float:
    """How much faster two CPU-bound tasks finish than the same work in one process, now: on a
    shared machine this, not 2, bounds what two runners can gain over one process."""
    pa.get([burn_cpu.remote(1000) for _ in range(2)])  # workers started
    ratios = []
    for _ in range(rounds):
        start = time.perf_counter()
        pa.get([burn_cpu.remote(n) for _ in range(2)])
        two = time.perf_counter() - start
        start = time.perf_counter()
        burn(2 * n)
        ratios.append((time.perf_counter() - start) / two)
    return statistics.median(ratios)


def sampling_throughput(rounds: int, fragments: int = 40, length: int = 64) -> dict:
    obs_space, act_space = rl_envs.probe_spaces("CartPole-v1", {})
    spec = ModuleSpec(ActorCriticModule, obs_space, act_space, {})
    weights = spec.build().get_flat_weights()
    group = EnvRunnerGroup(env="CartPole-v1", env_config={}, num_env_runners=2,
                           num_envs_per_runner=16, module_spec=spec, seed=0,
                           normalize_observations=False)
    local = [EnvRunner("CartPole-v1", {}, 16, spec, seed=i) for i in range(2)]
    for runner in local:
        runner.set_weights(weights, 1)
    group.sync_weights(weights, 1, None)

    pids = group.runner_pids()
    loop = asyncio.new_event_loop()

    async def pipeline() -> tuple[int, float]:
        # The library's path, as Algorithm.sample with async_sampling: each runner is asked for
        # its next fragment as soon as its last one is in.
        steps = 0
        group.request(length)
        for _ in range(fragments // 2):
            collected = await group.collect(length)
            steps += sum(int(f["env_steps"]) for f in collected)
        steps += sum(int(f["env_steps"]) for f in await group.collect())
        return steps

    def actors() -> tuple[float, float, float, float, float]:
        runners_before = sum(process_cpu_s(pid) for pid in pids)
        driver_before = time.process_time()
        start = time.perf_counter()
        steps = loop.run_until_complete(pipeline())
        elapsed = time.perf_counter() - start
        driver = time.process_time() - driver_before
        runners = sum(process_cpu_s(pid) for pid in pids) - runners_before
        return (steps / elapsed, (runners + driver) / steps * 1e6, runners / steps * 1e6,
                driver / steps * 1e6, runners / (elapsed * len(pids)))

    def one_process() -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        steps = 0
        for i in range(fragments + 2):
            steps += local[i % 2].sample(length)["env_steps"]
        return steps / (time.perf_counter() - start), (time.process_time() - cpu_start) / steps * 1e6

    actors()  # warm-up: first calls in the runners
    ours, base = [], []
    for _ in range(rounds):
        ours.append(actors())
        base.append(one_process())
    group.stop()
    loop.close()
    cpu, base_cpu = statistics.median(r[1] for r in ours), statistics.median(c for _, c in base)
    return {"value": statistics.median(r[0] for r in ours),
            "baseline": statistics.median(r for r, _ in base),
            "env_steps": (fragments + 2) * length * 16 * rounds,
            "cpu_us_per_step": cpu, "baseline_cpu_us_per_step": base_cpu,
            "runner_cpu_us_per_step": statistics.median(r[2] for r in ours),
            "driver_cpu_us_per_step": statistics.median(r[3] for r in ours),
            # the share of its wall time each runner spent on a CPU (1: never waiting)
            "runner_busy": statistics.median(r[4] for r in ours),
            # the ratio two fully used cores would give at these CPU costs per step
            "cpu_ratio_bound": 2 * base_cpu / cpu}


class _TorchActorCritic(ActorCriticModule):
    """The stock actor-critic under another name: a spec of it gets no torch-free numpy policy,
    so its runners import torch and build the module first, as every runner did before."""


def runner_start(rounds: int) -> dict:
    """Wall time from EnvRunnerGroup() to both runners' first fragment (2 runners x 16 CartPole
    envs) and the runner processes' CPU seconds by then; baseline: the same with runners that
    import torch to build their module (alternated in the same run)."""
    obs_space, act_space = rl_envs.probe_spaces("CartPole-v1", {})
    weights = ModuleSpec(ActorCriticModule, obs_space, act_space, {}).build().get_flat_weights()

    def start(module_class) -> tuple[float, float]:
        spec = ModuleSpec(module_class, obs_space, act_space, {})
        begin = time.perf_counter()
        group = EnvRunnerGroup(env="CartPole-v1", env_config={}, num_env_runners=2,
                               num_envs_per_runner=16, module_spec=spec, seed=0,
                               normalize_observations=False)
        try:
            group.sync_weights(weights, 1, None)
            group.request(8)
            asyncio.run(group.collect())
            elapsed = time.perf_counter() - begin
            return elapsed, sum(process_cpu_s(pid) for pid in group.runner_pids())
        finally:
            group.stop()

    ours, base = [], []
    for _ in range(rounds):
        ours.append(start(ActorCriticModule))
        base.append(start(_TorchActorCritic))
    return {"value": statistics.median(t for t, _ in ours),
            "baseline": statistics.median(t for t, _ in base),
            "cpu_s": statistics.median(c for _, c in ours),
            "baseline_cpu_s": statistics.median(c for _, c in base)}


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and every live descendant (the runner, replay
    and learner actors' workers), read from /proc: on a shared machine this, not wall time,
    carries over to a quiet one."""
    import os
    ticks = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parent[int(name)] = int(fields[1])
        cpu[int(name)] = (int(fields[11]) + int(fields[12])) / ticks
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        children = [p for p, pp in parent.items() if pp == pid and p not in mine]
        mine.update(children)
        frontier.extend(children)
    return sum(cpu.get(pid, 0.0) for pid in mine)


def dqn_time_to_475(seed: int, budget_s: float, output: str, eval_every: int) -> dict:
    """DQN with its default settings until the greedy policy's 20-episode mean return reaches
    475, evaluated every `eval_every` training iterations once learning started (counted in
    iterations, not seconds, so a loaded machine does not evaluate more often per env step; the
    evaluations' time counts)."""
    cpu_start = tree_cpu_seconds()
    driver_cpu_start = time.process_time()
    start = time.monotonic()
    algo = rl.DQNConfig(env="CartPole-v1", seed=seed, output=output,
                        log_to_tensorboard=False).build()
    try:
        best, learning_iterations, eval_s, num_evals = 0.0, 0, 0.0, 0
        while best < CARTPOLE_TARGET and time.monotonic() - start < budget_s:
            result = algo.train()
            learning_iterations += result["learner/num_updates"] > 0
            if learning_iterations and learning_iterations % eval_every == 0:
                eval_start = time.monotonic()
                best = max(best, algo.evaluate(episodes=20)["episode_return_mean"])
                eval_s += time.monotonic() - eval_start
                num_evals += 1
        wall = time.monotonic() - start
        updates = result["learner/num_updates_total"]
        cpu = tree_cpu_seconds() - cpu_start
        # Rates over the training time alone (evaluations taken out): they and the counts and
        # CPU seconds carry over from a loaded machine, the wall time does not.
        train_s = max(wall - eval_s, 1e-9)
        return {"time_s": wall, "env_steps": algo.env_steps_total, "updates": updates,
                "reached": best >= CARTPOLE_TARGET, "best_eval": best, "eval_s": eval_s,
                "evals": num_evals, "cpu_s": cpu,
                "driver_cpu_s": time.process_time() - driver_cpu_start,
                "updates_per_s": updates / train_s,
                "env_steps_per_s": algo.env_steps_total / train_s,
                "cpu_ms_per_update": 1000 * cpu / max(updates, 1)}
    finally:
        algo.stop()


def dqn_updates_per_s(num_updates: int, output: str) -> dict:
    """Updates/s of DQN's loop once learning started (iteration time: sampling included), and of
    the same prioritized sampling + SGD step done in turn in one process."""
    from pyactor.rl.buffers import PrioritizedReplayBuffer
    from pyactor.rl.dqn import DQNLearner, QModule

    config = rl.DQNConfig(env="CartPole-v1", seed=0, output=output, log_to_tensorboard=False)
    algo = config.build()
    try:
        while algo.train()["learner/num_updates_total"] == 0:
            pass
        done, elapsed = 0, 0.0
        while done < num_updates:
            result = algo.train()
            done += result["learner/num_updates"]
            elapsed += result["time_this_iter_s"]
    finally:
        algo.stop()
    obs_space, act_space = rl_envs.probe_spaces("CartPole-v1", {})
    spec = ModuleSpec(QModule, obs_space, act_space, {**config.model, "dueling": config.dueling})
    learner = DQNLearner(spec, config.to_dict(), seed=0)
    buffer = PrioritizedReplayBuffer(config.replay_buffer_capacity,
                                     config.prioritized_replay_alpha, seed=0)
    rng = np.random.default_rng(0)
    size = 20_000
    buffer.add({"obs": rng.normal(size=(size, 4)).astype(np.float32),
                "actions": rng.integers(0, 2, size), "rewards": np.ones(size, np.float32),
                "next_obs": rng.normal(size=(size, 4)).astype(np.float32),
                "terminateds": np.zeros(size, bool),
                "discounts": np.full(size, config.gamma ** config.n_step, np.float32)})
    start = time.perf_counter()
    for _ in range(num_updates):
        out = learner.update([buffer.sample(config.train_batch_size, 0.4)])
        buffer.update_priorities(out["ids"], out["priorities"])
    baseline = num_updates / (time.perf_counter() - start)
    # The SGD step alone, CPU ms per update: rl/q_step.py's numpy step against the same step
    # through autograd (the learner's fallback), alternated on the same K batches.
    batches = buffer.sample_batches(config.replay_batches_per_request, config.train_batch_size)
    numpy_step, hand, autograd = learner.numpy_step, [], []
    for _ in range(5):
        for times, step in ((hand, numpy_step), (autograd, None)):
            learner.numpy_step = step
            cpu_start = time.process_time()
            for _ in range(max(num_updates // 40, 1)):
                learner.update([batches])
            times.append((time.process_time() - cpu_start)
                         / (max(num_updates // 40, 1) * config.replay_batches_per_request))
    learner.numpy_step = numpy_step
    return {"value": done / elapsed, "baseline": baseline,
            "sgd_cpu_ms": 1000 * statistics.median(hand),
            "autograd_sgd_cpu_ms": 1000 * statistics.median(autograd)}


def learner_throughput(config, iterations: int) -> dict:
    """Learner updates/s and env steps/s of `config` over `iterations` iterations once learning
    has started (time from the iterations' own clocks), with the CPU seconds they used."""
    algo = config.build()
    try:
        while algo.train()["learner/num_updates_total"] == 0:
            pass
        updates = steps = 0
        elapsed = 0.0
        cpu_start = tree_cpu_seconds()
        for _ in range(iterations):
            result = algo.train()
            updates += result["learner/num_updates"]
            steps += result["env_steps_this_iter"]
            elapsed += result["time_this_iter_s"]
        cpu = tree_cpu_seconds() - cpu_start
    finally:
        algo.stop()
    return {"updates_per_s": updates / elapsed, "env_steps_per_s": steps / elapsed,
            "cpu_s_per_1k_updates": 1000 * cpu / max(updates, 1)}


def apex_vs_dqn(rounds: int, iterations: int, output: str) -> dict:
    """Ape-X's defaults (2 runners with the paper's epsilons, 2 replay shards, runner-side
    priorities, periodic broadcasts) against prioritized DQN with the same 2 runners, alternated."""
    common = dict(env="CartPole-v1", seed=0, output=output, log_to_tensorboard=False)
    apex, dqn = [], []
    for _ in range(rounds):
        apex.append(learner_throughput(rl.ApexDQNConfig(**common), iterations))
        dqn.append(learner_throughput(rl.DQNConfig(num_env_runners=2, prioritized_replay=True,
                                                   **common), iterations))
    return {key: (statistics.median(r[key] for r in apex), statistics.median(r[key] for r in dqn))
            for key in apex[0]}


def process_tree_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of this process and each of its descendants, by pid."""
    import os
    ticks = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: cpu[pid] for pid in tree if pid in cpu}


def continuous_to_minus_200(config_class, seed: int, output: str, max_steps: int = 20_000) -> dict:
    """Env steps, wall time, gradient steps and CPU seconds until the greedy policy's mean return
    over 10 episodes (evaluated every 1,000 env steps) is >= -200 on Pendulum-v1."""
    cpu_before = process_tree_cpu_s()
    start = time.monotonic()
    algo = config_class(env="Pendulum-v1", seed=seed, output=output,
                        log_to_tensorboard=False).build()
    try:
        best, evaluated_at = -float("inf"), 0
        while best < PENDULUM_SOLVED and algo.env_steps_total < max_steps:
            result = algo.train()
            if result["env_steps_total"] - evaluated_at >= 1_000:
                evaluated_at = result["env_steps_total"]
                best = max(best, algo.evaluate(episodes=10)["episode_return_mean"])
        wall_s = time.monotonic() - start
        cpu_after = process_tree_cpu_s()
    finally:
        algo.stop()
    cpu_s = sum(cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items())
    updates = result["learner/num_updates_total"]
    return {"env_steps": algo.env_steps_total, "time_s": wall_s, "grad_steps": updates,
            "grad_steps_per_s": updates / wall_s, "cpu_s": cpu_s,
            "reached": best >= PENDULUM_SOLVED, "best_eval": best}


def plain_sac_step(config, obs_dim: int, act_dim: int):
    """A step function doing SAC's update the plain way (CleanRL's sac_continuous_action.py
    layout), for sac_updates_per_s's baseline: same sizes, same losses."""
    from torch import nn

    hidden = config.model["hidden"]

    def net(n_in, n_out):
        sizes = [n_in, *hidden]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], n_out))

    actor, q1, q2 = net(obs_dim, 2 * act_dim), net(obs_dim + act_dim, 1), net(obs_dim + act_dim, 1)
    q1_target, q2_target = net(obs_dim + act_dim, 1), net(obs_dim + act_dim, 1)
    q1_target.load_state_dict(q1.state_dict())
    q2_target.load_state_dict(q2.state_dict())
    log_alpha = torch.zeros(1, requires_grad=True)
    q_opt = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=config.critic_lr)
    pi_opt = torch.optim.Adam(actor.parameters(), lr=config.actor_lr)
    a_opt = torch.optim.Adam([log_alpha], lr=config.alpha_lr)

    def sample(obs):
        mean, log_std = actor(obs).chunk(2, -1)
        std = log_std.clamp(-20, 2).exp()
        u = torch.distributions.Normal(mean, std).rsample()
        a = torch.tanh(u)
        logp = torch.distributions.Normal(mean, std).log_prob(u) - torch.log(1 - a * a + 1e-6)
        return a, logp.sum(-1, keepdim=True)

    def step(b):
        obs, act, rew = torch.as_tensor(b["obs"]), torch.as_tensor(b["actions"]), torch.as_tensor(b["rewards"])[:, None]
        nxt, done = torch.as_tensor(b["next_obs"]), torch.as_tensor(b["terminateds"]).float()[:, None]
        alpha = log_alpha.exp().item()
        with torch.no_grad():
            na, nlogp = sample(nxt)
            x = torch.cat([nxt, na], -1)
            y = rew + config.gamma * (1 - done) * (torch.min(q1_target(x), q2_target(x)) - alpha * nlogp)
        x = torch.cat([obs, act], -1)
        q_loss = nn.functional.mse_loss(q1(x), y) + nn.functional.mse_loss(q2(x), y)
        q_opt.zero_grad(); q_loss.backward(); q_opt.step()
        a, logp = sample(obs)
        x = torch.cat([obs, a], -1)
        pi_loss = (alpha * logp - torch.min(q1(x), q2(x))).mean()
        pi_opt.zero_grad(); pi_loss.backward(); pi_opt.step()
        a_loss = (-log_alpha.exp() * (logp.detach() - act_dim)).mean()
        a_opt.zero_grad(); a_loss.backward(); a_opt.step()
        with torch.no_grad():
            for net_, target in ((q1, q1_target), (q2, q2_target)):
                for p, tp in zip(net_.parameters(), target.parameters()):
                    tp.data.mul_(1 - config.tau).add_(config.tau * p.data)

    return step


def sac_updates_per_s(rounds: int, updates: int = 300) -> dict:
    """Gradient steps per CPU second: SACLearner against plain_sac_step, alternated."""
    from pyactor.rl.continuous_modules import SquashedGaussianModule
    from pyactor.rl.sac import SACLearner

    config = rl.SACConfig(env="Pendulum-v1")
    obs_space, act_space = rl_envs.probe_spaces("Pendulum-v1", {})
    spec = ModuleSpec(SquashedGaussianModule, obs_space, act_space,
                      {**config.model, "num_critics": 2, "algorithm": "SAC"})
    learner = SACLearner(spec, config.to_dict(), seed=0)
    plain = plain_sac_step(config, 3, 1)
    rng = np.random.default_rng(0)
    size = config.train_batch_size
    batch = {"obs": rng.normal(size=(size, 3)).astype(np.float32),
             "actions": rng.uniform(-2, 2, (size, 1)).astype(np.float32),
             "rewards": rng.normal(size=size).astype(np.float32),
             "next_obs": rng.normal(size=(size, 3)).astype(np.float32),
             "terminateds": np.zeros(size, bool),
             "discounts": np.full(size, config.gamma, np.float32)}
    ours, base = [], []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(updates):
            learner.update([batch])
        ours.append(updates / (time.process_time() - start))
        start = time.process_time()
        for _ in range(updates):
            plain(batch)
        base.append(updates / (time.process_time() - start))
    return {"value": statistics.median(ours), "baseline": statistics.median(base)}


def bare_env_step_rates(seconds: float = 1.0) -> tuple[float, float]:
    """One gymnasium CartPole-v1 stepped in a plain loop (alternating actions, reset at the end
    of each episode): the simulator's own speed in one process, as (env steps per wall second,
    per CPU second of this process: what carries over from a shared machine)."""
    import gymnasium as gym
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            _, _, terminated, truncated, _ = env.step(steps & 1)
            steps += 1
            if terminated or truncated:
                env.reset()
    rates = steps / (time.perf_counter() - start), steps / (time.process_time() - cpu)
    env.close()
    return rates


def bare_env_steps_per_s(seconds: float = 1.0) -> float:
    return bare_env_step_rates(seconds)[0]


def es_time_to_475(seed: int, output: str, max_iterations: int = 60) -> dict:
    """ES with its default config from build() to a 100-episode mean training return >= 475
    (the 100 most recent population episodes: perturbed policies theta +- sigma eps), with the
    CPU seconds of the driver and of each worker process, and the time of the first iteration
    (the workers' start-up is in it)."""
    start, cpu_start = time.monotonic(), time.process_time()
    algo = rl.ESConfig(env="CartPole-v1", seed=seed, output=output,
                       log_to_tensorboard=False).build()
    try:
        first = None
        while True:
            result = algo.train()
            first = first or result["time_total_s"]
            if result["episode_return_mean"] >= CARTPOLE_TARGET or \
                    result["training_iteration"] >= max_iterations:
                break
        elapsed = time.monotonic() - start
        driver_cpu = time.process_time() - cpu_start
        workers_cpu = [process_cpu_s(pid) for pid in algo.env_runner_group.runner_pids()]
    finally:
        algo.stop()
    return {"time_s": elapsed, "env_steps": result["env_steps_total"],
            "iterations": result["training_iteration"],
            "reached": result["episode_return_mean"] >= CARTPOLE_TARGET,
            "first_iteration_s": first, "cpu_s": driver_cpu + sum(workers_cpu),
            "driver_cpu_s": driver_cpu, "worker_cpu_s": max(workers_cpu, default=0.0)}


def es_throughput(rounds: int, output: str, iterations: int = 8) -> dict:
    def ours() -> tuple[float, float]:
        algo = rl.ESConfig(env="CartPole-v1", seed=0, output=output,
                           log_to_tensorboard=False).build()
        try:
            algo.train()  # warm-up: first calls and imports in the workers
            pids = algo.env_runner_group.runner_pids()
            steps, episodes = algo.env_steps_total, algo.episodes_total
            cpu_before = time.process_time() + sum(process_cpu_s(pid) for pid in pids)
            start = time.perf_counter()
            for _ in range(iterations):
                algo.train()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() + sum(process_cpu_s(pid) for pid in pids) - cpu_before
            steps, episodes = algo.env_steps_total - steps, algo.episodes_total - episodes
        finally:
            algo.stop()
        return steps / elapsed, steps / episodes, steps, cpu

    ours_rates, bare_rates, lengths, steps, cpus = [], [], [], [], []
    for _ in range(rounds):
        rate, length, n, cpu = ours()
        ours_rates.append(rate)
        lengths.append(length)
        steps.append(n)
        cpus.append(cpu)
        bare_rates.append(bare_env_steps_per_s())
    return {"value": statistics.median(ours_rates), "baseline": statistics.median(bare_rates),
            "episode_len": statistics.median(lengths), "env_steps": sum(steps),
            "cpu_s": sum(cpus)}


def async_time_to_475(config, max_steps: int = 1_000_000) -> dict:
    """Wall time, env steps and CPU seconds (driver + runners) from build() to a 100-episode
    mean training return >= 475."""
    import os
    start, driver_cpu = time.monotonic(), process_cpu_s(os.getpid())
    algo = config.build()
    try:
        result = algo.train()
        while not result["episode_return_mean"] >= CARTPOLE_TARGET \
                and result["env_steps_total"] < max_steps:
            result = algo.train()
        runner_cpu = sum(process_cpu_s(pid) for pid in algo.env_runner_group.runner_pids())
    finally:
        algo.stop()
    return {"time_s": time.monotonic() - start, "env_steps": result["env_steps_total"],
            "reached": result["episode_return_mean"] >= CARTPOLE_TARGET,
            "cpu_s": process_cpu_s(os.getpid()) - driver_cpu + runner_cpu,
            "policy_lag": result["policy_lag"]}


def rows(args) -> list[dict]:
    out = []
    output = tempfile.mkdtemp(prefix="rl_bench_")
    torch.set_num_threads(1)
    have_sb3 = "sb3" not in args.skip
    if have_sb3:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            have_sb3 = False
    if "cartpole" not in args.skip:
        ours_times, sb3_times = [], []
        for seed in args.seeds:
            config = rl.PPOConfig(env="CartPole-v1", seed=seed, output=output,
                                  log_to_tensorboard=False)
            ours = ours_time_to(config, CARTPOLE_TARGET, 300_000)
            row = {"name": f"ppo_cartpole_s{seed}", "value": ours["time_s"], "unit": "s",
                   **{key: ours[key] for key in (
                       "env_steps", "cpu_s", "driver_cpu_s", "update_cpu_s", "runner_cpu_s",
                       "runner_first_iter_cpu_s", "sgd_steps", "iterations", "reached")}}
            ours_times.append(ours["time_s"] if ours["reached"] else float("inf"))
            if have_sb3:
                sb3 = sb3_time_to_475(seed)
                row.update(baseline=sb3["time_s"], baseline_env_steps=sb3["env_steps"],
                           baseline_cpu_s=sb3["cpu_s"], baseline_reached=sb3["reached"],
                           ratio=ours["time_s"] / sb3["time_s"],
                           cpu_ratio=ours["cpu_s"] / sb3["cpu_s"])
                sb3_times.append(sb3["time_s"] if sb3["reached"] else float("inf"))
            out.append(emit(row, args))
        median = {"name": "ppo_cartpole_median", "value": statistics.median(ours_times),
                  "unit": "s"}
        if sb3_times:
            median.update(baseline=statistics.median(sb3_times),
                          ratio=statistics.median(ours_times) / statistics.median(sb3_times))
        out.append(emit(median, args))
    if "ppo_update" not in args.skip:
        updates = ppo_update_per_s(args.rounds)
        out.append(emit({"name": "ppo_update_per_s", "unit": "updates/cpu-s", **updates,
                         "ratio": updates["value"] / updates["baseline"]}, args))
    if "sampling" not in args.skip:
        sampled = sampling_throughput(args.rounds)
        out.append(emit({"name": "sampling_2x16", "unit": "steps/s", **sampled,
                         "ratio": sampled["value"] / sampled["baseline"],
                         "cpu_parallel_ceiling": parallel_ceiling(args.rounds)}, args))
        started = runner_start(args.rounds)
        out.append(emit({"name": "runner_start_2x16", "unit": "s", **started,
                         "ratio": started["value"] / started["baseline"]}, args))
    if "pendulum" not in args.skip:
        config = rl.PPOConfig(seed=0, output=output, log_to_tensorboard=False, **PENDULUM_CONFIG)
        result = ours_time_to(config, PENDULUM_TARGET, 200_000)
        out.append(emit({"name": "ppo_pendulum", "value": result["env_steps"], "unit": "env steps",
                         "time_s": result["time_s"], "cpu_s": result["cpu_s"],
                         "reached": result["reached"], "return": result["return"]}, args))
    if "dqn" not in args.skip:
        times = []
        for seed in args.seeds:
            run = dqn_time_to_475(seed, args.dqn_budget_s, output, args.dqn_eval_every)
            times.append(run["time_s"] if run["reached"] else float("inf"))
            out.append(emit({"name": f"dqn_cartpole_s{seed}", "value": run.pop("time_s"),
                             "unit": "s", **run}, args))
        out.append(emit({"name": "dqn_cartpole_median", "value": statistics.median(times),
                         "unit": "s"}, args))
        rates = dqn_updates_per_s(args.dqn_updates, output)
        out.append(emit({"name": "dqn_updates_per_s", "value": rates["value"], "unit": "1/s",
                         "baseline": rates["baseline"],
                         "ratio": rates["value"] / rates["baseline"]}, args))
        out.append(emit({"name": "dqn_sgd_cpu_ms", "value": rates["sgd_cpu_ms"], "unit": "ms",
                         "baseline": rates["autograd_sgd_cpu_ms"],
                         "ratio": rates["sgd_cpu_ms"] / rates["autograd_sgd_cpu_ms"]}, args))
    if "apex" not in args.skip:
        apex = apex_vs_dqn(args.rounds, args.apex_iterations, output)
        for key, unit in (("updates_per_s", "1/s"), ("env_steps_per_s", "steps/s")):
            ours, base = apex[key]
            out.append(emit({"name": f"apex_{key}", "value": ours, "unit": unit, "baseline": base,
                             "ratio": ours / base, "cpu_s_per_1k_updates": apex[
                                 "cpu_s_per_1k_updates"][0],
                             "baseline_cpu_s_per_1k_updates": apex["cpu_s_per_1k_updates"][1]},
                            args))
    if "es" not in args.skip:
        es = es_throughput(args.rounds, output)
        out.append(emit({"name": "es_steps_per_s", "unit": "steps/s", **es,
                         "ratio": es["value"] / es["baseline"]}, args))
    if "es_solve" not in args.skip:
        times, ratios = [], []
        for seed in args.seeds:
            run = es_time_to_475(seed, output)
            bare = bare_env_step_rates()[1]  # baseline, alternated with the runs
            # The same env steps taken by one bare env.step loop, in CPU seconds of it.
            bare_s = run["env_steps"] / bare
            times.append(run["time_s"] if run["reached"] else float("inf"))
            ratios.append(run["time_s"] / bare_s)
            out.append(emit({"name": f"es_cartpole_s{seed}", "value": run.pop("time_s"),
                             "unit": "s", **run, "baseline": bare_s,
                             "bare_steps_per_cpu_s": bare, "ratio": ratios[-1],
                             "cpu_ratio": run["cpu_s"] / bare_s}, args))
        out.append(emit({"name": "es_cartpole_median", "value": statistics.median(times),
                         "unit": "s", "ratio": statistics.median(ratios)}, args))
    for name, config_class in (("ars", rl.ARSConfig), ("a2c", rl.A2CConfig)):
        if name in args.skip:
            continue
        label = name
        times = []
        for seed in args.seeds:
            config = config_class(env="CartPole-v1", seed=seed, output=output,
                                  log_to_tensorboard=False)
            result = ours_time_to(config, CARTPOLE_TARGET, 1_000_000)
            times.append(result["time_s"] if result["reached"] else float("inf"))
            out.append(emit({"name": f"{label}_cartpole_s{seed}", "value": result["time_s"],
                             "unit": "s", "env_steps": result["env_steps"],
                             "cpu_s": result["cpu_s"], "iterations": result["iterations"],
                             "reached": result["reached"]}, args))
        out.append(emit({"name": f"{label}_cartpole_median", "value": statistics.median(times),
                         "unit": "s"}, args))
    for name, config_class in (("impala", rl.IMPALAConfig), ("appo", rl.APPOConfig)):
        if name in args.skip:
            continue
        times = []
        for seed in args.seeds:
            config = config_class(env="CartPole-v1", seed=seed, output=output,
                                  log_to_tensorboard=False)
            result = async_time_to_475(config)
            times.append(result["time_s"] if result["reached"] else float("inf"))
            out.append(emit({"name": f"{name}_cartpole_s{seed}", "value": result.pop("time_s"),
                             "unit": "s", **result}, args))
        out.append(emit({"name": f"{name}_cartpole_median", "value": statistics.median(times),
                         "unit": "s"}, args))
    if "sac" not in args.skip:
        rates = sac_updates_per_s(args.rounds)
        out.append(emit({"name": "sac_updates_per_s", "value": rates["value"], "unit": "1/cpu s",
                         "baseline": rates["baseline"],
                         "ratio": rates["value"] / rates["baseline"]}, args))
    for name in ("sac", "td3", "ddpg"):
        if name in args.skip:
            continue
        steps = []
        for seed in args.seeds:
            run = continuous_to_minus_200(rl.get_config_class(name), seed, output)
            steps.append(run["env_steps"] if run["reached"] else float("inf"))
            out.append(emit({"name": f"{name}_pendulum_s{seed}", "value": run.pop("env_steps"),
                             "unit": "env steps", **run}, args))
        out.append(emit({"name": f"{name}_pendulum_median", "value": statistics.median(steps),
                         "unit": "env steps"}, args))
    import shutil
    shutil.rmtree(output, ignore_errors=True)
    return out


# Row groups for --only / --skip; a new group adds its name here and tests `name not in args.skip`.
GROUPS = ["cartpole", "sb3", "ppo_update", "sampling", "pendulum", "dqn", "apex", "es", "es_solve", "ars",
          "a2c", "impala", "appo", "sac", "td3", "ddpg"]


class Selection:
    """`name in selection`: the group is skipped (named in --skip, or --only names others)."""

    def __init__(self, only: list[str], skip: list[str]):
        self.only, self.skip = set(only), set(skip)

    def __contains__(self, name: str) -> bool:
        if name == "sb3":  # the baseline goes with its row group
            return name in self.skip or bool(self.only) and not ({"sb3", "cartpole"} & self.only)
        return name in self.skip or bool(self.only) and name not in self.only


def emit(row: dict, args) -> dict:
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        extras = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items() if k not in ("name", "value", "unit"))
        print(f"{row['name']:22s} {row['value']:12,.2f} {row['unit']:10s} {extras}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="sampling rounds (median)")
    parser.add_argument("--only", nargs="*", default=[], choices=GROUPS,
                        help="run only these row groups")
    parser.add_argument("--skip", nargs="*", default=[], choices=GROUPS,
                        help="skip these row groups (sb3: the SB3 baseline of cartpole)")
    parser.add_argument("--apex-iterations", type=int, default=30,
                        help="iterations timed for the apex rows")
    parser.add_argument("--dqn-budget-s", type=float, default=120.0,
                        help="DQN's time limit per seed")
    parser.add_argument("--dqn-updates", type=int, default=2_000,
                        help="updates timed for dqn_updates_per_s")
    parser.add_argument("--dqn-eval-every", type=int, default=8,
                        help="DQN training iterations (with updates) between greedy evaluations")
    args = parser.parse_args(argv)
    args.skip = Selection(args.only, args.skip)
    pa.init(num_cpus=2)
    try:
        rows(args)
    finally:
        pa.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
