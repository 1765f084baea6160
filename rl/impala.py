"""IMPALA: importance-weighted actor-learner architecture with V-trace (Espeholt et al. 2018,
arXiv:1802.01561), on the fragments-as-they-arrive pipeline of rl/async_learning.py.

The runners never wait for the learner: each fragment is consumed when it arrives and its runner
is asked for the next one at once, so fragments were acted by a policy mu a few updates older
than the learner's pi (the lag is in `policy_lag`). V-trace (rl/vtrace.py) corrects for it.

One update (IMPALALearner.update), reading top to bottom:
    fragments that arrived: obs, actions, rewards, terminated/truncated, mu's log-probs [T, N]
    for epoch, minibatch of env columns (whole sequences):
        log pi(a|x), V(x_t), V(x_{t+1}) with the current network
        v_s, A_s = vtrace(mu, pi, ...)                          (eq. 1 and 4, rl/vtrace.py)
        L_pi = -rho_s log pi(a_s|x_s) (r_s + gamma v_{s+1} - V(x_s))   (policy gradient, eq. 4;
                                                                rho_s is inside A_s)
        L_V  = (v_s - V(x_s))^2 / 2                             (value loss, sec. 4.2)
        L    = L_pi + c_V L_V - c_H H(pi(.|x_s))                (entropy bonus, sec. 4.2)
        clip the gradient norm, Adam step
    sync_weights()                              # one put; each runner reads it after its sample

Minibatches (`minibatch_size`) and several passes (`num_epochs`) are options the paper does not
have (RLlib's IMPALA has them too); the defaults, one pass in minibatches of 128 env steps with a
small entropy bonus, solved CartPole-v1 on seeds 0-2 (bench/rl_bench.py, docs/rl-async.md).
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import torch

from pyactor.rl.async_learning import AsyncSamplingAlgorithm
from pyactor.rl.config import AlgorithmConfig, schedule_value
from pyactor.rl.learner import Learner
from pyactor.rl.vtrace import vtrace


@dataclasses.dataclass(frozen=True)
class IMPALAConfig(AlgorithmConfig):
    num_env_runners: int = 2
    num_envs_per_runner: int = 16
    rollout_fragment_length: int = 32
    min_env_steps_per_iteration: int = 0   # 0: one fragment per runner
    gamma: float = 0.99
    lr: float = 1e-3
    lr_schedule: typing.Optional[list] = None
    vtrace_clip_rho_threshold: typing.Optional[float] = 1.0     # rho_bar (None: no clipping)
    vtrace_clip_c_threshold: typing.Optional[float] = 1.0       # c_bar
    vtrace_clip_pg_rho_threshold: typing.Optional[float] = 1.0  # rho_bar of the policy gradient
    vtrace_lambda: float = 1.0
    vf_loss_coeff: float = 0.5
    entropy_coeff: float = 0.01
    num_epochs: int = 1
    minibatch_size: typing.Optional[int] = 128  # env steps; None: the whole batch at once
    normalize_advantages: bool = False
    grad_clip: typing.Optional[float] = 0.5

    algo_name = "IMPALA"

    def validate(self) -> None:
        super().validate()
        for name in ("vtrace_clip_rho_threshold", "vtrace_clip_c_threshold",
                     "vtrace_clip_pg_rho_threshold"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        if not 0.0 <= self.vtrace_lambda <= 1.0:
            raise ValueError(f"vtrace_lambda must be in [0, 1], got {self.vtrace_lambda}")
        if self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"minibatch_size must be >= 1 or None, got {self.minibatch_size}")
        if self.min_env_steps_per_iteration < 0:
            raise ValueError("min_env_steps_per_iteration must be >= 0")

    @classmethod
    def algorithm_class(cls):
        return IMPALA


class IMPALALearner(Learner):
    """V-trace actor-critic updates; APPO's learner overrides `policy_loss` (and adds a target
    network)."""

    def update(self, fragments: list[dict], lr: float) -> dict[str, float]:
        self.set_lr(lr)
        cat = lambda key: self.to_tensor(np.concatenate([f[key] for f in fragments], axis=1))  # noqa: E731
        batch = {key: cat(key) for key in ("obs", "next_obs", "actions", "rewards", "logp",
                                           "terminateds", "truncateds")}
        T, N = batch["rewards"].shape
        # Minibatches of whole env columns: V-trace runs along time, so sequences stay intact.
        columns = max(1, min(N, (self.config["minibatch_size"] or T * N) // T))
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(self.config["num_epochs"]):
            order = torch.randperm(N, generator=self.generator).to(self.device)
            for start in range(0, N - columns + 1, columns):
                idx = order[start:start + columns]
                stats = self.minibatch_step({key: value[:, idx] for key, value in batch.items()})
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
        self.after_update()
        self.num_updates += 1
        metrics = {key: value / steps for key, value in totals.items()}
        metrics.update(lr=lr, num_sgd_steps=steps)
        return metrics

    def minibatch_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        c = self.config
        T, N = batch["rewards"].shape
        obs = batch["obs"].reshape(T * N, *batch["obs"].shape[2:])
        out = self.module.forward_train({"obs": obs})
        logp = out["dist"].log_prob(batch["actions"].reshape(T * N, *batch["actions"].shape[2:]))
        values = out["values"]
        with torch.no_grad():
            next_values = self.module.value(batch["next_obs"])
            reference_logp = self.reference_logp(obs, batch, logp)
            vt = vtrace(batch["logp"], reference_logp.reshape(T, N), batch["rewards"],
                        values.detach().reshape(T, N), next_values, batch["terminateds"],
                        batch["truncateds"], c["gamma"], c["vtrace_clip_rho_threshold"],
                        c["vtrace_clip_c_threshold"], c["vtrace_clip_pg_rho_threshold"],
                        c["vtrace_lambda"])
            advantages = vt.pg_advantages.reshape(-1)
            if c["normalize_advantages"]:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss, extra = self.policy_loss(logp, reference_logp, advantages, out)
        vf_loss = 0.5 * ((values - vt.vs.reshape(-1)) ** 2).mean()
        entropy = out["dist"].entropy().mean()
        loss = policy_loss + c["vf_loss_coeff"] * vf_loss - c["entropy_coeff"] * entropy
        grad_norm = self.apply_gradients(loss, c["grad_clip"])
        return {"policy_loss": policy_loss.item(), "vf_loss": vf_loss.item(),
                "entropy": entropy.item(), "grad_norm": grad_norm,
                "mean_rho": float(vt.rhos.mean()), **extra}

    def reference_logp(self, obs, batch, logp) -> torch.Tensor:
        """pi of V-trace's ratios pi/mu: the policy being trained (APPO: its target network)."""
        return logp.detach()

    def policy_loss(self, logp, reference_logp, advantages, out) -> tuple[torch.Tensor, dict]:
        # The V-trace policy gradient (eq. 4): rho_s is already inside the advantages.
        return -(logp * advantages).mean(), {}

    def after_update(self) -> None:
        """Hook after each update (APPO: target network and KL coefficient)."""


class IMPALA(AsyncSamplingAlgorithm):
    config_class = IMPALAConfig
    learner_class = IMPALALearner

    def update_kwargs(self) -> dict:
        c = self.config
        return {"lr": schedule_value(c.lr_schedule, c.lr, self.env_steps_total)}
