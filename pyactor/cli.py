"""The `pyactor` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyactor", description="pyactor command line")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("microbenchmark", help="time the hot paths (prints a table)",
                                add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    args, extra = parser.parse_known_args(argv)
    if args.command == "microbenchmark":
        args.rest = extra + args.rest
        from pyactor import microbenchmark
        return microbenchmark.main(args.rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
