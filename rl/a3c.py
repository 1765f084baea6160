"""A3C: asynchronous advantage actor-critic (Mnih et al. 2016, arXiv:1602.01783, Algorithm S3),
on the gradients-as-they-arrive pipeline of rl/async_learning.py.

Each env runner is one of the paper's actor-learner threads, as a process:
    copy the shared weights theta' <- theta                    (Algorithm S3, "synchronize")
    fragment = t_max steps of its N envs with pi(.|s; theta')
    R_t = r_t + gamma R_{t+1}, R = V(s_{t_max}; theta') at the fragment's end (0 after a
          termination; V(final obs) after a truncation)       (Algorithm S3; GAE with lambda_<1)
    d theta  = grad[ -log pi(a_t|s_t) (R_t - V(s_t)) - beta H(pi(.|s_t)) ]   (sec. 4, eq. of the
    d theta_v = grad[ (R_t - V(s_t))^2 / 2 ]                                  policy gradient)
    send (d theta, d theta_v) to the learner
The learner applies each gradient as it arrives (one optimiser step, gradient norm clipped; the
paper's shared RMSProp is Adam here, as in most reimplementations) and sends the new weights back
to that runner only, so the others act and compute with older weights: the policy lag, reported
as `policy_lag` / `policy_lag_max`, is A3C's asynchrony made visible.
"""

from __future__ import annotations

import dataclasses
import typing

import torch

from pyactor.rl.async_learning import AsyncGradientAlgorithm
from pyactor.rl.config import AlgorithmConfig, schedule_value
from pyactor.rl.learner import Learner
from pyactor.rl.ppo import compute_gae


@dataclasses.dataclass(frozen=True)
class A3CConfig(AlgorithmConfig):
    num_env_runners: int = 2
    num_envs_per_runner: int = 8
    rollout_fragment_length: int = 8          # t_max of the paper
    min_env_steps_per_iteration: int = 0      # 0: one fragment per runner
    gamma: float = 0.99
    lambda_: float = 1.0                      # 1.0: the paper's k-step returns
    lr: float = 1e-3
    lr_schedule: typing.Optional[list] = None
    vf_loss_coeff: float = 0.5
    entropy_coeff: float = 0.01               # beta of the paper
    grad_clip: typing.Optional[float] = 0.5

    algo_name = "A3C"

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {self.lambda_}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.min_env_steps_per_iteration < 0:
            raise ValueError("min_env_steps_per_iteration must be >= 0")

    @classmethod
    def algorithm_class(cls):
        return A3C


def a3c_loss(module, batch: dict[str, torch.Tensor], config: dict):
    """The actor-critic loss of one fragment [T, N], computed by the runner on its module copy."""
    obs, actions, rewards = batch["obs"], batch["actions"], batch["rewards"]
    T, N = rewards.shape
    out = module.forward_train({"obs": obs.reshape(T * N, *obs.shape[2:])})
    values = out["values"].reshape(T, N)
    with torch.no_grad():
        next_values = module.value(batch["next_obs"])
        advantages = compute_gae(rewards, values.detach(), next_values,
                                 batch["terminateds"].float(), batch["truncateds"].float(),
                                 config["gamma"], config["lambda_"])
        returns = (advantages + values.detach()).reshape(-1)  # R_t of Algorithm S3
    logp = out["dist"].log_prob(actions.reshape(T * N, *actions.shape[2:]))
    policy_loss = -(logp * advantages.reshape(-1)).mean()
    vf_loss = 0.5 * ((values.reshape(-1) - returns) ** 2).mean()
    entropy = out["dist"].entropy().mean()
    loss = policy_loss + config["vf_loss_coeff"] * vf_loss - config["entropy_coeff"] * entropy
    return loss, {"policy_loss": policy_loss.item(), "vf_loss": vf_loss.item(),
                  "entropy": entropy.item()}


class A3CLearner(Learner):
    def apply_flat_gradients(self, flat, options: dict) -> dict[str, float]:
        """One optimiser step with a gradient computed elsewhere (a flat float32 vector)."""
        self.set_lr(options["lr"])
        vector = torch.tensor(flat, device=self.device)  # a copy: the store's buffer is read-only
        offset = 0
        for parameter in self.module.parameters():
            size = parameter.numel()
            parameter.grad = vector[offset:offset + size].view_as(parameter)
            offset += size
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(),
                                              self.config["grad_clip"] or float("inf"))
        self.optimizer.step()
        self.num_updates += 1
        return {"grad_norm": float(norm), "lr": options["lr"]}


class A3C(AsyncGradientAlgorithm):
    config_class = A3CConfig
    learner_class = A3CLearner
    loss_fn = a3c_loss

    def update_kwargs(self) -> dict:
        c = self.config
        return {"lr": schedule_value(c.lr_schedule, c.lr, self.env_steps_total)}
