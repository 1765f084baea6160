"""Runs `pyactor microbenchmark` (the suite lives in pyactor/microbenchmark.py so the installed
command has it): `python bench/microbenchmark.py [--quick] [--json]`."""

import sys

from pyactor.microbenchmark import main

if __name__ == "__main__":
    sys.exit(main())
