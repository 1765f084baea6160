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

Each minibatch step has two implementations of the same maths: torch autograd
(`_torch_minibatch`, any module, any device) and, for a plain ActorCriticModule on CPU, the
gradient of the loss written out and backpropagated in numpy (`_numpy_minibatch` with
rl/numpy_learner.py), 3-4x less CPU per update on CartPole-sized networks.

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
from pyactor.rl import numpy_learner
from pyactor.rl.learner import Learner
from pyactor.rl.module import DiagGaussian

LOG_SQRT_2PI = DiagGaussian.LOG_SQRT_2PI


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
    # 20 minibatch steps per 512 env steps: more SGD per sample than 4 epochs x 128 learns
    # CartPole-v1 in fewer env steps (to 475, seeds 0-2: 68.6k / 77.3k / 70.7k against
    # 110k / 142k / - on the same code), and the numpy update keeps that cheap (rl-zoo's
    # layout is heavier still: 20 epochs of one 256 batch per 256 env steps).
    num_epochs: int = 10
    minibatch_size: int = 256
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
    """PPO's update. A plain ActorCriticModule on CPU trains through its numpy view (see
    rl/numpy_learner.py: the same maths, a fraction of torch's per-step cost on small networks),
    with the loss's gradients taken by hand below; any other module through torch autograd."""

    def __init__(self, module_spec, config: dict, seed: int | None = None):
        super().__init__(module_spec, config, seed)
        self.fused = None
        if numpy_learner.supports(self.module):
            flat = numpy_learner.flatten_parameters(self.parameters)
            exp_avg, exp_avg_sq = self.optimizer.flatten()
            self.fused = (numpy_learner.NumpyActorCritic(self.module, flat.numpy()),
                          exp_avg.numpy(), exp_avg_sq.numpy())

    def update(self, fragments: list[dict], lr: float, clip_param: float) -> dict[str, float]:
        if self.fused is None:
            return self._update(fragments, lr, clip_param)
        with numpy_learner.one_blas_thread():
            return self._update(fragments, lr, clip_param)

    def _update(self, fragments: list[dict], lr: float, clip_param: float) -> dict[str, float]:
        c = self.config
        self.set_lr(lr)
        cat = lambda key: np.concatenate([f[key] for f in fragments], axis=1)  # noqa: E731
        obs, next_obs = cat("obs"), cat("next_obs")
        T, N = obs.shape[:2]
        flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731
        # V(s), V(s') with the current value net: the fragment may lag one update.
        if self.fused is not None:
            net = self.fused[0]
            values = net.values(flat(obs)).reshape(T, N)
            next_values = net.values(flat(next_obs)).reshape(T, N)
        else:
            with torch.no_grad():
                values = self.module.value(self.to_tensor(obs)).cpu().numpy()
                next_values = self.module.value(self.to_tensor(next_obs)).cpu().numpy()
        advantages = compute_gae(*(torch.from_numpy(x) for x in (
            cat("rewards"), values, next_values, cat("terminateds").astype(np.float32),
            cat("truncateds").astype(np.float32))), c["gamma"], c["lambda_"]).numpy()
        returns = advantages + values
        columns = [flat(obs), flat(cat("actions")), flat(cat("logp")), flat(advantages),
                   flat(returns), flat(values)]
        if self.fused is None:
            columns = [self.to_tensor(column) for column in columns]
            minibatch_step = self._torch_minibatch
        else:
            minibatch_step = self._numpy_minibatch

        batch_size = T * N
        minibatch = min(c["minibatch_size"], batch_size)
        stats = []
        for _ in range(c["num_epochs"]):
            order = torch.randperm(batch_size, generator=self.generator)
            if self.fused is None:
                order = order.to(self.device)
            else:
                order = order.numpy()
            # One gather per epoch; the minibatches are then contiguous slices of it.
            shuffled = [column[order] for column in columns]
            for start in range(0, batch_size - minibatch + 1, minibatch):
                stats.append(minibatch_step(
                    *[column[start:start + minibatch] for column in shuffled], clip_param))
        self.num_updates += 1
        steps = len(stats)
        if not stats:
            means = [0.0] * 6
        elif self.fused is None:
            means = torch.stack(stats).mean(0).tolist()
        else:
            means = np.mean(stats, axis=0, dtype=np.float64).tolist()
        metrics = dict(zip(("policy_loss", "vf_loss", "entropy", "approx_kl", "clip_fraction",
                            "grad_norm"), means))
        variance = float(returns.var(ddof=1))
        metrics["explained_variance"] = \
            1 - float((returns - values).var(ddof=1)) / variance if variance > 0 else 0.0
        metrics.update(lr=lr, clip_param=clip_param, num_sgd_steps=steps)
        return metrics

    def _torch_minibatch(self, obs, actions, old_logp, adv, returns, old_values, clip_param):
        c = self.config
        out = self.module.forward_train({"obs": obs})
        logp = out["dist"].log_prob(actions)
        log_ratio = logp - old_logp
        ratio = log_ratio.exp()
        if c["normalize_advantages"]:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        # Clipped surrogate objective (PPO paper, eq. 7), as a loss to minimise.
        policy_loss = -torch.min(ratio * adv,
                                 ratio.clamp(1 - clip_param, 1 + clip_param) * adv).mean()
        vf_loss = self._value_loss(out["values"], returns, old_values)
        entropy = out["dist"].entropy().mean()
        # Combined objective (eq. 9): c1 = vf_loss_coeff, c2 = entropy_coeff.
        loss = policy_loss + c["vf_loss_coeff"] * vf_loss - c["entropy_coeff"] * entropy
        grad_norm = self.apply_gradients(loss, c["grad_clip"], as_tensor=True)
        with torch.no_grad():
            # k3 estimator of KL(behaviour || current) (Schulman's approximating-KL note).
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clip_fraction = ((ratio - 1).abs() > clip_param).float().mean()
            return torch.stack([policy_loss, vf_loss, entropy, approx_kl, clip_fraction,
                                grad_norm])

    def _numpy_minibatch(self, obs, actions, old_logp, adv, returns, old_values, clip_param):
        """The same loss as _torch_minibatch (eqs. 7 and 9), its gradient with respect to the
        policy head and the values written out, then backpropagated by the numpy view."""
        c = self.config
        net, exp_avg, exp_avg_sq = self.fused
        B = len(obs)
        head, values, cache = net.forward(obs)
        if c["normalize_advantages"]:
            adv = (adv - adv.mean()) / (adv.std(ddof=1) + np.float32(1e-8))
        if net.discrete:
            shifted = head - head.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            probs = np.exp(log_probs)
            rows = np.arange(B)
            logp = log_probs[rows, actions]
            entropy_rows = -(probs * log_probs).sum(axis=1)
            entropy = entropy_rows.mean()
        else:
            log_std = net.log_std
            z = (actions - head) * np.exp(-log_std)
            logp = (-0.5 * z * z - log_std - LOG_SQRT_2PI).sum(axis=1)
            entropy = (log_std + 0.5 + LOG_SQRT_2PI).sum()
        log_ratio = logp - old_logp
        ratio = np.exp(log_ratio)
        unclipped = ratio * adv
        clipped = np.clip(ratio, 1 - clip_param, 1 + clip_param) * adv
        policy_loss = -np.minimum(unclipped, clipped).mean()
        # d L_clip / d logp: only where the unclipped term is the minimum (elsewhere the clipped
        # term is constant in the parameters); d ratio / d logp = ratio.
        d_logp = np.where(unclipped <= clipped, -adv * ratio / B, 0.0).astype(np.float32)
        entropy_coeff = c["entropy_coeff"]
        d_log_std = None
        if net.discrete:
            # d logp(a) / d logits = onehot(a) - softmax; d(-c2 H) / d logits = c2 p (log p + H).
            d_head = probs * (-d_logp[:, None])
            d_head[rows, actions] += d_logp
            if entropy_coeff:
                d_head += (entropy_coeff / B) * probs * (log_probs + entropy_rows[:, None])
        else:
            inv_std = np.exp(-log_std)
            d_head = d_logp[:, None] * z * inv_std
            d_log_std = (d_logp[:, None] * (z * z - 1)).sum(axis=0) - entropy_coeff
        error = (values - returns) ** 2
        d_values = (c["vf_loss_coeff"] / B) * (values - returns)
        if c["vf_clip_param"] is not None:
            clip = c["vf_clip_param"]
            clipped_error = (old_values + np.clip(values - old_values, -clip, clip) - returns) ** 2
            d_values *= error >= clipped_error  # the clipped branch is flat where it is chosen
            error = np.maximum(error, clipped_error)
        vf_loss = 0.5 * error.mean()
        grad = net.backward(cache, d_head, d_values, d_log_std)
        grad_norm = float(np.sqrt(np.dot(grad, grad)))
        if c["grad_clip"]:
            grad *= min(1.0, c["grad_clip"] / (grad_norm + 1e-6))
        self.optimizer.fused_step(net.flat, grad, exp_avg, exp_avg_sq)
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = (np.abs(ratio - 1) > clip_param).mean()
        return (policy_loss, vf_loss, entropy, approx_kl, clip_fraction, grad_norm)

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
