"""ARS: augmented random search (Mania, Guy and Recht 2018, arXiv:1803.07055), Algorithm 2, on
the population pipeline of rl/evolution.py.

One iteration (ARS.training_step), reading top to bottom:
    indices, R, delta = await sample_population(nu)  # N directions delta_k, episodes of
                                                      # M + nu delta_k and M - nu delta_k
    keep the b directions with the largest max(R_k+, R_k-)          (step 6, the "-t" versions)
    sigma_R = std of the 2b returns kept                               (step 7)
    M <- M + alpha / (b sigma_R) sum_k (R_k+ - R_k-) delta_k           (step 7)
    sync_weights()                                    # M and the state statistics to the workers

V1 (normalize_observations=False) acts with M x. V2 (normalize_observations=True, the default)
acts with M diag(Sigma)^(-1/2) (x - mu), mu and Sigma the mean and variance of every state the
workers visited since the start of training (step 8), merged across workers by the driver and
saved in checkpoints. The policy is linear (model hidden []), with a bias term the paper's lacks.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np

from pyactor.rl.evolution import EvolutionAlgorithm, EvolutionConfig


@dataclasses.dataclass(frozen=True)
class ARSConfig(EvolutionConfig):
    normalize_observations: bool = True  # V2; False: V1
    lr: float = 0.02                     # alpha, the step size
    noise_stdev: float = 0.05            # nu, the exploration noise
    num_perturbations: int = 16          # N directions per iteration
    num_top_directions: typing.Optional[int] = 8  # b; None uses all N (V1/V2 without "-t")
    grad_clip: typing.Optional[float] = None  # unused: ARS has no loss gradient to clip

    algo_name = "ARS"

    def validate(self) -> None:
        super().validate()
        b = self.num_top_directions
        if b is not None and not 1 <= b <= self.num_perturbations:
            raise ValueError(f"num_top_directions must be in [1, num_perturbations="
                             f"{self.num_perturbations}] or None, got {b}")

    @classmethod
    def algorithm_class(cls):
        return ARS


def top_directions(returns: np.ndarray, b: int) -> np.ndarray:
    """Indices of the b directions with the largest max(R+, R-), best first (step 6)."""
    return np.argsort(-returns.max(axis=1), kind="stable")[:b]


class ARS(EvolutionAlgorithm):
    config_class = ARSConfig

    async def training_step(self) -> dict:
        c = self.config
        indices, returns, deltas = await self.sample_population(c.noise_stdev)
        b = min(c.num_top_directions or len(indices), len(indices))
        keep = top_directions(returns, b)
        kept = returns[keep]
        sigma_r = float(kept.std())
        step = (kept[:, 0] - kept[:, 1]) @ deltas[keep]
        if sigma_r > 0:  # all returns equal: no direction is better, no step
            self.learner.call("add", (c.lr / (b * sigma_r) * step).astype(np.float32))
        self.sync_weights()
        return {"return_std": sigma_r, "step_norm": float(np.linalg.norm(step)),
                "population_return_mean": float(returns.mean()),
                "population_return_max": float(returns.max()),
                "num_top_directions": b}
