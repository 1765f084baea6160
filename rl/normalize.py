"""Running mean and variance of observations, merged across env runners.

Each runner normalises with the global statistics it last received and counts the raw
observations it saw since then in a delta; the driver merges every runner's delta into the global
statistics (Chan, Golub and LeVeque's parallel variance update) and sends them out with the next
weights. The statistics are part of a checkpoint.
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    def __init__(self, shape: tuple, count: float = 0.0, mean=None, var=None):
        self.count = float(count)
        self.mean = np.zeros(shape, np.float64) if mean is None else np.array(mean, np.float64)
        self.var = np.ones(shape, np.float64) if var is None else np.array(var, np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Add a batch of observations [n, *shape]."""
        self.merge(RunningMeanStd(batch.shape[1:], len(batch), batch.mean(0), batch.var(0)))

    def merge(self, other: "RunningMeanStd") -> None:
        """Fold another set of statistics into this one (Chan et al. 1979)."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        m2 = self.var * self.count + other.var * other.count + delta ** 2 * self.count * other.count / total
        self.mean = self.mean + delta * other.count / total
        self.var = m2 / total
        self.count = total

    def normalize(self, obs: np.ndarray, clip: float = 10.0) -> np.ndarray:
        if self.count == 0:
            return obs.astype(np.float32, copy=False)
        out = (obs - self.mean) / np.sqrt(self.var + 1e-8)
        return np.clip(out, -clip, clip).astype(np.float32)

    def to_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "var": self.var.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> "RunningMeanStd":
        mean = np.asarray(state["mean"], np.float64)
        return cls(mean.shape, state["count"], mean, state["var"])
