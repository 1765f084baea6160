"""SAC: soft actor-critic, the version of "Soft Actor-Critic Algorithms and Applications"
(Haarnoja et al. 2018, arXiv:1812.05905): twin Q critics with target copies and no separate V
network, a tanh-squashed Gaussian policy, and the temperature alpha tuned automatically toward a
target entropy.

Pipeline: rl/off_policy.py (env runners -> replay actor -> this learner); networks:
rl/continuous_modules.py. One gradient step (SACLearner.update_on), top to bottom:

    a' ~ pi(.|s'), with log pi(a'|s')                                   # current policy at s'
    y = r + gamma^n (1 - done) (min_k Q'_k(s', a') - alpha log pi(a'|s'))   # eq. 3 and 5,
                                                                        # twin targets (sec. 5)
    J_Q = sum_k mean 1/2 (Q_k(s, a) - y)^2                              # eq. 5;    Adam step
    a~ = tanh(mu(s) + sigma(s) eps), eps ~ N(0, I)                      # eq. 11 (reparameterised)
    J_pi = mean(alpha log pi(a~|s) - min_k Q_k(s, a~))                  # eq. 7;    Adam step
    J(alpha) = mean(-alpha (log pi(a~|s) + H_target))                   # eq. 18;   Adam step on
                                                                        # log alpha
    Q'_k <- tau Q_k + (1 - tau) Q'_k                                    # every update

The defaults learn Pendulum-v1 (greedy mean return >= -200) within rl-zoo's 20k env steps;
bench/rl_bench.py's sac_pendulum rows measure it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing

import torch

from pyactor.rl.continuous_modules import SquashedGaussianModule, polyak_update
from pyactor.rl.off_policy import OffPolicyAlgorithm, OffPolicyConfig, OffPolicyLearner


@dataclasses.dataclass(frozen=True)
class SACConfig(OffPolicyConfig):
    initial_alpha: float = 1.0
    autotune_alpha: bool = True  # False: alpha stays initial_alpha
    alpha_lr: float = 1e-3
    target_entropy: typing.Optional[float] = None  # None: -dim(A) (the paper's heuristic)
    target_network_update_freq: int = 1  # updates between Polyak steps of the target critics

    algo_name = "SAC"

    def validate(self) -> None:
        super().validate()
        if self.initial_alpha <= 0 or self.alpha_lr <= 0:
            raise ValueError(f"initial_alpha and alpha_lr must be > 0, got "
                             f"{self.initial_alpha} and {self.alpha_lr}")
        if self.target_network_update_freq < 1:
            raise ValueError(f"target_network_update_freq must be >= 1, got "
                             f"{self.target_network_update_freq}")

    @classmethod
    def algorithm_class(cls):
        return SAC


class SACLearner(OffPolicyLearner):
    def __init__(self, module_spec, config: dict, seed: int | None = None):
        super().__init__(module_spec, config, seed)
        self.target_critics = copy.deepcopy(self.module.critics)
        self.target_critics.requires_grad_(False)
        # alpha is optimised as log alpha: positive without a constraint.
        self.log_alpha = torch.tensor(math.log(config["initial_alpha"]), requires_grad=True,
                                      device=self.device)
        if config["autotune_alpha"]:  # stepped with the actor: one backward pass for both
            self.actor_optimizer.add_param_group({"params": [self.log_alpha],
                                                  "lr": config["alpha_lr"]})
        target = config["target_entropy"]
        self.target_entropy = -float(self.module.n_actions) if target is None else float(target)

    def update_on(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        module, c = self.module, self.config
        alpha = self.log_alpha.detach().exp()
        # Critics (eq. 5): the soft TD target from the target critics and the current policy.
        with torch.no_grad():
            next_actions, next_logp = module.actor.sample(batch["next_obs"], self.generator)
            next_q = self.target_critics(batch["next_obs"], next_actions).min(0).values
            targets = batch["rewards"] + batch["discounts"] * batch["not_done"] * (
                next_q - alpha * next_logp)
        q = module.critics(batch["obs"], batch["actions"])
        critic_loss = 0.5 * ((q - targets) ** 2).mean(-1).sum()
        critic_grad_norm = self.step(self.optimizer, critic_loss, self.critic_params)

        # Policy (eq. 7), through the reparameterised sample; the critics are held fixed.
        actions, logp = module.actor.sample(batch["obs"], self.generator)
        q_pi = self.q_for_actor(batch["obs"], actions).min(0).values
        actor_loss = (alpha * logp - q_pi).mean()
        # Temperature (eq. 18): alpha rises while the entropy -log pi is below its target. The
        # two losses share no parameter (alpha and log pi are detached in the other), so one
        # backward pass of their sum gives each its own gradient.
        alpha_loss = -(self.log_alpha.exp() * (logp.detach() + self.target_entropy)).mean()
        total = actor_loss + alpha_loss if c["autotune_alpha"] else actor_loss
        actor_grad_norm = self.step(self.actor_optimizer, total, self.actor_params)

        if (self.num_updates + 1) % c["target_network_update_freq"] == 0:
            polyak_update(self.target_critics, module.critics, c["tau"])
        return {"critic_loss": float(critic_loss), "actor_loss": float(actor_loss),
                "alpha_loss": float(alpha_loss), "alpha": float(alpha),
                "entropy": float(-logp.detach().mean()), "q_mean": float(q.detach().mean()),
                "critic_grad_norm": critic_grad_norm, "actor_grad_norm": actor_grad_norm}

    def checkpointed(self) -> dict:
        return {**super().checkpointed(), "target_critics": self.target_critics,
                "log_alpha": self.log_alpha}


class SAC(OffPolicyAlgorithm):
    config_class = SACConfig
    learner_class = SACLearner
    module_class = SquashedGaussianModule

    def module_options(self, config) -> dict:
        return {"num_critics": 2}
