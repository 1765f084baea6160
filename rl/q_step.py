"""QModule's maths outside autograd: DQN's SGD step with its gradients worked out by hand, and a
numpy copy of the network for acting (NumpyQ, at the end).

Why: on CartPole's network an update is almost all fixed cost per torch call, and autograd's
backward (graph building, the engine, one node per op) was the largest share of it (cProfile of
a DQN run: run_backward 35 % of the driver's time). Written out, the step is about half the
calls, all outside autograd. The maths is dqn.py's loss, exactly; tests/rl/test_dqn.py checks
the gradients against autograd's for every option.

Data flow of one step, X = [obs; next_obs] with double Q (one pass serves both), h_0 = X:

    forward   z_l = h_{l-1} W_l^T + b_l,  h_l = f(z_l)        (the trunk, l = 1..L)
              Q = h_L W^T + b,  with the dueling heads folded into one linear map (Wang et al.
              2016, eq. 9: Q = V + A - mean_a A is linear in h_L):
                  W = W_A - mean_rows(W_A) + w_V,   b = b_A - mean(b_A) + b_V
    target    y = r + gamma^m (1 - done) Q_target(s', argmax_a' Q(s', a'))   (double Q)
    loss      mean_i w_i huber(Q(s_i, a_i) - y_i)
    backward  dQ[i, a_i] = w_i clamp(Q(s_i, a_i) - y_i, -1, 1) / B    (huber; mse: no clamp)
              dW = dQ^T h_L,  db = sum_i dQ_i,  dh_L = dQ W
              dz_l = dh_l * f'(z_l) (read from h_l),  dW_l = dz_l^T h_{l-1},  db_l = sum_i dz_l,
              dh_{l-1} = dz_l W_l
              dueling: dW_A = dW - mean_rows(dW), dw_V = sum_rows(dW) (and so for the biases)

The gradients land in each parameter's `.grad`, so the optimiser, clipping, checkpoints and the
target network are the learner's as before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


# Each derivative multiplies the upstream gradient by f'(z), read from the output h = f(z).
def _relu_backward(grad, h):
    return torch.ops.aten.threshold_backward(grad, h, 0)  # one call for grad * (h > 0)


def _tanh_backward(grad, h):
    return grad.mul_(1.0 - h * h)


def _elu_backward(grad, h):  # h = exp(z) - 1 for z <= 0, so f'(z) = h + 1 there
    return grad.mul_(torch.where(h > 0, 1.0, h + 1.0))


# activation name -> (in-place function, backward through it)
_ACTIVATIONS = {"relu": (torch.relu_, _relu_backward), "tanh": (torch.tanh_, _tanh_backward),
                "elu": (lambda x: F.elu(x, inplace=True), _elu_backward)}


def head_weights(advantage: tuple, value: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of the linear map h_L -> Q(s, .) from the heads' (weight, bias), dueling folded
    in (value None: no dueling)."""
    if value is None:
        return advantage
    weight = advantage[0] - advantage[0].mean(0, keepdim=True) + value[0]
    bias = advantage[1] - advantage[1].mean() + value[1]
    return weight, bias


def _linear_params(module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(linear.weight, linear.bias) for linear in module]


def supports(module) -> bool:
    """Whether `module` is QModule's plain MLP (the hand-written gradients' assumption)."""
    from pyactor.rl.dqn import QModule

    return (isinstance(module, QModule) and type(module).q_values is QModule.q_values
            and module.model_config["activation"] in _ACTIVATIONS
            and len(module.advantage) == 1
            and (module.value is None or len(module.value) == 1))


