from pyactor.tune._standin import BasicVariantGenerator, grid_search  # replaced by tune-search
