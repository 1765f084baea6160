"""Networks for continuous (Box) actions, shared by SAC, DDPG and TD3: the actors, the Q(s, a)
critics, the map between the policy's [-1, 1] actions and the env's bounds, and the target
updates.

    obs --SquashedGaussianActor--> u ~ N(mu(s), sigma(s)), a = tanh(u)    (SAC: a and log pi(a|s))
    obs --DeterministicActor-----> a = tanh(mu(s)) [+ exploration noise]  (DDPG, TD3)
    (obs, a) --QEnsemble---------> Q_1..Q_K(s, a)                         (the critics, one pass)
    a in [-1, 1]^d --ActionScaling--> low + (a + 1) (high - low) / 2       (what the env receives)

The actors and critics work in the policy's normalised action space [-1, 1]^d: the replay holds
env-scale actions (what the runner executed) and the learner maps them back with ActionScaling,
so every Box, whatever its bounds, looks the same to the losses.

Weights: an env runner needs only the actor, so `get_flat_weights` / `set_flat_weights` cover the
actor's parameters alone; one update's weights ref is the actor's few thousand floats, not the
critics' too. The learner keeps the critics (and the target networks) to itself.

The twin critics are one `QEnsemble`: K MLPs whose layers are stacked [K, in, out] tensors applied
with one batched matmul per layer, so twin Q costs one pass (not two) of small kernels, which is
what an update of these tiny networks spends its time on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyactor.rl.module import ACTIVATIONS, RLModule, functional_layers, mlp, run_mlp

try:
    import gymnasium as gym
except ImportError as error:  # pragma: no cover
    raise ImportError("pyactor.rl needs gymnasium: pip install 'pyactor[rl]'") from error

DEFAULT_CONTINUOUS_MODEL = {"hidden": [64, 64], "activation": "relu",
                            "log_std_min": -20.0, "log_std_max": 2.0}
_ACTIVATION_FUNCTIONS = {"tanh": torch.tanh, "relu": torch.relu, "elu": F.elu}


def check_box_action_space(space, algorithm: str) -> None:
    """A bounded Box is what these algorithms act in; anything else is refused by name."""
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"{algorithm} needs a Box (continuous) action space, the env has {space}"
                         f"; use DQN, PPO or A2C for discrete actions")
    if len(space.shape) != 1:
        raise ValueError(f"{algorithm} needs a one-dimensional Box action space, the env has "
                         f"shape {space.shape}")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(f"{algorithm} needs finite action bounds (its policy is squashed into "
                         f"them), the env's Box is [{space.low}, {space.high}]")


class ActionScaling:
    """a_env = bias + scale * a for a in [-1, 1]^d: the affine map onto the Box's bounds."""

    def __init__(self, space: gym.spaces.Box):
        low = torch.tensor(np.array(space.low, np.float32))
        high = torch.tensor(np.array(space.high, np.float32))
        self.scale = (high - low) / 2
        self.bias = (high + low) / 2

    def to(self, device) -> "ActionScaling":
        """This map with its tensors on `device` (a CUDA learner's)."""
        moved = object.__new__(ActionScaling)
        moved.scale, moved.bias = self.scale.to(device), self.bias.to(device)
        return moved

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        return self.bias + self.scale * actions

    def to_policy(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.bias) / self.scale


def gaussian_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) noise shaped like `like`, drawn from `generator` (a CPU generator: seeded runs
    draw the same numbers whether the learner is on CPU or CUDA) and moved to its device."""
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype)
    return noise if like.device.type == "cpu" else noise.to(like.device)


# ---------------------------------------------------------------------- the squashed Gaussian
def tanh_log_det_jacobian(u: torch.Tensor) -> torch.Tensor:
    """sum_i log(1 - tanh(u_i)^2), written as 2 (log 2 - u - softplus(-2u)): the same value,
    finite where tanh(u) rounds to +-1 and the direct form gives log(0)."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


