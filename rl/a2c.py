"""A2C: synchronous advantage actor-critic (Mnih et al. 2016, arXiv:1602.01783, Algorithm S3,
with the runners stepping in lockstep instead of asynchronously, as OpenAI's baselines A2C).

One iteration (A2C.training_step), reading top to bottom:
    fragments = await sample()                    # [T, N] arrays from every env runner
    learner.update(fragments):
        R_t = sum_{i<k} gamma^i r_{t+i} + gamma^k V(s_{t+k})   # k-step returns, bootstrapped at
                                                   # the fragment's end (Algorithm S3); with
                                                   # lambda_ < 1, GAE instead (Schulman et al. 2016)
        A_t = R_t - V(s_t)
        L = -log pi(a_t|s_t) A_t + c_v (R_t - V(s_t))^2 / 2 - beta H(pi(.|s_t))   (sec. 4)
        one gradient step, gradient norm clipped
    sync_weights()                                # one put, read by every runner

One gradient step per fragment is the whole algorithm: the batch from all runners and env copies
replaces A3C's asynchrony as the decorrelating device (sec. 4 of the paper, and the baselines
note that made A2C the default).
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import torch

from pyactor.rl.algorithm import Algorithm
from pyactor.rl.config import AlgorithmConfig, schedule_value
from pyactor.rl.learner import Learner
from pyactor.rl.ppo import compute_gae


@dataclasses.dataclass(frozen=True)
class A2CConfig(AlgorithmConfig):
    # The runner in the driver: A2C is synchronous (the learner waits for the sample, the runners
    # for the weights), and on envs as cheap as CartPole an actor round trip per 8 steps costs
    # more than the sampling. num_env_runners=N puts N runner actors behind the same loop.
    num_env_runners: int = 0
    num_envs_per_runner: int = 16
    rollout_fragment_length: int = 8
    async_sampling: bool = False  # on-policy gradient: no importance ratio to correct a lag
    gamma: float = 0.99
    lambda_: float = 1.0          # 1.0: plain k-step returns, as the paper
    lr: float = 7e-4
    lr_schedule: typing.Optional[list] = None
    vf_loss_coeff: float = 0.5
    entropy_coeff: float = 0.0
    normalize_advantages: bool = False
    grad_clip: typing.Optional[float] = 0.5

    algo_name = "A2C"

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {self.lambda_}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def algorithm_class(cls):
        return A2C


class A2CLearner(Learner):
    def update(self, fragments: list[dict], lr: float) -> dict[str, float]:
        c = self.config
        self.set_lr(lr)
        cat = lambda key: self.to_tensor(np.concatenate([f[key] for f in fragments], axis=1))  # noqa: E731
        obs, next_obs = cat("obs"), cat("next_obs")
        rewards, actions = cat("rewards"), cat("actions")
        terminateds, truncateds = cat("terminateds").float(), cat("truncateds").float()
        T, N = rewards.shape
        flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731
        out = self.module.forward_train({"obs": flat(obs)})
        values = out["values"].reshape(T, N)
        with torch.no_grad():
            next_values = self.module.value(next_obs)
            # lambda = 1: A_t = R_t - V(s_t) with R_t the k-step return to the fragment's end.
            advantages = compute_gae(rewards, values.detach(), next_values, terminateds,
                                     truncateds, c["gamma"], c["lambda_"])
            returns = advantages + values.detach()
            advantages = flat(advantages)
            if c["normalize_advantages"]:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(out["dist"].log_prob(flat(actions)) * advantages).mean()
        vf_loss = 0.5 * ((flat(values) - flat(returns)) ** 2).mean()
        entropy = out["dist"].entropy().mean()
        loss = policy_loss + c["vf_loss_coeff"] * vf_loss - c["entropy_coeff"] * entropy
        grad_norm = self.apply_gradients(loss, c["grad_clip"])
        self.num_updates += 1
        return {"policy_loss": policy_loss.item(), "vf_loss": vf_loss.item(),
                "entropy": entropy.item(), "grad_norm": grad_norm, "lr": lr}


class A2C(Algorithm):
    config_class = A2CConfig
    learner_class = A2CLearner

    async def training_step(self) -> dict:
        fragments = await self.sample()
        c = self.config
        metrics = await self.learner.update(
            fragments, lr=schedule_value(c.lr_schedule, c.lr, self.env_steps_total))
        self.sync_weights()
        return metrics
