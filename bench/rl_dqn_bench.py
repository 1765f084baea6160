"""Benchmark of pyactor.rl's DQN on CartPole-v1: time to a greedy policy that solves it, and the
learner's update rate through the replay actor.

    time_to_475     wall time from build() (actor start-up included) until the greedy policy's
                    mean return over 20 evaluation episodes reaches 475, per seed (0-2 by
                    default), with the env steps and learner updates it took. The policy is
                    evaluated after an iteration once 2,000 env steps have passed since the last
                    evaluation; evaluation time counts.
    updates_per_s   learner updates per second through the pipeline (replay actor sampling
                    prioritized batches while the driver runs SGD), against the baseline measured
                    in the same run: the same updates done in one process, sampling the same
                    prioritized buffer and then stepping the same network (no overlap).

    python bench/rl_dqn_bench.py                # a table
    python bench/rl_dqn_bench.py --json         # one JSON object a line: name, value, unit, ...
    python bench/rl_dqn_bench.py --seeds 0 --budget-s 120
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

from pyactor import rl
from pyactor.rl.buffers import PrioritizedReplayBuffer

TARGET = 475.0
EVAL_EVERY_STEPS = 2_000


def time_to_solve(seed: int, budget_s: float, output: str) -> dict:
    """Train default DQN until the greedy 20-episode mean reaches TARGET or budget_s passes."""
    start = time.monotonic()
    algo = rl.DQNConfig(env="CartPole-v1", seed=seed, output=output,
                        log_to_tensorboard=False).build()
    try:
        best, last_eval_steps, eval_s, learn_s, updates = 0.0, 0, 0.0, 0.0, 0
        while time.monotonic() - start < budget_s:
            result = algo.train()
            learn_s += result["time_this_iter_s"]
            updates = result["learner/num_updates_total"]
            if result["env_steps_total"] - last_eval_steps >= EVAL_EVERY_STEPS:
                last_eval_steps = result["env_steps_total"]
                eval_start = time.monotonic()
                best = max(best, algo.evaluate(episodes=20)["episode_return_mean"])
                eval_s += time.monotonic() - eval_start
                if best >= TARGET:
                    break
        return {"seed": seed, "solved": best >= TARGET, "time_s": time.monotonic() - start,
                "env_steps": algo.env_steps_total, "updates": updates, "best_eval": best,
                "eval_s": eval_s, "train_s": learn_s}
    finally:
        algo.stop()


def pipeline_updates_per_s(num_updates: int, output: str) -> float:
    """Learner updates/s of DQN's own loop once learning has started (iteration time only)."""
    config = rl.DQNConfig(env="CartPole-v1", seed=0, output=output, log_to_tensorboard=False,
                          learning_starts=1000, replay_ratio=1.0)
    algo = config.build()
    try:
        while algo.train()["learner/num_updates_total"] == 0:
            pass
        done, elapsed = 0, 0.0
        while done < num_updates:
            result = algo.train()
            done += result["learner/num_updates"]
            elapsed += result["time_this_iter_s"]
        return done / elapsed
    finally:
        algo.stop()


def in_process_updates_per_s(num_updates: int) -> float:
    """The baseline: the same prioritized sampling and the same SGD step, one after the other in
    one process (what the replay actor lets the pipeline overlap)."""
    import gymnasium as gym
    import torch

    from pyactor.rl.dqn import DQNLearner, QModule
    from pyactor.rl.module import ModuleSpec

    config = rl.DQNConfig(env="CartPole-v1", seed=0)
    spec = ModuleSpec(QModule, gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2),
                      {**config.model, "dueling": config.dueling})
    learner = DQNLearner(spec, config.to_dict(), seed=0)
    buffer = PrioritizedReplayBuffer(config.replay_buffer_capacity, config.prioritized_replay_alpha,
                                     seed=0)
    rng = np.random.default_rng(0)
    size = 20_000
    buffer.add({"obs": rng.normal(size=(size, 4)).astype(np.float32),
                "actions": rng.integers(0, 2, size), "rewards": np.ones(size, np.float32),
                "next_obs": rng.normal(size=(size, 4)).astype(np.float32),
                "terminateds": np.zeros(size, bool),
                "discounts": np.full(size, config.gamma ** config.n_step, np.float32)})
    torch.set_num_threads(1)
    start = time.perf_counter()
    for _ in range(num_updates):
        batch = buffer.sample(config.train_batch_size, 0.4)
        out = learner.update([batch])
        buffer.update_priorities(out["ids"], out["priorities"])
    return num_updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--updates", type=int, default=2_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as output:
        for seed in args.seeds:
            run = time_to_solve(seed, args.budget_s, output)
            rows.append({"name": f"time_to_475_seed{seed}", "value": round(run["time_s"], 2),
                         "unit": "s", **{k: v for k, v in run.items() if k != "time_s"}})
        baseline = in_process_updates_per_s(args.updates)
        pipeline = pipeline_updates_per_s(args.updates, output)
    rows.append({"name": "updates_per_s", "value": round(pipeline, 1), "unit": "1/s",
                 "baseline": round(baseline, 1), "ratio": round(pipeline / baseline, 3)})
    solved = [row["value"] for row in rows[:-1] if row["solved"]]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"DQN on CartPole-v1 (target: greedy 20-episode mean >= {TARGET:.0f})")
    print(f"{'seed':>4} {'solved':>6} {'time s':>8} {'env steps':>10} {'updates':>8} "
          f"{'best eval':>9} {'eval s':>7}")
    for row in rows[:-1]:
        print(f"{row['seed']:>4} {str(row['solved']):>6} {row['value']:>8.1f} "
              f"{row['env_steps']:>10} {row['updates']:>8} {row['best_eval']:>9.1f} "
              f"{row['eval_s']:>7.1f}")
    if solved:
        print(f"median time to 475 over the solved seeds: {statistics.median(solved):.1f} s")
    last = rows[-1]
    print(f"learner updates/s: pipeline {last['value']:.0f}, in one process {last['baseline']:.0f}"
          f" (ratio {last['ratio']:.2f})")


if __name__ == "__main__":
    main()
