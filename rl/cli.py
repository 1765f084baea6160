"""`pyactor rl ...`: train, evaluate and plot from the command line (RLlib's `rllib train` verbs).

    pyactor rl train --algo PPO --env CartPole-v1 --stop '{"episode_return_mean": 475}'
        [--config '{"lr": 1e-3}'] [--num-env-runners N] [--seed S] [--output DIR]
    pyactor rl evaluate CHECKPOINT [--episodes 10] [--render]
    pyactor rl plot RUN_DIR [RUN_DIR ...] [-o curve.png]

pyactor/cli.py imports this module only when the `rl` subcommand is used, so the other commands
never load torch or gymnasium.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyactor rl", description="reinforcement learning")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an algorithm until a stop condition")
    train.add_argument("--algo", required=True, help="registered algorithm name, e.g. PPO")
    train.add_argument("--env", required=True, help="gymnasium id or registered env name")
    train.add_argument("--stop", default='{"training_iteration": 100}',
                       help='JSON {result_key: value}: stop when any key reaches its value')
    train.add_argument("--config", default="{}", help="JSON of config fields to override")
    train.add_argument("--num-env-runners", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--output", default=None, help="run directory root (~/pyactor_results)")

    evaluate = commands.add_parser("evaluate", help="mean return of a checkpoint's greedy policy")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--render", action="store_true", help="show episodes (needs a display)")

    plot = commands.add_parser("plot", help="PNG of return vs env steps and wall time")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("-o", "--output", default="curve.png")

    args = parser.parse_args(argv)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "plot": cmd_plot}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"pyactor rl {args.command}: error: {error}", file=sys.stderr)
        return 2


def _json_object(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} is not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


def progress_line(result: dict) -> str:
    ret = result["episode_return_mean"]
    ret_text = "     n/a" if ret is None or math.isnan(ret) else f"{ret:8.1f}"
    return (f"iter {result['training_iteration']:5d}  env steps {result['env_steps_total']:9,d}  "
            f"steps/s {result['env_steps_per_s']:9,.0f}  return {ret_text}  "
            f"time {result['time_total_s']:7.1f} s")


def cmd_train(args) -> int:
    from pyactor.rl.algorithm import should_stop
    from pyactor.rl.config import get_config_class

    stop = _json_object(args.stop, "--stop")
    overrides = _json_object(args.config, "--config")
    for flag, key in ((args.num_env_runners, "num_env_runners"), (args.seed, "seed"),
                      (args.output, "output")):
        if flag is not None:
            overrides[key] = flag
    config = get_config_class(args.algo)().replace(env=args.env, **overrides)
    algo = config.build()
    try:
        print(f"{config.algo_name} on {args.env}: stop at {json.dumps(stop)}", flush=True)
        try:
            while True:
                result = algo.train()
                print(progress_line(result), flush=True)
                if should_stop(result, stop):
                    break
        except KeyboardInterrupt:
            print("interrupted: saving a checkpoint", flush=True)
        checkpoint = algo.save()
        print(f"run directory: {algo.run_dir}")
        print(f"final checkpoint: {checkpoint}")
    finally:
        algo.stop()
    return 0


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_evaluate(args) -> int:
    from pyactor.rl.algorithm import Algorithm

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    render = args.render and display_available()
    if args.render and not render:
        print("no display found ($DISPLAY and $WAYLAND_DISPLAY are unset): evaluating without "
              "rendering", flush=True)
    algo = Algorithm.from_checkpoint(args.checkpoint, num_env_runners=0)
    try:
        if render:
            returns = _rendered_episodes(algo, args.episodes)
            mean = sum(returns) / len(returns)
        else:
            mean = algo.evaluate(args.episodes)["episode_return_mean"]
        print(f"{algo.config.algo_name} {algo.config.env}: mean return over {args.episodes} "
              f"episodes: {mean:.2f}")
    finally:
        algo.stop()
    return 0


def _rendered_episodes(algo, episodes: int) -> list[float]:
    import gymnasium as gym

    env = gym.make(algo.config.env, render_mode="human", **algo.config.env_config) \
        if isinstance(algo.config.env, str) else algo.config.env(algo.config.env_config)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(algo.compute_single_action(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def cmd_plot(args) -> int:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("pyactor rl plot needs matplotlib: pip install 'pyactor[plot]'", file=sys.stderr)
        return 2
    from pyactor.rl.logger import read_results

    figure, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run_dir in args.run_dirs:
        if not os.path.isfile(os.path.join(run_dir, "result.json")):
            raise FileNotFoundError(f"{run_dir!r} is not a run directory (no result.json)")
        results = [r for r in read_results(run_dir) if r.get("episode_return_mean") is not None]
        label = os.path.basename(os.path.normpath(run_dir))
        returns = [r["episode_return_mean"] for r in results]
        by_steps.plot([r["env_steps_total"] for r in results], returns, label=label)
        by_time.plot([r["time_total_s"] for r in results], returns, label=label)
    by_steps.set_xlabel("env steps")
    by_time.set_xlabel("wall time (s)")
    for axes in (by_steps, by_time):
        axes.set_ylabel("episode return (mean of last 100)")
        axes.grid(alpha=0.3)
    by_steps.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")
    return 0
