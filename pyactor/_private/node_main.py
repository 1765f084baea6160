"""`python -m pyactor._private.node_main`: the node daemon's process.

It reads its config (with the session token) from the first line of stdin, forks the worker
fork server *before* importing the node's own modules, then runs the node (node.py) on uvloop.
Forking first lets the fork server import what workers need on one core while the node imports
on the other, so the first worker is ready sooner after `pa.init()`.

It prints one JSON line with its port when it is ready, and stops when the driver's end of the
stdin pipe closes (the driver exited, even by SIGKILL) or on SIGTERM/SIGINT, after removing
what it made (workers, the store's segment).
"""

import json
import os
import sys

# asyncio and the node's modules are imported after the fork server has forked (see above).


def main() -> None:
    config = json.loads(sys.stdin.readline())
    from pyactor._private.worker_pool import ForkServer
    fork_server = ForkServer.start(bytes.fromhex(config["token_hex"]))
    from pyactor._private import node
    # No PDEATHSIG for the node: when the driver dies the lifeline pipe closes and the node
    # cleans up (a SIGKILL would leave the store's segment behind).
    serve(node.NodeConfig(**config), fork_server)


def remove_stale_segments() -> None:
    """Remove store segments left by nodes that died without cleaning up (SIGKILL)."""
    from pyactor._private.spilling import left_by_dead_node
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        if left_by_dead_node(name):
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


def serve(config, fork_server) -> None:
    """Run the node until it is stopped (once the fork server exists)."""
    import asyncio
    import logging
    import signal
    level = os.environ.get("PYACTOR_LOG_LEVEL", "WARNING")  # pa.init(logging_level=...)
    logging.basicConfig(level=int(level) if level.isdigit() else level,
                        format="[pyactor node %(process)d] %(levelname)s %(message)s")
    remove_stale_segments()

    import uvloop
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    from pyactor._private.node import Node
    node = Node(config, fork_server)

    async def run():
        try:
            await node.start()
        except BaseException:
            node.stop()
            raise
        sys.stdout.write(json.dumps({"port": node.server.port, "node_id": node.node_id.hex(),
                                     "store_name": node.store_name,
                                     "spill_dir": node.spiller.directory}) + "\n")
        sys.stdout.flush()
        os.dup2(2, 1)  # later prints must not fill the pipe nobody reads
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, node.stop)
        if config.embedded:
            watch_lifeline(loop, node)
        await node.stopped.wait()

    try:
        loop.run_until_complete(run())
    finally:
        node.stop()
    # Everything is cleaned up (workers killed, store removed): skip the interpreter's
    # teardown, which would make every pa.shutdown() wait tens of milliseconds more.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


def watch_lifeline(loop, node) -> None:
    """Stop when stdin (the driver's end of the pipe) closes."""
    def readable():
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            node.stop()
    loop.add_reader(0, readable)


if __name__ == "__main__":
    main()
