"""DDPG: deep deterministic policy gradient (Lillicrap et al. 2015, arXiv:1509.02971): a
deterministic actor mu(s) trained through a Q(s, a) critic, both with slowly tracking target
copies, exploring with Gaussian noise on mu(s) (the TD3 paper's DDPG set-up; Lillicrap et al.
used Ornstein-Uhlenbeck noise).

Pipeline: rl/off_policy.py (env runners -> replay actor -> this learner); networks:
rl/continuous_modules.py (DeterministicModule with one critic). TD3 (rl/td3.py) is this learner
with three changes made through its two hooks, `td_targets` and `actor_update_due`.

One gradient step (DDPGLearner.update_on), top to bottom:

    y = r + gamma^n (1 - done) Q'(s', mu'(s'))              # td_targets: algorithm 1, line 12
    L = mean (Q(s, a) - y)^2                                # algorithm 1, line 13;  Adam step
    if actor_update_due():                                  # DDPG: every update
        J = -mean Q(s, mu(s))                               # the deterministic policy gradient
                                                            # (Silver et al. 2014; line 14)
        Adam step on the actor
        theta' <- tau theta + (1 - tau) theta'              # targets of actor and critic, line 16
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from pyactor.rl.continuous_modules import DeterministicModule, polyak_update
from pyactor.rl.off_policy import OffPolicyAlgorithm, OffPolicyConfig, OffPolicyLearner


@dataclasses.dataclass(frozen=True)
class DDPGConfig(OffPolicyConfig):
    exploration_noise: float = 0.1  # std of the Gaussian added to mu(s), in [-1, 1] units

    algo_name = "DDPG"

    def validate(self) -> None:
        super().validate()
        if self.exploration_noise < 0:
            raise ValueError(f"exploration_noise must be >= 0, got {self.exploration_noise}")

    @classmethod
    def algorithm_class(cls):
        return DDPG


class DDPGLearner(OffPolicyLearner):
    def __init__(self, module_spec, config: dict, seed: int | None = None):
        super().__init__(module_spec, config, seed)
        self.target = copy.deepcopy(self.module)  # mu' and Q' (Lillicrap et al., algorithm 1)
        self.target.requires_grad_(False)

    def td_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = r + gamma^n (1 - done) Q'(s', mu'(s'))."""
        next_actions = self.target.actor(batch["next_obs"])
        next_q = self.target.critics(batch["next_obs"], next_actions)[0]
        return batch["rewards"] + batch["discounts"] * batch["not_done"] * next_q

    def actor_update_due(self) -> bool:
        return True

    def update_on(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        module, c = self.module, self.config
        with torch.no_grad():
            targets = self.td_targets(batch)
        q = module.critics(batch["obs"], batch["actions"])  # [num_critics, B]
        critic_loss = ((q - targets) ** 2).mean(-1).sum()
        metrics = {"critic_loss": float(critic_loss), "q_mean": float(q.detach().mean()),
                   "critic_grad_norm": self.step(self.optimizer, critic_loss, self.critic_params)}
        if self.actor_update_due():
            actor_loss = -self.q_for_actor(batch["obs"], module.actor(batch["obs"]))[0].mean()
            metrics["actor_grad_norm"] = self.step(self.actor_optimizer, actor_loss,
                                                   self.actor_params)
            metrics["actor_loss"] = float(actor_loss)
            polyak_update(self.target, module, c["tau"])
        return metrics

    def checkpointed(self) -> dict:
        return {**super().checkpointed(), "target": self.target}


class DDPG(OffPolicyAlgorithm):
    config_class = DDPGConfig
    learner_class = DDPGLearner
    module_class = DeterministicModule

    def module_options(self, config) -> dict:
        return {"num_critics": 1, "exploration_noise": config.exploration_noise}
