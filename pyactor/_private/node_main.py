"""`python -m pyactor._private.node_main`: the node daemon's entry point.

It reads its config (with the session token) from the first line of stdin, forks the worker
fork server *before* importing the node's own modules, then runs the node. Forking first lets
the fork server import what workers need on one core while the node imports on the other, so the
first worker is ready sooner after `pa.init()`.
"""

import json
import sys


def main() -> None:
    config = json.loads(sys.stdin.readline())
    from pyactor._private.worker_pool import ForkServer
    fork_server = ForkServer.start(bytes.fromhex(config["token_hex"]))
    from pyactor._private import node
    # No PDEATHSIG for the node: when the driver dies the lifeline pipe closes and the node
    # cleans up (a SIGKILL would leave the store's segment behind).
    node.serve(node.NodeConfig(**config), fork_server)


if __name__ == "__main__":
    main()
