"""V-trace: the off-policy corrected value targets and policy-gradient advantages of IMPALA
(Espeholt et al. 2018, arXiv:1802.01561, sec. 4), over [T, N] fragments with episode ends.

    behaviour log-probs mu(a|x)  (the runner's, possibly a few updates old)
    target log-probs    pi(a|x)  (the learner's policy now)
    values V(x_t), next_values V(x_{t+1})  (the true next state: the final one at an episode end)
        |
        v
    rho_t = min(rho_bar, pi/mu)        c_t = lambda min(c_bar, pi/mu)                (eq. 1)
    delta_t V = rho_t (r_t + gamma V(x_{t+1}) - V(x_t))
    v_s = V(x_s) + sum_{t>=s} gamma^(t-s) (prod_{i=s}^{t-1} c_i) delta_t V           (eq. 1)
        computed backwards: v_s - V(x_s) = delta_s V + gamma c_s (v_{s+1} - V(x_{s+1}))   (Remark 1)
    A_s = rho^pg_s (r_s + gamma v_{s+1} - V(x_s)),  rho^pg_s = min(pg_rho_bar, pi/mu)      (eq. 4)

Episode ends inside a fragment (same-step autoreset): the sum stops at the end of the episode.
A terminated step bootstraps nothing (V(x_{t+1}) = 0); a truncated step bootstraps the value of
its final observation. At the fragment's end the sum is cut with v_T = V(x_T) (the n-step
truncation of the paper), so `next_values[-1]` serves as v_{s+1} there.
"""

from __future__ import annotations

import typing

import torch


class VTraceReturns(typing.NamedTuple):
    vs: torch.Tensor             # [T, N] value targets v_s
    pg_advantages: torch.Tensor  # [T, N] rho^pg_s (r_s + gamma v_{s+1} - V(x_s))
    rhos: torch.Tensor           # [T, N] unclipped importance ratios pi/mu (for reporting)


def vtrace(behaviour_logp: torch.Tensor, target_logp: torch.Tensor, rewards: torch.Tensor,
           values: torch.Tensor, next_values: torch.Tensor, terminateds: torch.Tensor,
           truncateds: torch.Tensor, gamma: float, rho_bar: float | None = 1.0,
           c_bar: float | None = 1.0, pg_rho_bar: float | None = 1.0, lambda_: float = 1.0
           ) -> VTraceReturns:
    """V-trace targets and advantages for [T, N] tensors (time first). None for a threshold means
    no clipping. Inputs are treated as constants: call it under no_grad or on detached tensors."""
    terminateds = terminateds.to(values.dtype)
    ends = torch.maximum(terminateds, truncateds.to(values.dtype))
    rhos = torch.exp(target_logp - behaviour_logp)
    clipped_rhos = rhos if rho_bar is None else rhos.clamp(max=rho_bar)
    cs = lambda_ * (rhos if c_bar is None else rhos.clamp(max=c_bar))
    bootstrap = next_values * (1.0 - terminateds)  # V(x_{t+1}); 0 after a termination
    deltas = clipped_rhos * (rewards + gamma * bootstrap - values)
    continues = gamma * cs * (1.0 - ends)  # the trace stops at an episode end
    vs_minus_v = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):  # T steps of [N]-wide ops
        running = deltas[t] + continues[t] * running
        vs_minus_v[t] = running
    vs = values + vs_minus_v
    # v_{s+1}: the next target inside an episode; V(x_{s+1}) at the fragment's end and at
    # truncations; 0 after a termination (bootstrap holds both of the last two).
    next_vs = torch.cat([vs[1:], bootstrap[-1:]], dim=0)
    next_vs = torch.where(ends > 0, bootstrap, next_vs)
    pg_rhos = rhos if pg_rho_bar is None else rhos.clamp(max=pg_rho_bar)
    pg_advantages = pg_rhos * (rewards + gamma * next_vs - values)
    return VTraceReturns(vs, pg_advantages, rhos)
