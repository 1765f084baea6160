"""pyactor.tune.search: search spaces and search algorithms (Searchers).

sample.py holds the domains (uniform, loguniform, choice, ...), variant_generator.py turns a
param_space into configs, and each searcher has its own module; all are re-exported here and,
for the common names, from pyactor.tune.
"""

from .basic_variant import BasicVariantGenerator
from .concurrency_limiter import ConcurrencyLimiter
from .repeater import Repeater
from .sample import (Categorical, Domain, Float, Function, Integer, choice, grid_search,
                     lograndint, loguniform, qlograndint, qloguniform, qrandint, qrandn,
                     quniform, randint, randn, sample_from, uniform)
from .searcher import Searcher
from .tpe import TPESearch
from .variant_generator import format_vars, generate_variants, grid_size

__all__ = [
    "BasicVariantGenerator", "Categorical", "ConcurrencyLimiter", "Repeater", "Domain", "Float", "Function", "Integer", "Searcher", "TPESearch",
    "choice", "format_vars", "generate_variants", "grid_search", "grid_size", "lograndint",
    "loguniform", "qlograndint", "qloguniform", "qrandint", "qrandn", "quniform", "randint",
    "randn", "sample_from", "uniform",
]
