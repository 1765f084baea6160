"""The actor-critic's forward pass in numpy, for env runners: what the runner calls once per step.

On CartPole-sized problems a step's policy call is a few dozen tiny array operations, and each
costs torch several times what it costs numpy (dispatch, autograd bookkeeping, tensor wrapping).
So a runner of an `ActorCriticModule` acts with this copy of it instead of the torch module:

    flat weights (the same vector the learner sends)
        --set_flat_weights--> packed layers: the policy and value MLPs side by side, so one
                              matmul per layer serves both (first layer stacked, the others
                              block-diagonal)
    obs [n, d] --explore(obs, rng)--> {"actions", "logp", "values"}  (float32 maths, numpy RNG)
               --greedy(obs)--------> {"actions"}

The maths is ActorCriticModule's: tanh/relu/elu MLPs, a categorical over logits sampled by the
inverse CDF, or a diagonal Gaussian with a state-independent log std. tests/rl/test_module.py
checks the outputs against the torch module.
"""

from __future__ import annotations

import math

import numpy as np

ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0, out=x),
               "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def actor_critic_layout(n_obs: int, hidden: list[int], n_out: int,
                        discrete: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of ActorCriticModule's parameters in named_parameters() order: the
    Gaussian's log std for Box actions (a module's own parameters come before its children's),
    then the policy MLP's linear layers (nn.Sequential indices 0, 2, ... with activations
    between), then the value MLP's."""
    layout: list[tuple[str, tuple[int, ...]]] = [] if discrete else [("log_std", (n_out,))]
    for head, width in (("pi", n_out), ("vf", 1)):
        sizes = [n_obs, *hidden, width]
        for i, (n_in, n_o) in enumerate(zip(sizes[:-1], sizes[1:])):
            layout += [(f"{head}.{2 * i}.weight", (n_o, n_in)), (f"{head}.{2 * i}.bias", (n_o,))]
    return layout


class NumpyActorCritic:
    """Inference copy of an ActorCriticModule (separate policy and value MLPs of equal widths)."""

    def __init__(self, layout: list[tuple[str, tuple[int, ...]]], activation: str,
                 discrete: bool):
        """`layout`: (name, shape) of each parameter in the flat vector's order, as the module's
        named_parameters() gives them ("pi.0.weight", ..., "vf.4.bias", "log_std")."""
        self.layout = layout
        shapes = dict(layout)
        self.pi_names = [name[:-len(".weight")] for name, _ in layout
                         if name.startswith("pi.") and name.endswith(".weight")]
        self.vf_names = [name[:-len(".weight")] for name, _ in layout
                         if name.startswith("vf.") and name.endswith(".weight")]
        if len(self.pi_names) != len(self.vf_names):
            raise ValueError("policy and value MLPs must have the same depth")
        self.activation = ACTIVATIONS[activation]
        self.discrete = discrete
        self.num_actions = shapes[self.pi_names[-1] + ".weight"][0]
        self.size = sum(int(np.prod(shape)) for _, shape in layout)
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        self.log_std = np.zeros(0, np.float32)
        self.set_flat_weights(np.zeros(self.size, np.float32))

    def set_flat_weights(self, flat: np.ndarray) -> None:
        """Unpack the module's flat vector into the packed layers."""
        flat = np.asarray(flat, np.float32)
        if flat.size != self.size:
            raise ValueError(f"weights vector has {flat.size} values, module has {self.size}")
        tensors, offset = {}, 0
        for name, shape in self.layout:
            size = int(np.prod(shape))
            tensors[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        layers = []
        for i, (pi, vf) in enumerate(zip(self.pi_names, self.vf_names)):
            pw, vw = tensors[pi + ".weight"], tensors[vf + ".weight"]
            if i == 0:  # same input: stack the outputs
                weight = np.concatenate([pw, vw], axis=0)
            else:       # separate inputs: block-diagonal
                weight = np.zeros((pw.shape[0] + vw.shape[0], pw.shape[1] + vw.shape[1]),
                                  np.float32)
                weight[:pw.shape[0], :pw.shape[1]] = pw
                weight[pw.shape[0]:, pw.shape[1]:] = vw
            bias = np.concatenate([tensors[pi + ".bias"], tensors[vf + ".bias"]])
            layers.append((np.ascontiguousarray(weight.T), bias))
        self.layers = layers
        if "log_std" in tensors:
            self.log_std = tensors["log_std"].copy()

    def _heads(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = obs
        last = len(self.layers) - 1
        for i, (weight_t, bias) in enumerate(self.layers):
            x = x @ weight_t
            x += bias
            if i < last:
                x = self.activation(x)
        return x[:, :self.num_actions], x[:, self.num_actions]

    def explore(self, obs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Sampled actions with their log-probabilities and the values of `obs`."""
        out, values = self._heads(obs)
        if self.discrete:
            shifted = out - out.max(axis=1, keepdims=True)
            probs = np.exp(shifted)
            total = probs.sum(axis=1, keepdims=True)
            # Inverse CDF: one uniform per row against the cumulative (unnormalised) weights.
            u = rng.random((len(obs), 1), np.float32) * total
            actions = (np.cumsum(probs, axis=1) < u).sum(axis=1)
            np.minimum(actions, self.num_actions - 1, out=actions)
            rows = np.arange(len(obs))
            logp = shifted[rows, actions] - np.log(total[:, 0])
            return {"actions": actions, "logp": logp, "values": values}
        noise = rng.standard_normal(out.shape, np.float32)
        actions = out + noise * np.exp(self.log_std)
        logp = (-0.5 * noise * noise - self.log_std - LOG_SQRT_2PI).sum(axis=1, dtype=np.float32)
        return {"actions": actions, "logp": logp, "values": values}

    def greedy(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        out, _ = self._heads(obs)
        return {"actions": out.argmax(axis=1) if self.discrete else out}
