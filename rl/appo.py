"""APPO: asynchronous PPO, IMPALA's pipeline with PPO's clipped surrogate on V-trace advantages
(the IMPACT objective of Luo et al. 2020, arXiv:1912.00167, which RLlib ships as APPO).

The learner keeps a target network pi_target, a copy of the policy updated every
`target_network_update_freq` updates (softly with `tau` < 1). One minibatch step:
    log pi_target(a|x) from the target network; mu from the runner (behaviour, a few updates old)
    v_s, A_s = vtrace(mu, pi_target, ...)       # V-trace corrects mu -> pi_target (IMPACT sec. 3.2,
                                                # Espeholt et al. eq. 1 and 4)
    r = pi(a|x) / pi_target(a|x)                # the ratio against the target (IMPACT eq. 6)
    L_clip = -E[min(r A, clip(r, 1-eps, 1+eps) A)]           (Schulman et al. 2017, eq. 7)
    L = L_clip + c_V (v_s - V(x_s))^2 / 2 - c_H H + beta KL(pi_target || pi)   (KL optional)
With use_kl_loss, beta adapts after each update toward kl_target (x1.5 above 2 kl_target, x0.5
below kl_target / 2: PPO paper sec. 4, RLlib's rule). With target_network_update_freq=1 and tau=1
the target is the policy at the start of each update: PPO's "old policy", over several epochs.
"""

from __future__ import annotations

import dataclasses
import typing

import torch

from pyactor.rl.impala import IMPALA, IMPALAConfig, IMPALALearner
from pyactor.rl.module import Categorical, ModuleSpec


@dataclasses.dataclass(frozen=True)
class APPOConfig(IMPALAConfig):
    lr: float = 2e-3
    entropy_coeff: float = 0.0
    clip_param: float = 0.3
    use_kl_loss: bool = False
    kl_coeff: float = 1.0
    kl_target: float = 0.01
    target_network_update_freq: int = 1   # learner updates between target updates
    tau: float = 1.0                      # 1: copy; < 1: Polyak averaging
    num_epochs: int = 2
    minibatch_size: typing.Optional[int] = 256
    normalize_advantages: bool = False

    algo_name = "APPO"

    def validate(self) -> None:
        super().validate()
        if self.clip_param <= 0:
            raise ValueError(f"clip_param must be > 0, got {self.clip_param}")
        if self.kl_coeff < 0 or self.kl_target <= 0:
            raise ValueError("kl_coeff must be >= 0 and kl_target > 0")
        if self.target_network_update_freq < 1:
            raise ValueError(f"target_network_update_freq must be >= 1, got "
                             f"{self.target_network_update_freq}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")

    @classmethod
    def algorithm_class(cls):
        return APPO


def kl_divergence(p, q) -> torch.Tensor:
    """KL(p || q) per row for two distributions of the module's kinds (categorical or diagonal
    Gaussian), in closed form."""
    if isinstance(p, Categorical):
        return (p.logits.exp() * (p.logits - q.logits)).sum(-1)
    var_p, var_q = torch.exp(2 * p.log_std), torch.exp(2 * q.log_std)
    return (q.log_std - p.log_std + (var_p + (p.mean - q.mean) ** 2) / (2 * var_q) - 0.5).sum(-1)


class APPOLearner(IMPALALearner):
    def __init__(self, module_spec: ModuleSpec, config: dict, seed: int | None = None):
        super().__init__(module_spec, config, seed)
        self.target = module_spec.build().to(self.device)
        self.target.load_state_dict(self.module.state_dict())
        self.target.requires_grad_(False)
        self.kl_coeff = config["kl_coeff"]
        self._target_dist = None
        self._kl_sum, self._kl_count = 0.0, 0

    def reference_logp(self, obs, batch, logp) -> torch.Tensor:
        actions = batch["actions"].reshape(obs.shape[0], *batch["actions"].shape[2:])
        self._target_dist = self.target.distribution(obs)
        return self._target_dist.log_prob(actions)

    def policy_loss(self, logp, reference_logp, advantages, out) -> tuple[torch.Tensor, dict]:
        clip = self.config["clip_param"]
        log_ratio = logp - reference_logp
        ratio = log_ratio.exp()
        loss = -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()
        kl = kl_divergence(self._target_dist, out["dist"]).mean()
        if self.config["use_kl_loss"]:
            loss = loss + self.kl_coeff * kl
        kl = kl.item()  # reported, and averaged over the update for the coefficient
        self._kl_sum += kl
        self._kl_count += 1
        return loss, {"kl": kl, "kl_coeff": self.kl_coeff,
                      "clip_fraction": ((ratio.detach() - 1).abs() > clip).float().mean().item()}

    def after_update(self) -> None:
        c = self.config
        if c["use_kl_loss"] and self._kl_count:
            kl = self._kl_sum / self._kl_count
            if kl > 2.0 * c["kl_target"]:
                self.kl_coeff *= 1.5
            elif kl < 0.5 * c["kl_target"]:
                self.kl_coeff *= 0.5
        self._kl_sum, self._kl_count = 0.0, 0
        if (self.num_updates + 1) % c["target_network_update_freq"] == 0:
            with torch.no_grad():
                for target, source in zip(self.target.parameters(), self.module.parameters()):
                    target.lerp_(source, c["tau"])

    def get_state(self) -> dict:
        return {**super().get_state(), "kl_coeff": self.kl_coeff,
                "target": {k: v.cpu() for k, v in self.target.state_dict().items()}}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self.kl_coeff = state["kl_coeff"]
        self.target.load_state_dict(state["target"])


class APPO(IMPALA):
    config_class = APPOConfig
    learner_class = APPOLearner