def squashed_gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor,
                               u: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) of a = tanh(u), u ~ N(mean, exp(log_std)) with diagonal covariance
    (Haarnoja et al. 2018, appendix C, eq. 21, the change of variables through tanh):
        log pi(a|s) = log N(u; mean, std) - sum_i log(1 - tanh(u_i)^2)"""
    z = (u - mean) * torch.exp(-log_std)
    gaussian = (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return gaussian - tanh_log_det_jacobian(u)


class SquashedGaussianActor(nn.Module):
    """pi(a|s): an MLP trunk, then the mean and log std of u, squashed as a = tanh(u)."""

    def __init__(self, n_obs: int, n_actions: int, hidden: list[int], activation: str,
                 log_std_min: float, log_std_max: float):
        super().__init__()
        self.trunk = nn.Sequential(*mlp([n_obs, *hidden], activation, out_gain=math.sqrt(2)),
                                   ACTIVATIONS[activation]())
        self.mean = mlp([hidden[-1], n_actions], activation, out_gain=0.01)
        self.log_std = mlp([hidden[-1], n_actions], activation, out_gain=0.01)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self._trunk = functional_layers(self.trunk)
        self._mean = functional_layers(self.mean)
        self._log_std = functional_layers(self.log_std)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = run_mlp(self._trunk, obs)
        # Bounded log std (Haarnoja et al.'s code clamps it to [-20, 2]) keeps exp() finite.
        log_std = run_mlp(self._log_std, features).clamp(self.log_std_min, self.log_std_max)
        return run_mlp(self._mean, features), log_std

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, log pi(a|s)) with a = tanh(mean + std * eps), eps ~ N(0, I): the
        reparameterisation a = f(eps; s) of Haarnoja et al. 2018 (eq. 11), so gradients flow
        from a to the actor's parameters."""
        mean, log_std = self.distribution(obs)
        u = mean + gaussian_noise(mean, generator) * log_std.exp()
        return torch.tanh(u), squashed_gaussian_log_prob(mean, log_std, u)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.distribution(obs)[0])


class DeterministicActor(nn.Module):
    """mu(s) = tanh(MLP(s)) in [-1, 1]^d (Lillicrap et al. 2015's actor, with a tanh output)."""

    def __init__(self, n_obs: int, n_actions: int, hidden: list[int], activation: str):
        super().__init__()
        self.net = mlp([n_obs, *hidden, n_actions], activation, out_gain=0.01)
        self._layers = functional_layers(self.net)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(run_mlp(self._layers, obs))


# ---------------------------------------------------------------------- the critics
class QEnsemble(nn.Module):
    """K independent critics Q_k(s, a), k < K, evaluated together: layer l of all K is one
    [K, in, out] weight and one batched matmul. Inputs are the observation and the action in
    [-1, 1]^d; `forward` returns [K, B]."""

    def __init__(self, n_obs: int, n_actions: int, hidden: list[int], activation: str,
                 num_critics: int):
        super().__init__()
        sizes = [n_obs + n_actions, *hidden, 1]
        self.num_critics = num_critics
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            # nn.Linear's default init, drawn per critic, so the K critics start different.
            bound = 1 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(num_critics, n_in, n_out).uniform_(
                -bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_critics, 1, n_out).uniform_(
                -bound, bound)))
        self._activation = _ACTIVATION_FUNCTIONS[activation]

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], -1).expand(self.num_critics, -1, -1)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if i < last:
                x = self._activation(x)
        return x.squeeze(-1)


def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta' (Lillicrap et al. 2015, algorithm 1), all tensors
    in one foreach call."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


