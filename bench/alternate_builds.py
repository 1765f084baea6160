"""Two builds of pyactor, timed in alternation: `pyactor microbenchmark --quick --json` of a
previous build (a folder holding its `pyactor` package, e.g. `git archive main pyactor | tar -x`,
with this build's compiled `_store_cffi` copied in) and of this one, one after the other, for
several rounds, so both see the same machine. Prints, per row, both medians and their ratio.

    python bench/alternate_builds.py --before /tmp/before [--rounds 3] [--rows a,b] [--json]
                                     [--script bench/task_actor_rows.py]

Used to check that state recording (task_events.py) leaves the task and actor rows within the
noise: the ratio's spread over rounds is that noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

DEFAULT_ROWS = ("single_client_task_roundtrip", "single_client_tasks_sync",
                "single_client_tasks_and_get_batch", "single_client_tasks_async",
                "single_client_task_chain_1000", "1_1_actor_call_roundtrip",
                "1_1_actor_calls_sync", "1_1_actor_calls_async", "1_1_async_actor_calls_async",
                "n_n_actor_calls_async")


def run_build(pythonpath: str | None, script: str | None = None) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.abspath(script)] if script else [
        sys.executable, "-m", "pyactor.cli", "microbenchmark", "--quick", "--json"]
    # Not from a checkout: `python -m` puts the working folder first on the path.
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True,
                         timeout=900, cwd=tempfile.gettempdir()).stdout
    rows = {}
    for line in out.splitlines():
        row = json.loads(line)
        rows[row["name"]] = row["value"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="folder holding the previous build")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--script", default=None,
                        help="run this script (JSON rows, e.g. bench/task_actor_rows.py) "
                        "instead of `pyactor microbenchmark --quick`")
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    before: dict[str, list] = {n: [] for n in names}
    after: dict[str, list] = {n: [] for n in names}
    for round_index in range(args.rounds):
        order = [("before", args.before), ("after", None)]
        if round_index % 2:
            order.reverse()  # neither build always runs first
        for label, path in order:
            rows = run_build(path, args.script)
            for name in names:
                (before if label == "before" else after)[name].append(rows.get(name, 0.0))
    for name in names:
        if not any(before[name]) and not any(after[name]):
            continue  # a row the script does not print (e.g. --script with the default rows)
        b, a = statistics.median(before[name]), statistics.median(after[name])
        ratios = [y / x for x, y in zip(before[name], after[name]) if x]
        record = {"name": name, "before": b, "after": a, "ratio": a / b if b else None,
                  "before_runs": before[name], "after_runs": after[name],
                  "ratio_per_round": ratios}
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{name:<36} before {b:12,.1f}  after {a:12,.1f}  ratio {a / b if b else 0:5.2f}  "
                  f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