class HandQStep:
    """Loss, gradients and TD errors of one batch, for a QModule and its target network."""

    def __init__(self, module, target, double_q: bool, loss_fn: str):
        self.double_q, self.loss_fn = double_q, loss_fn
        self.activate, self.backward_activation = _ACTIVATIONS[module.model_config["activation"]]
        # The parameters themselves, once: nn.Module attribute lookups cost more than the maths.
        # (Optimiser steps, checkpoint loads and target copies all write them in place.)
        self.trunk = [(linear.weight, linear.bias) for linear, _ in module._trunk_layers]
        self.advantage = _linear_params(module.advantage)[0]
        self.value = None if module.value is None else _linear_params(module.value)[0]
        self.target_trunk = [(linear.weight, linear.bias) for linear, _ in target._trunk_layers]
        self.target_advantage = _linear_params(target.advantage)[0]
        self.target_value = None if target.value is None else _linear_params(target.value)[0]
        self._target_head = None  # folded once per target refresh, not once per step

    def target_changed(self) -> None:
        self._target_head = None

    def _trunk(self, layers, x) -> list[torch.Tensor]:
        hidden = [x]
        for weight, bias in layers:
            hidden.append(self.activate(F.linear(hidden[-1], weight, bias)))
        return hidden

    @staticmethod
    def prepare(tensors: dict) -> dict:
        """What a step needs that can be computed for a whole chunk of K stacked batches at once
        ([K, B, ...] or one batch [B, ...]): [obs; next_obs] per batch and gamma^m (1 - done)."""
        tensors["both_obs"] = torch.cat([tensors["obs"], tensors["next_obs"]], dim=-2)
        tensors["bootstrap_scale"] = tensors["discounts"] * (1.0 - tensors["terminateds"])
        return tensors

    @torch.no_grad()
    def gradients(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Set every parameter's .grad for `batch`; returns (loss, Q(s, a), |TD error|)."""
        obs, next_obs, actions = batch["obs"], batch["next_obs"], batch["actions"]
        size = len(obs)
        weight, bias = head_weights(self.advantage, self.value)
        hidden = self._trunk(self.trunk, batch["both_obs"] if self.double_q else obs)
        q_all = F.linear(hidden[-1], weight, bias)
        if self._target_head is None:
            self._target_head = [t.clone() for t in head_weights(self.target_advantage,
                                                                 self.target_value)]
        next_q_target = F.linear(self._trunk(self.target_trunk, next_obs)[-1], *self._target_head)
        if self.double_q:
            best = q_all[size:].argmax(-1, keepdim=True)
            bootstrap = next_q_target.gather(-1, best).squeeze(-1)
        else:
            bootstrap = next_q_target.max(-1).values
        targets = torch.addcmul(batch["rewards"], batch["bootstrap_scale"], bootstrap)
        q_taken = q_all[:size].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        diff = q_taken - targets
        if self.loss_fn == "huber":
            per_sample = F.huber_loss(q_taken, targets, reduction="none", delta=1.0)
            slope = diff.clamp(-1.0, 1.0)
        else:
            per_sample = 0.5 * diff * diff
            slope = diff
        loss = (batch["weights"] * per_sample).mean()
        d_q = torch.zeros(size, q_all.shape[1]).scatter_(
            1, actions.unsqueeze(-1), (slope * batch["weights"]).div_(size).unsqueeze(-1))
        self._backward(hidden, d_q, weight, size)
        return loss, q_taken, diff.abs_()

    def _backward(self, hidden: list[torch.Tensor], d_q: torch.Tensor, weight: torch.Tensor,
                  size: int) -> None:
        last = hidden[-1][:size]
        d_weight, d_bias = d_q.t().mm(last), d_q.sum(0)
        if self.value is None:
            self.advantage[0].grad, self.advantage[1].grad = d_weight, d_bias
        else:
            self.advantage[0].grad = d_weight - d_weight.mean(0, keepdim=True)
            self.advantage[1].grad = d_bias - d_bias.mean()
            self.value[0].grad = d_weight.sum(0, keepdim=True)
            self.value[1].grad = d_bias.sum(0, keepdim=True)
        d_hidden = d_q.mm(weight)
        for index in range(len(self.trunk), 0, -1):
            layer_weight, layer_bias = self.trunk[index - 1]
            d_z = self.backward_activation(d_hidden, hidden[index][:size])
            layer_weight.grad = d_z.t().mm(hidden[index - 1][:size])
            layer_bias.grad = d_z.sum(0)
            if index > 1:
                d_hidden = d_z.mm(layer_weight)


# ---------------------------------------------------------------------- numpy inference
_NUMPY_ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0, out=x), "tanh": np.tanh,
                      "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))}


class NumpyQ:
    """QModule's greedy and epsilon-greedy action choice in numpy, for env runners and
    evaluation: a step of a few tiny matmuls costs numpy a fraction of torch's dispatch. The
    dueling heads are folded into one linear map, as in the SGD step above."""

    def __init__(self, module):
        self.layout = [(name, tuple(p.shape)) for name, p in module.named_parameters()]
        self.num_trunk = len(module._trunk_layers)
        self.dueling = module.value is not None
        self.activation = _NUMPY_ACTIVATIONS[module.model_config["activation"]]
        self.num_actions = module.num_actions
        self.epsilon = float(module.model_config.get("explore_epsilon", 0.0))
        self.size = sum(int(np.prod(shape)) for _, shape in self.layout)
        self.set_flat_weights(module.get_flat_weights())

    def set_flat_weights(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, np.float32)
        if flat.size != self.size:
            raise ValueError(f"weights vector has {flat.size} values, module has {self.size}")
        arrays, offset = [], 0
        for _, shape in self.layout:  # parameters() order: trunk, advantage head, value head
            count = int(np.prod(shape))
            arrays.append(flat[offset:offset + count].reshape(shape))
            offset += count
        trunk, head = arrays[:2 * self.num_trunk], arrays[2 * self.num_trunk:]
        weight, bias = head[0], head[1]
        if self.dueling:
            weight = weight - weight.mean(0, keepdims=True) + head[2]
            bias = bias - bias.mean() + head[3]
        pairs = list(zip(trunk[0::2], trunk[1::2])) + [(weight, bias)]
        self.layers = [(np.ascontiguousarray(w.T), b.copy()) for w, b in pairs]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = obs
        for index, (weight_t, bias) in enumerate(self.layers):
            x = x @ weight_t
            x += bias
            if index < self.num_trunk:
                x = self.activation(x)
        return x

    def greedy(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {"actions": self.q_values(obs).argmax(axis=1)}

    def explore(self, obs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Epsilon-greedy with the model config's explore_epsilon (QModule's default)."""
        actions = self.q_values(obs).argmax(axis=1)
        explore = rng.random(len(obs)) < self.epsilon
        random_actions = rng.integers(self.num_actions, size=len(obs))
        return {"actions": np.where(explore, random_actions, actions)}