# ---------------------------------------------------------------------- the RLModules
class _ContinuousModule(RLModule):
    """What SAC's and the deterministic module share: the spaces checked, the action map, the
    critics, random exploration before learning starts, and flat weights of the actor only."""

    def __init__(self, observation_space, action_space, model_config=None):
        super().__init__(observation_space, action_space,
                         {**DEFAULT_CONTINUOUS_MODEL, **(model_config or {})})
        check_box_action_space(action_space, self.model_config.get("algorithm", "this module"))
        self.n_obs = int(np.prod(observation_space.shape))
        self.n_actions = int(action_space.shape[0])
        self.hidden = list(self.model_config["hidden"])
        self.activation = self.model_config["activation"]
        if self.activation not in _ACTIVATION_FUNCTIONS:
            raise ValueError(f"model activation {self.activation!r} is not one of "
                             f"{sorted(_ACTIVATION_FUNCTIONS)}")
        self.scaling = ActionScaling(action_space)
        self.critics = QEnsemble(self.n_obs, self.n_actions, self.hidden, self.activation,
                                 int(self.model_config.get("num_critics", 2)))

    def random_actions(self, batch: int, generator=None) -> torch.Tensor:
        """Uniform in [-1, 1]^d: the exploration before learning_starts (as SB3 and CleanRL)."""
        return torch.rand((batch, self.n_actions), generator=generator) * 2 - 1

    def get_flat_weights(self) -> np.ndarray:
        return nn.utils.parameters_to_vector(self.actor.parameters()).detach().cpu().numpy()

    def set_flat_weights(self, flat: np.ndarray) -> None:
        vector = torch.as_tensor(np.asarray(flat))
        expected = sum(p.numel() for p in self.actor.parameters())
        if vector.numel() != expected:
            raise ValueError(f"weights vector has {vector.numel()} values, the actor has "
                             f"{expected}")
        with torch.no_grad():
            nn.utils.vector_to_parameters(vector.to(torch.float32), self.actor.parameters())

    def forward_train(self, batch):
        return {"q_values": self.critics(batch["obs"], self.scaling.to_policy(batch["actions"]))}


class SquashedGaussianModule(_ContinuousModule):
    """SAC's module: a squashed-Gaussian actor and `num_critics` (2) Q critics."""

    def __init__(self, observation_space, action_space, model_config=None):
        super().__init__(observation_space, action_space, model_config)
        c = self.model_config
        self.actor = SquashedGaussianActor(self.n_obs, self.n_actions, self.hidden,
                                           self.activation, float(c["log_std_min"]),
                                           float(c["log_std_max"]))

    def forward_exploration(self, obs, generator=None, random_actions: bool = False, **kw):
        if random_actions:
            actions = self.random_actions(len(obs), generator)
        else:
            actions, _ = self.actor.sample(obs, generator)
        return {"actions": self.scaling.to_env(actions)}

    def forward_inference(self, obs):
        return {"actions": self.scaling.to_env(self.actor.mode(obs))}


class DeterministicModule(_ContinuousModule):
    """DDPG's and TD3's module: a deterministic actor and `num_critics` Q critics (DDPG 1, TD3 2);
    exploration adds N(0, exploration_noise^2) to mu(s) in [-1, 1] units, clipped to the bounds
    (Fujimoto et al. 2018, section 6.1; Lillicrap et al. used Ornstein-Uhlenbeck noise)."""

    def __init__(self, observation_space, action_space, model_config=None):
        super().__init__(observation_space, action_space, model_config)
        self.actor = DeterministicActor(self.n_obs, self.n_actions, self.hidden, self.activation)

    def forward_exploration(self, obs, generator=None, random_actions: bool = False,
                            noise: float | None = None, **kw):
        if random_actions:
            return {"actions": self.scaling.to_env(self.random_actions(len(obs), generator))}
        if noise is None:
            noise = float(self.model_config.get("exploration_noise", 0.1))
        actions = self.actor(obs)
        if noise > 0:
            actions = actions + noise * gaussian_noise(actions, generator)
        return {"actions": self.scaling.to_env(actions.clamp(-1.0, 1.0))}

    def forward_inference(self, obs):
        return {"actions": self.scaling.to_env(self.actor(obs))}
