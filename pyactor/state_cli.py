"""The `pyactor list|summary|memory|logs` commands, over pyactor.util.state.

    pyactor list actors|tasks|objects|nodes|workers|placement-groups [--filter K=V] [--limit N]
                 [--json] [--address HOST:PORT]
    pyactor summary tasks|actors|objects [--json]
    pyactor memory [--json]
    pyactor logs ACTOR_ID_OR_WORKER_PID [--err] [--follow]

Tables are plain text, one row per line; --json prints one JSON object per row (the row's
dataclass fields), for scripts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

LIST_KINDS = ("actors", "tasks", "objects", "nodes", "workers", "placement-groups")
SUMMARY_KINDS = ("tasks", "actors", "objects")

# The columns each table shows (every field is in --json).
COLUMNS = {
    "actors": ("actor_id", "class_name", "name", "state", "pid", "node_id", "restarts",
               "error"),
    "tasks": ("task_id", "name", "state", "type", "pid", "node_id", "attempt", "duration_s",
              "error"),
    "objects": ("object_id", "size_bytes", "location", "state", "owner_pid", "node_id",
                "holders"),
    "nodes": ("node_id", "state", "is_head", "address", "num_workers", "num_actors",
              "store_used_bytes", "resources_available"),
    "workers": ("pid", "kind", "state", "node_id", "actor_id", "uss_bytes", "pss_bytes",
                "store_rss_bytes"),
    "placement-groups": ("placement_group_id", "name", "strategy", "state", "bundles"),
}
SHORT_IDS = ("actor_id", "task_id", "node_id", "placement_group_id", "worker_id")


def add_commands(commands) -> None:
    """Add the state commands to `pyactor`'s sub-command parser."""
    def common(parser):
        parser.add_argument("--address", default=None, metavar="HOST:PORT",
                            help="the cluster (default: the one started on this host)")
        parser.add_argument("--json", action="store_true",
                            help="print one JSON object per row instead of a table")

    listing = commands.add_parser(
        "list", help="list actors, tasks, objects, nodes, workers or placement groups",
        description="List the cluster's actors, tasks (running, waiting and recently "
        "finished), objects, nodes, worker processes or placement groups.")
    listing.add_argument("kind", choices=LIST_KINDS, help="what to list")
    listing.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                         help='keep rows whose field matches, e.g. --filter "state=RUNNING" '
                         '(KEY!=VALUE excludes); repeat to combine')
    listing.add_argument("--limit", type=int, default=100, metavar="N",
                         help="at most N rows (tasks: the most recent); default 100")
    common(listing)

    summary = commands.add_parser("summary", help="count tasks, actors or objects by state",
                                  description="Count tasks per function and state, actors "
                                  "per class and state, or objects per location.")
    summary.add_argument("kind", choices=SUMMARY_KINDS, help="what to summarize")
    common(summary)

    memory = commands.add_parser(
        "memory", help="every object, who keeps it alive and why; memory per process",
        description="Every object with its size, where it lives, its owner and who keeps it "
        "alive (and why); totals per node and per process, with each process's USS/PSS and "
        "the store pages it maps shown apart.")
    common(memory)

    logs = commands.add_parser("logs", help="print a worker's or an actor's output",
                               description="Print what a worker process (by pid) or the "
                               "worker hosting an actor (by actor id, or its first "
                               "characters) wrote to stdout, or stderr with --err.")
    logs.add_argument("target", metavar="ACTOR_ID_OR_WORKER_PID",
                      help="a worker's pid, or an actor's id (or its first characters)")
    logs.add_argument("--err", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing what it writes (Ctrl-C stops)")
    logs.add_argument("--address", default=None, metavar="HOST:PORT",
                      help="the cluster (default: the one started on this host)")


def main(args) -> int:
    from pyactor.exceptions import PyActorError
    try:
        return {"list": cmd_list, "summary": cmd_summary, "memory": cmd_memory,
                "logs": cmd_logs}[args.command](args)
    except (ValueError, TypeError, PyActorError, ConnectionError) as error:
        print(f"pyactor {args.command}: {error}", file=sys.stderr)
        return 1


def cmd_list(args) -> int:
    from pyactor.util import state
    function = getattr(state, "list_" + args.kind.replace("-", "_"))
    rows = function(filters=args.filter or None, limit=args.limit, address=args.address)
    if args.json:
        for row in rows:
            print(json.dumps(dataclasses.asdict(row), default=str))
        return 0
    print(format_table(rows, COLUMNS[args.kind]))
    return 0


def cmd_summary(args) -> int:
    from pyactor.util import state
    summary = getattr(state, "summarize_" + args.kind)(address=args.address)
    if args.json:
        print(json.dumps(summary))
        return 0
    if not summary:
        print(f"no {args.kind}")
    for name, counts in summary.items():
        parts = ", ".join(f"{key} {value:,}" for key, value in counts.items())
        print(f"{name or '(unnamed)'}: {parts}")
    return 0


def cmd_memory(args) -> int:
    from pyactor.util import state
    summary = state.memory_summary(address=args.address)
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), default=str))
        return 0
    print(summary)
    return 0


def cmd_logs(args) -> int:
    from pyactor._private import worker_logs
    from pyactor.util import state
    workers = state.list_workers(limit=None, address=args.address)
    target = args.target.strip().lower()
    matches = []
    if target.isdigit():
        matches = [w for w in workers if w.pid == int(target) and w.kind == "worker"]
    if not matches:  # an actor id (whose first characters may all be digits)
        matches = [w for w in workers if w.actor_id and w.actor_id.startswith(target)]
    if not matches:
        print(f"no worker with pid {target} and no actor whose id starts with {target!r} "
              f"is running (`pyactor list workers` shows them)", file=sys.stderr)
        return 1
    if len(matches) > 1:
        print(f"{target!r} names {len(matches)} workers: give more of the actor id",
              file=sys.stderr)
        return 1
    suffix = ".err" if args.err else ".out"
    paths = [p for p in matches[0].log_files if p.endswith(suffix) or
             p.endswith(suffix + ".1")]
    if not paths:
        print(f"worker {matches[0].pid} has no log file here (its node runs on another host, "
              f"or it wrote nothing yet)", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    if not args.follow:
        out.write(worker_logs.read_log(paths))
        out.flush()
        return 0
    current = [p for p in paths if not p.endswith(".1")]

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()
    try:
        worker_logs.follow(current, write, stop=lambda: not _alive(matches[0].pid))
    except KeyboardInterrupt:
        pass
    return 0


def format_table(rows: list, columns: tuple) -> str:
    if not rows:
        return "(none)"
    table = [list(columns)]
    for row in rows:
        values = dataclasses.asdict(row)
        table.append([_cell(column, values[column]) for column in columns])
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in table)


def _cell(column: str, value) -> str:
    if column in SHORT_IDS and isinstance(value, str):
        return value[:12] or "-"
    if column == "holders":
        return "; ".join(f"{h['kind']} pid {h['pid']}" for h in value) or "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
