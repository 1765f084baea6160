"""The `pyactor` command line: start and stop nodes, show a cluster, run the microbenchmark.

    pyactor start --head [--port 6380] [--num-cpus N] [--resources '{"x": 2}']
    pyactor start --address HOST:PORT [--token T]
    pyactor --version; pyactor COMMAND --help
    pyactor status [--address HOST:PORT] [--token T]
    pyactor stop
    pyactor dashboard [--address HOST:PORT] [--port 8265]   (see pyactor/dashboard/)
    pyactor microbenchmark [--quick] [--json]
    pyactor list actors|tasks|objects|nodes|workers|placement-groups [--filter K=V] [--json]
    pyactor summary tasks|actors|objects; pyactor memory; pyactor logs ACTOR_OR_PID [--follow]
                                         (state_cli.py)
    pyactor tune plot EXP_DIR [--metric M] [-o OUT.png]
    pyactor rl train|evaluate|plot ...   (see rl/cli.py; loads torch only when used)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import shutil
import tempfile
import time

from pyactor._private import session
from pyactor.exceptions import AuthenticationError

DEFAULT_PORT = 6380


def build_parser() -> argparse.ArgumentParser:
    from pyactor import __version__
    parser = argparse.ArgumentParser(prog="pyactor", description="pyactor command line: start "
                                     "and stop the nodes of a cluster, show it, time it.")
    parser.add_argument("--version", action="version", version=f"pyactor {__version__}",
                        help="print pyactor's version and exit")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    start = commands.add_parser("start", help="start a node in the background",
                                description="Start a node in the background: the head of a "
                                "new cluster (--head) or a node joining one (--address).")
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true",
                      help="start the head of a new cluster (prints its address and token)")
    role.add_argument("--address", metavar="HOST:PORT", help="address of the head to join")
    start.add_argument("--port", type=int, default=None,
                       help=f"port to listen on (head default {DEFAULT_PORT}; others: any free)")
    start.add_argument("--num-cpus", type=float, default=None, metavar="N",
                       help="CPUs this node offers to tasks (default: the host's CPU count)")
    start.add_argument("--num-gpus", type=float, default=None, metavar="N",
                       help="GPUs this node offers (default: those found on the host)")
    start.add_argument("--resources", default="{}", metavar="JSON",
                       help='custom resources as a JSON object, e.g. \'{"x": 2}\'')
    start.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES",
                       help="size of this node's shared-memory object store in bytes "
                       "(default: 30%% of the host's memory, at most the free space of /dev/shm)")
    start.add_argument("--spill-dir", default=None, metavar="DIR",
                       help="where objects go when the store is full (default: a folder in "
                       "the session's temporary directory); read back when needed")
    start.add_argument("--spill-limit-bytes", type=int, default=None, metavar="BYTES",
                       help="most bytes this node may spill to disk at once (default: until "
                       "the disk is 95%% full)")
    start.add_argument("--node-ip-address", default="127.0.0.1", metavar="IP",
                       help="address to bind and advertise (default: loopback only)")
    start.add_argument("--token", default=None,
                       help="cluster token when joining (default: $PYACTOR_TOKEN, or the one "
                       "recorded on this host by `pyactor start --head`)")
    start.add_argument("--logging-level", default=None, metavar="LEVEL",
                       help="level of the node's and its workers' log lines (DEBUG, INFO, "
                       "WARNING...; default WARNING)")
    start.add_argument("--metrics-export-port", type=int, default=0, metavar="PORT",
                       help="port of this node's Prometheus endpoint (default: any free port; "
                       "-1: none); `pyactor status` lists it. Needs pyactor[metrics]")
    start.add_argument("--dashboard-port", type=int, default=None, metavar="PORT",
                       help="with --head: also serve the dashboard on this port of 127.0.0.1 "
                       "(see `pyactor dashboard`); stopped by `pyactor stop`")

    status = commands.add_parser("status", help="show nodes, resources, actors, store use",
                                 description="Show the nodes of a cluster, their resources, "
                                 "actors, workers and object store use.")
    add_cluster_options(status)

    dashboard = commands.add_parser(
        "dashboard", help="serve the web dashboard of a cluster (prints its link)",
        description="Serve a live web page of the cluster (nodes, store, actors, tasks, "
        "throughput, RL runs and Tune experiments) and its JSON API, until Ctrl-C. It needs "
        "the cluster token: the printed link carries it once. Needs pyactor[dashboard].")
    add_cluster_options(dashboard)
    dashboard.add_argument("--port", type=int, default=8265,
                           help="port to serve on (default 8265; 0: any free port)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1: this host only)")

    commands.add_parser("stop", help="stop the nodes started on this host",
                        description="Stop every node `pyactor start` started on this host.")

    from pyactor import state_cli
    state_cli.add_commands(commands)

    bench = commands.add_parser("microbenchmark", help="time the hot paths (prints a table)",
                                add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER,
                       help="options of the benchmark: see `pyactor microbenchmark --help`")

    tune = commands.add_parser("tune", help="pyactor.tune tools: `pyactor tune plot EXP_DIR`",
                               add_help=False)
    tune.add_argument("rest", nargs=argparse.REMAINDER,
                      help="a subcommand and its options: `plot EXP_DIR [--metric M] [-o OUT.png]`")

    rl = commands.add_parser("rl", help="reinforcement learning: train, evaluate, plot "
                             "(see `pyactor rl --help`)", add_help=False)
    rl.add_argument("rest", nargs=argparse.REMAINDER,
                    help="a subcommand and its options: see `pyactor rl --help`")
    return parser


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """--address and --token of a command that talks to a running cluster."""
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="the cluster's head (default: the cluster started on this host)")
    parser.add_argument("--token", default=None,
                        help="cluster token (default: $PYACTOR_TOKEN, or the one recorded on "
                        "this host)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # a bare `pyactor`: say what it can do
        parser.print_help()
        return 0
    if args.command == "microbenchmark":
        from pyactor import microbenchmark
        return microbenchmark.main(extra + args.rest)
    if args.command == "tune":
        return cmd_tune(extra + args.rest)
    if args.command == "rl":
        from pyactor.rl import cli as rl_cli  # torch and gymnasium load only for this command
        return rl_cli.main(extra + args.rest)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("list", "summary", "memory", "logs"):
        from pyactor import state_cli
        return state_cli.main(args)
    return {"start": cmd_start, "status": cmd_status, "stop": cmd_stop,
            "dashboard": cmd_dashboard}[args.command](args)


def cmd_dashboard(args) -> int:
    resolved = resolve_cluster(args.address, args.token)
    if isinstance(resolved, int):
        return resolved
    from pyactor.dashboard import launch
    return launch.serve_foreground(resolved[0], resolved[1], args.host, args.port)


def cmd_tune(argv: list[str]) -> int:
    """Imports pyactor.tune (and matplotlib) only for this subcommand."""
    if not argv or argv[0] != "plot":
        print("usage: pyactor tune plot EXP_DIR [--metric M] [-o OUT.png]", file=sys.stderr)
        return 2
    from pyactor.tune import plot
    return plot.main(argv[1:])


def cmd_start(args) -> int:
    try:
        resources = json.loads(args.resources)
        if not isinstance(resources, dict):
            raise ValueError
    except ValueError:
        print(f"--resources must be a JSON object, got {args.resources!r}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.logging_level is not None:
        from pyactor._private.api import logging_level_number
        try:
            env["PYACTOR_LOG_LEVEL"] = str(logging_level_number(args.logging_level))
        except ValueError as error:
            print(f"--logging-level: {error}", file=sys.stderr)
            return 2
    if args.dashboard_port is not None and not args.head:
        print("--dashboard-port goes with --head (the dashboard runs beside the head)",
              file=sys.stderr)
        return 2
    if args.head:
        token_hex = os.urandom(32).hex()
        head_address = None
        port = args.port if args.port is not None else DEFAULT_PORT
    else:
        token, source = args.token, "--token"
        if not token:
            token, source = os.environ.get("PYACTOR_TOKEN"), "$PYACTOR_TOKEN"
        if not token:
            saved = session.read_cluster_address()
            if saved and saved["address"] == args.address:
                token, source = saved["token"], f"the token file in {session.session_dir()}"
        if not token:
            print("joining a cluster needs its token: --token T or $PYACTOR_TOKEN (printed by "
                  "`pyactor start --head`)", file=sys.stderr)
            return 2
        try:
            token_hex = session.parse_token(token, source).hex()
        except AuthenticationError as error:
            print(error, file=sys.stderr)
            return 2
        head_address = args.address
        port = args.port if args.port is not None else 0
    config = {"token_hex": token_hex, "host": args.node_ip_address, "port": port,
              "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "resources": resources,
              "object_store_memory": args.object_store_memory, "embedded": False,
              "head_address": head_address,
              "spill_dir": os.path.abspath(args.spill_dir) if args.spill_dir else None,
              "spill_limit_bytes": args.spill_limit_bytes,
              "metrics_port": None if args.metrics_export_port < 0 else args.metrics_export_port}
    # A log of its own from the first line: a node that fails to start (its port is taken by a
    # running head, say) must not write into the running node's log.
    log_fd, starting_log = tempfile.mkstemp(prefix=f"node-{port}-", suffix=".starting.log",
                                            dir=session.session_dir())
    with os.fdopen(log_fd, "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "pyactor._private.node_main"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=log_file, start_new_session=True, env=env)
    process.stdin.write((json.dumps(config) + "\n").encode())
    process.stdin.close()  # a CLI node has no lifeline: it runs until `pyactor stop`
    line = process.stdout.readline()
    process.stdout.close()
    if not line:
        process.wait(10)
        print(f"the node failed to start (exit code {process.returncode}): "
              f"{_start_failure(starting_log, port)}", file=sys.stderr)
        os.unlink(starting_log)
        return 1
    ready = json.loads(line)
    log = session.log_path(f"{ready['port']}-{process.pid}")
    os.replace(starting_log, log)
    address = f"{args.node_ip_address}:{ready['port']}"
    session.record_node(process.pid, address, args.head, log, ready.get("node_id", ""),
                        ready.get("store_name", ""), ready.get("spill_dir", ""))
    if args.head:
        session.write_cluster_address(address, token_hex)
        dashboard = ""
        if args.dashboard_port is not None:
            from pyactor.dashboard import launch
            # On loopback whatever the node binds: `pyactor dashboard --host` exposes it.
            dashboard = "\n  " + launch.start_in_background(address, token_hex, "127.0.0.1",
                                                             args.dashboard_port)
        print(f"Started the head node at {address} (pid {process.pid}).\n"
              f"  token:  {token_hex}\n"
              f"  join another node:  pyactor start --address {address} --token {token_hex}\n"
              f"  connect a driver:   pa.init(address=\"{address}\") with "
              f"PYACTOR_TOKEN={token_hex}\n"
              f"                      (or pa.init(address=\"auto\") on this host)\n"
              f"  log:    {log}\n"
              f"  stop:   pyactor stop{dashboard}")
    else:
        print(f"Started a node at {address} (pid {process.pid}), joined {head_address}.\n"
              f"  log:    {log}")
    return 0


def _start_failure(log_path: str, port: int) -> str:
    """What made a node fail to start, from the last line of its error output."""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    cause = lines[-1] if lines else "it printed nothing"
    if "address already in use" in cause.lower():
        return (f"port {port} is already in use (is a pyactor head already running? "
                f"`pyactor status` shows it; `--port` picks another)\n  {cause}")
    return cause


def resolve_cluster(address: str | None, token: str | None) -> tuple[str, bytes] | int:
    """The cluster's address and token from the options, $PYACTOR_TOKEN or the files `pyactor
    start --head` wrote; or the exit code after printing what is missing."""
    source = "--token"
    if not token:
        token, source = os.environ.get("PYACTOR_TOKEN"), "$PYACTOR_TOKEN"
    saved = session.read_cluster_address()
    if address is None:
        if saved is None:
            print("no cluster found on this host: start one with `pyactor start --head`",
                  file=sys.stderr)
            return 1
        address = saved["address"]
    if not token and saved is not None and saved["address"] == address:
        token, source = saved["token"], f"the token file in {session.session_dir()}"
    if not token:
        print("pass the cluster token with --token or $PYACTOR_TOKEN", file=sys.stderr)
        return 2
    try:
        return address, session.parse_token(token, source)
    except AuthenticationError as error:
        print(error, file=sys.stderr)
        return 2


def cmd_status(args) -> int:
    resolved = resolve_cluster(args.address, args.token)
    if isinstance(resolved, int):
        return resolved
    address, token_bytes = resolved
    try:
        nodes = asyncio.run(_ask_status(address, token_bytes))
    except ConnectionRefusedError:
        print(f"nothing is listening at {address}: check the address", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - report any failure to reach the cluster
        print(f"could not reach the cluster at {address}: {error}", file=sys.stderr)
        return 1
    print(format_status(address, nodes))
    for record in session.recorded_nodes():  # started here by --dashboard-port
        if record.get("kind") == "dashboard":
            print(f"  dashboard  http://{record['address']}/?token=<the cluster token>")
    return 0


async def _ask_status(address: str, token: bytes) -> list[dict]:
    from pyactor._private import protocol as P
    from pyactor._private import transport
    host, _, port = address.rpartition(":")
    replies: asyncio.Queue = asyncio.Queue()
    conn = await transport.connect(host, int(port), token,
                                   lambda _c, raw: replies.put_nowait(P.decode(raw)))
    try:
        conn.send(P.encode(P.Register(1, "cli", os.getpid(), b"", ["", 0], "", [])))
        conn.send(P.encode(P.ClusterInfo(2, "nodes")))
        while True:
            reply = await asyncio.wait_for(replies.get(), 10)
            if isinstance(reply, P.Reply) and reply.request_id == 2:
                return reply.value
    finally:
        conn.close()


def format_status(address: str, nodes: list[dict]) -> str:
    lines = [f"cluster at {address}: {sum(1 for n in nodes if n['Alive'])} node(s) alive"]
    for node in nodes:
        store = node.get("ObjectStore") or {}
        used = store.get("used_bytes", 0) / 2**20
        capacity = store.get("capacity_bytes", 0) / 2**20
        lines.append(
            f"  node {node['NodeID'][:12]} at {node['NodeManagerAddress']}:"
            f"{node['NodeManagerPort']} {'alive' if node['Alive'] else 'DEAD'}")
        lines.append(f"    resources  {_usage(node['Resources'], node['Available'])}")
        lines.append(f"    actors     {node.get('Actors', 0)}   workers {node.get('Workers', 0)}")
        lines.append(f"    store      {used:,.1f} / {capacity:,.1f} MiB in "
                     f"{store.get('object_count', 0)} objects")
        lines.append(f"    spilled    {store.get('spilled_bytes', 0) / 2**20:,.1f} MiB on disk, "
                     f"{store.get('spilled_objects', 0)} objects ({store.get('spills', 0)} "
                     f"spills, {store.get('restores', 0)} restores so far)")
        if node.get("MetricsExportURL"):
            lines.append(f"    metrics    {node['MetricsExportURL']}")
    return "\n".join(lines)


def _usage(total: dict, available: dict) -> str:
    parts = []
    for name, amount in total.items():
        used = amount - available.get(name, 0)
        parts.append(f"{name} {used:g}/{amount:g}")
    return ", ".join(parts) + " used"


def cmd_stop(args) -> int:
    nodes = session.recorded_nodes()
    stopped = 0
    for node in nodes:
        pid = node["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) node could not act on it
        except ProcessLookupError:
            continue
        stopped += node.get("kind", "node") == "node"
    deadline = time.monotonic() + 10
    for node in nodes:
        while _alive(node["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(node["pid"]):
            os.kill(node["pid"], signal.SIGKILL)
    for node in nodes:
        # A node killed (SIGKILL, OOM) before this could not remove its store's segment.
        while _alive(node["pid"]) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        if node.get("store_name") and not _alive(node["pid"]):
            try:
                os.unlink(os.path.join("/dev/shm", node["store_name"]))
            except OSError:
                pass
        if node.get("spill_dir") and not _alive(node["pid"]):  # its spilled objects too
            shutil.rmtree(node["spill_dir"], ignore_errors=True)
    session.forget_nodes()
    from pyactor._private import run_registry
    run_registry.forget_runs()  # the dashboard's list of runs belongs to the session
    print(f"stopped {stopped} node(s)")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our child, not reaped) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
