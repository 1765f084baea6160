from pyactor.tune._standin import FIFOScheduler  # replaced by tune-search
