"""PPO: proximal policy optimisation with the clipped surrogate (Schulman et al. 2017,
arXiv:1707.06347) and generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

One iteration (PPO.training_step), reading top to bottom:
    fragments = await sample()                 # [T, N] arrays from every env runner
    learner.update(fragments):
        V(s), V(s') with the current value net  # fresh values: the fragment may lag one update
        advantages = GAE(lambda)               # compute_gae, eq. 16 of the GAE paper
        for epoch, minibatch:                  # minibatch SGD epochs
            ratio = pi(a|s) / pi_behaviour(a|s) # behaviour log-probs from the runner (eq. 6)
            L_clip = E[min(ratio A, clip(ratio, 1-eps, 1+eps) A)]   (eq. 7)
            L = -L_clip + c1 L_vf - c2 entropy                      (eq. 9)
            clip the gradient norm, Adam step
    sync_weights()                             # one put, read by every runner

The defaults solve CartPole-v1 fast (see bench/rl_bench.py); `lr_schedule` and `clip_schedule`
anneal the learning rate and the clip range over env steps.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import torch

from pyactor.rl.algorithm import Algorithm
from pyactor.rl.config import AlgorithmConfig, check_schedule, schedule_value
from pyactor.rl.learner import Learner


@dataclasses.dataclass(frozen=True)
class PPOConfig(AlgorithmConfig):
    num_env_runners: int = 2
    num_envs_per_runner: int = 16
    rollout_fragment_length: int = 16
    gamma: float = 0.98
    lambda_: float = 0.8
    lr: float = 1e-3
    lr_schedule: typing.Optional[list] = None
    clip_param: float = 0.2
    clip_schedule: typing.Optional[list] = None
    vf_clip_param: typing.Optional[float] = None  # None: no value clipping
    vf_loss_coeff: float = 0.5
    entropy_coeff: float = 0.0
    num_epochs: int = 4
    minibatch_size: int = 128
    normalize_advantages: bool = True
    grad_clip: typing.Optional[float] = 0.5

    algo_name = "PPO"

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {self.lambda_}")
        if self.clip_param <= 0:
            raise ValueError(f"clip_param must be > 0, got {self.clip_param}")
        if self.num_epochs < 1 or self.minibatch_size < 1:
            raise ValueError("num_epochs and minibatch_size must be >= 1")
        check_schedule("clip_schedule", self.clip_schedule)

    @classmethod
    def algorithm_class(cls):
        return PPO


# A named preset for continuous control: rl.PPOConfig(**PENDULUM_V1, seed=0). Short horizon
# (gamma 0.9), long fragments and ten epochs (rl-zoo's Pendulum layout); it reached a mean return
# of -291 in 59,392 env steps (bench/rl_bench.py's ppo_pendulum row; the target is -300 within
# 200k). The class defaults above are CartPole-v1's.
PENDULUM_V1 = dict(env="Pendulum-v1", num_env_runners=2, num_envs_per_runner=4,
                   rollout_fragment_length=256, gamma=0.9, lambda_=0.95, lr=1e-3, num_epochs=10,
                   minibatch_size=64, normalize_observations=False)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                terminateds: torch.Tensor, truncateds: torch.Tensor, gamma: float, lam: float
                ) -> torch.Tensor:
    """Advantages [T, N] by GAE (Schulman et al. 2016, eq. 16):
        delta_t = r_t + gamma V(s_{t+1}) (1 - terminated_t) - V(s_t)
        A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1}
    `next_values` is V of the true next observation (the final one at an episode end, same-step
    autoreset), so a truncated episode is bootstrapped and only termination zeroes the value."""
    deltas = rewards + gamma * next_values * (1.0 - terminateds) - values
    continues = gamma * lam * (1.0 - torch.maximum(terminateds, truncateds))
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + continues[t] * running
        advantages[t] = running
    return advantages


class PPOLearner(Learner):
    def update(self, fragments: list[dict], lr: float, clip_param: float) -> dict[str, float]:
        c = self.config
        self.set_lr(lr)
        cat = lambda key: self.to_tensor(np.concatenate([f[key] for f in fragments], axis=1))  # noqa: E731
        obs, next_obs = cat("obs"), cat("next_obs")
        rewards, actions, old_logp = cat("rewards"), cat("actions"), cat("logp")
        terminateds, truncateds = cat("terminateds").float(), cat("truncateds").float()
        T, N = rewards.shape
        with torch.no_grad():
            values = self.module.value(obs)
            next_values = self.module.value(next_obs)
            advantages = compute_gae(rewards, values, next_values, terminateds, truncateds,
                                     c["gamma"], c["lambda_"])
            returns = advantages + values
        flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731
        obs, actions, old_logp = flat(obs), flat(actions), flat(old_logp)
        advantages, returns, old_values = flat(advantages), flat(returns), flat(values)

        batch_size = T * N
        minibatch = min(c["minibatch_size"], batch_size)
        columns = (obs, actions, old_logp, advantages, returns, old_values)
        stats = []
        for _ in range(c["num_epochs"]):
            order = torch.randperm(batch_size, generator=self.generator).to(self.device)
            # One gather per epoch; the minibatches are then contiguous slices of it.
            shuffled = [column[order] for column in columns]
            for start in range(0, batch_size - minibatch + 1, minibatch):
                mb_obs, mb_actions, mb_old_logp, adv, mb_returns, mb_old_values = \
                    [column[start:start + minibatch] for column in shuffled]
                out = self.module.forward_train({"obs": mb_obs})
                logp = out["dist"].log_prob(mb_actions)
                log_ratio = logp - mb_old_logp
                ratio = log_ratio.exp()
                if c["normalize_advantages"]:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                # Clipped surrogate objective (PPO paper, eq. 7), as a loss to minimise.
                policy_loss = -torch.min(ratio * adv,
                                         ratio.clamp(1 - clip_param, 1 + clip_param) * adv).mean()
                vf_loss = self._value_loss(out["values"], mb_returns, mb_old_values)
                entropy = out["dist"].entropy().mean()
                # Combined objective (eq. 9): c1 = vf_loss_coeff, c2 = entropy_coeff.
                loss = policy_loss + c["vf_loss_coeff"] * vf_loss - c["entropy_coeff"] * entropy
                grad_norm = self.apply_gradients(loss, c["grad_clip"], as_tensor=True)
                with torch.no_grad():
                    # k3 estimator of KL(behaviour || current) (Schulman's approximating-KL note).
                    approx_kl = ((ratio - 1) - log_ratio).mean()
                    clip_fraction = ((ratio - 1).abs() > clip_param).float().mean()
                    stats.append(torch.stack([policy_loss, vf_loss, entropy, approx_kl,
                                              clip_fraction, grad_norm]))
        self.num_updates += 1
        steps = len(stats)
        means = torch.stack(stats).mean(0).tolist() if stats else [0.0] * 6
        metrics = dict(zip(("policy_loss", "vf_loss", "entropy", "approx_kl", "clip_fraction",
                            "grad_norm"), means))
        variance = float(returns.var())
        metrics["explained_variance"] = 1 - float((returns - old_values).var()) / variance \
            if variance > 0 else 0.0
        metrics.update(lr=lr, clip_param=clip_param, num_sgd_steps=steps)
        return metrics

    def _value_loss(self, values, returns, old_values):
        """Squared error; with vf_clip_param, the pessimistic max of the clipped and unclipped
        errors (the value clipping of the PPO baselines code, Engstrom et al. 2020 sec. 3)."""
        error = (values - returns) ** 2
        clip = self.config["vf_clip_param"]
        if clip is not None:
            clipped = old_values + (values - old_values).clamp(-clip, clip)
            error = torch.max(error, (clipped - returns) ** 2)
        return 0.5 * error.mean()


class PPO(Algorithm):
    config_class = PPOConfig
    learner_class = PPOLearner

    async def training_step(self) -> dict:
        fragments = await self.sample()
        c = self.config
        metrics = await self.learner.update(
            fragments, lr=schedule_value(c.lr_schedule, c.lr, self.env_steps_total),
            clip_param=schedule_value(c.clip_schedule, c.clip_param, self.env_steps_total))
        self.sync_weights()
        return metrics
