"""RLModules: the torch networks an algorithm trains and its env runners run.

The same module class is built twice from (observation_space, action_space, model_config): by the
learner, which trains it, and by every env runner, on CPU, for inference. Weights travel from the
first to the others as one flat float32 vector (`get_flat_weights` / `set_flat_weights`), so one
`pa.put` per update serves every runner.

The interface follows RLlib's new API stack:
- `forward_exploration(obs, generator=None, **explore_kw)` -> dict with "actions" and whatever the
  algorithm needs later from the behaviour policy (for PPO: "logp" and "values"),
- `forward_inference(obs)` -> dict with the greedy "actions",
- `forward_train(batch)` -> what the loss needs (for PPO: the action distribution and values).

Action distributions are small classes here rather than torch.distributions: those validate
arguments and build broadcast shapes on every call, which costs more than the tiny networks used
on CartPole-sized problems.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyactor.rl.module_spec import DEFAULT_MODEL, ModuleSpec  # noqa: F401 - re-exported
from pyactor.rl.numpy_policy import NumpyActorCritic

try:
    import gymnasium as gym
except ImportError as error:  # pragma: no cover
    raise ImportError("pyactor.rl needs gymnasium: pip install 'pyactor[rl]'") from error

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


class Categorical:
    """A categorical distribution over the last axis of `logits`."""

    def __init__(self, logits: torch.Tensor):
        self.logits = torch.log_softmax(logits, dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Inverse CDF: one uniform per row against the cumulative probabilities (0.7x the time
        # of torch.multinomial on 16 rows, measured alternating in one process).
        u = torch.rand(self.logits.shape[:-1] + (1,), generator=generator,
                       device=self.logits.device)
        below = (self.logits.exp().cumsum(-1) < u).sum(-1)
        return below.clamp_max(self.logits.shape[-1] - 1)  # u above a rounded-down total

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)


class DiagGaussian:
    """A Gaussian with a diagonal covariance: independent normal action components."""

    LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=self.mean.device)
        return self.mean + noise * self.log_std.exp()

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z * z - self.log_std - self.LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 + self.LOG_SQRT_2PI).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.mean


class RLModule(nn.Module):
    """Base of every module: built from the spaces and a model config dict."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 model_config: dict | None = None):
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.model_config = {**DEFAULT_MODEL, **(model_config or {})}

    def forward_exploration(self, obs: torch.Tensor, generator: torch.Generator | None = None,
                            **explore_kw) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_inference(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_train(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def numpy_policy(self):
        """A numpy copy of forward_exploration/forward_inference for env runners (see
        rl/numpy_policy.py), or None: the runner then steps with the torch module."""
        return None

    # Weights as one flat vector: one put per update, one read per runner.
    def get_flat_weights(self) -> np.ndarray:
        return nn.utils.parameters_to_vector(self.parameters()).detach().cpu().numpy()

    def set_flat_weights(self, flat: np.ndarray) -> None:
        vector = torch.as_tensor(np.asarray(flat))
        offset = 0
        with torch.no_grad():
            for parameter in self.parameters():
                size = parameter.numel()
                parameter.copy_(vector[offset:offset + size].view_as(parameter))
                offset += size
        if offset != vector.numel():
            raise ValueError(f"weights vector has {vector.numel()} values, module has {offset}")


def run_mlp(layers: list[tuple[nn.Linear, Any]], x: torch.Tensor) -> torch.Tensor:
    """Apply (linear, activation function) pairs with functional calls: the same maths as the
    nn.Sequential, without its per-module call overhead, which dominates on 16 observations."""
    for linear, activation in layers:
        x = F.linear(x, linear.weight, linear.bias)
        if activation is not None:
            x = activation(x)
    return x


def functional_layers(sequential: nn.Sequential) -> list[tuple[nn.Linear, Any]]:
    functions = {nn.Tanh: torch.tanh, nn.ReLU: torch.relu, nn.ELU: F.elu}
    modules = list(sequential)
    return [(module, functions[type(modules[i + 1])] if i + 1 < len(modules) else None)
            for i, module in enumerate(modules) if isinstance(module, nn.Linear)]


def mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    """Linear layers with orthogonal init (Engstrom et al. 2020 list it among PPO's code-level
    details), `activation` between them, the last layer scaled by `out_gain`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"model activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(n_in, n_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ActorCriticModule(RLModule):
    """Separate policy and value MLPs (CleanRL's layout). Discrete actions: a categorical over
    logits; Box actions: a diagonal Gaussian with a state-independent learned log std, its samples
    clipped to the bounds by the env runner (the log-prob is of the unclipped sample)."""

    def __init__(self, observation_space, action_space, model_config=None):
        super().__init__(observation_space, action_space, model_config)
        n_obs = int(np.prod(observation_space.shape))
        hidden = list(self.model_config["hidden"])
        activation = self.model_config["activation"]
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        n_out = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.pi = mlp([n_obs, *hidden, n_out], activation, out_gain=0.01)
        self.vf = mlp([n_obs, *hidden, 1], activation, out_gain=1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((n_out,), float(self.model_config["init_log_std"])))
        self._pi_layers = functional_layers(self.pi)
        self._vf_layers = functional_layers(self.vf)

    def distribution(self, obs: torch.Tensor):
        out = run_mlp(self._pi_layers, obs)
        return Categorical(out) if self.discrete else DiagGaussian(out, self.log_std)

    def forward_exploration(self, obs, generator=None, **explore_kw):
        dist = self.distribution(obs)
        actions = dist.sample(generator)
        return {"actions": actions, "logp": dist.log_prob(actions), "values": self.value(obs)}

    def forward_inference(self, obs):
        return {"actions": self.distribution(obs).mode()}

    def forward_train(self, batch):
        return {"dist": self.distribution(batch["obs"]), "values": self.value(batch["obs"])}

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return run_mlp(self._vf_layers, obs).squeeze(-1)

    def numpy_policy(self) -> NumpyActorCritic | None:
        if any(getattr(type(self), name) is not getattr(ActorCriticModule, name)
               for name in ("forward_exploration", "forward_inference", "distribution", "value")):
            return None  # a subclass that acts differently keeps its torch forward
        layout = [(name, tuple(p.shape)) for name, p in self.named_parameters()]
        policy = NumpyActorCritic(layout, self.model_config["activation"], self.discrete)
        policy.set_flat_weights(self.get_flat_weights())
        return policy
