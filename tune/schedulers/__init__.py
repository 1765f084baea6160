"""pyactor.tune.schedulers: the decisions taken on running trials (stop early, pause, exploit).

Each scheduler is a TrialScheduler (trial_scheduler.py) whose hooks return a decision and never
do I/O; the controller carries the decisions out.
"""

from .async_hyperband import ASHAScheduler, AsyncHyperBandScheduler
from .hyperband import HyperBandScheduler
from .median_stopping_rule import MedianStoppingRule
from .pbt import Exploit, PopulationBasedTraining
from .trial_scheduler import FIFOScheduler, TrialScheduler

__all__ = [
    "ASHAScheduler", "AsyncHyperBandScheduler", "Exploit", "FIFOScheduler",
    "HyperBandScheduler", "MedianStoppingRule", "PopulationBasedTraining", "TrialScheduler",
]
