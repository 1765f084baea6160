"""Adam (Kingma and Ba 2015, arXiv:1412.6980, Algorithm 1) in a few foreach tensor operations, for
the learners' small networks.

Why not torch.optim.Adam: building the first torch optimizer imports torch._dynamo (its methods
are wrapped to keep the compiler out), which took as long as importing torch itself, measured in
`build()`; and its step goes through profiling hooks and per-call grouping of the tensors by
device and dtype, which cost more than the maths on networks of a few thousand weights.

The interface is the part of torch.optim.Optimizer the learners use: `param_groups[i]["lr"]`,
`zero_grad(set_to_none=True)`, `step()`, and `state_dict()` / `load_state_dict()` in
torch.optim.Adam's layout (so checkpoints written with either load into the other).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch


class Adam:
    """Adam with bias correction (no weight decay, no amsgrad): per parameter
        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)"""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("Adam got an empty parameter list")
        self.param_groups = [{"params": self.params, "lr": lr, "betas": tuple(betas),
                              "eps": eps}]
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                           for p in self.params]
        self.steps = 0
        self._scratch = None  # fused_step's intermediate, allocated on first use

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        exp_avg = [self.exp_avg[i] for i in live]
        exp_avg_sq = [self.exp_avg_sq[i] for i in live]
        self.steps += 1
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        bias1 = 1 - beta1 ** self.steps
        bias2 = 1 - beta2 ** self.steps
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, -lr / bias1)

    def flatten(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Move the moments into two flat tensors (each parameter's moments become views of them,
        in the parameters' order) and return them, for `fused_step` on flat parameters."""
        flats = []
        for moments in (self.exp_avg, self.exp_avg_sq):
            flat = torch.cat([m.reshape(-1) for m in moments])
            offset = 0
            for i, m in enumerate(moments):
                moments[i] = flat[offset:offset + m.numel()].view_as(m)
                offset += m.numel()
            flats.append(flat)
        return flats[0], flats[1]

    def fused_step(self, params: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
                   exp_avg_sq: np.ndarray) -> None:
        """`step` on flat numpy views of the parameters, their gradient and the moments of
        `flatten`: the same update in whole-vector operations, every intermediate written into
        one scratch vector (a step is ten passes over the weights, no allocation)."""
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        self.steps += 1
        scratch = self._scratch
        if scratch is None or scratch.shape != params.shape or scratch.dtype != params.dtype:
            scratch = self._scratch = np.empty_like(params)
        np.subtract(grad, exp_avg, out=scratch)  # m <- m + (1 - b1) (g - m), torch's lerp
        scratch *= 1 - beta1
        exp_avg += scratch
        exp_avg_sq *= beta2
        np.multiply(grad, grad, out=scratch)
        scratch *= 1 - beta2
        exp_avg_sq += scratch
        np.sqrt(exp_avg_sq, out=scratch)  # sqrt(v / (1 - b2^t)) + eps
        scratch *= 1.0 / math.sqrt(1 - beta2 ** self.steps)
        scratch += eps
        np.divide(exp_avg, scratch, out=scratch)
        scratch *= lr / (1 - beta1 ** self.steps)
        params -= scratch

    def state_dict(self) -> dict:
        """torch.optim.Adam's layout: per-parameter state by index, and the group's settings."""
        group = self.param_groups[0]
        state = {i: {"step": torch.tensor(float(self.steps)), "exp_avg": self.exp_avg[i].clone(),
                     "exp_avg_sq": self.exp_avg_sq[i].clone()}
                 for i in range(len(self.params))} if self.steps else {}
        settings = {"lr": group["lr"], "betas": group["betas"], "eps": group["eps"],
                    "weight_decay": 0, "amsgrad": False, "maximize": False,
                    "foreach": None, "capturable": False, "differentiable": False, "fused": None,
                    "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [settings]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"optimizer state has {sum(len(g['params']) for g in groups)} "
                             f"parameters in {len(groups)} groups, this one {len(self.params)} "
                             f"in 1")
        group = self.param_groups[0]
        for key in ("lr", "betas", "eps"):
            group[key] = tuple(groups[0][key]) if key == "betas" else groups[0][key]
        self.steps = 0
        for position, index in enumerate(groups[0]["params"]):
            saved = state_dict["state"].get(index)
            if saved is None:
                continue
            p = self.params[position]
            # In place: the moments may be views of the flat buffers of `flatten`.
            self.exp_avg[position].copy_(saved["exp_avg"].to(p.device, p.dtype))
            self.exp_avg_sq[position].copy_(saved["exp_avg_sq"].to(p.device, p.dtype))
            self.steps = int(float(saved["step"]))
