"""QModule's maths in numpy, outside torch: DQN's SGD step with its gradients worked out by hand
(NumpyQStep), and a numpy copy of the network for acting (NumpyQ, at the end).

Why: on CartPole's network (hidden [128, 128], batches of 128) a step is ~22 MFLOP of matmuls,
a few hundred microseconds of BLAS; everything else is per-operation overhead. Through autograd
that overhead was most of the step (graph building, the engine, one node per op); written out by
hand with torch ops it was still ~40 dispatches of 5-10 us each, fresh tensors for every
intermediate, and the parameters as separate tensors for clipping and Adam. Here the parameters
and their gradient are one flat float32 vector each (numpy views of the module's own storage, as
rl/numpy_learner.py does for PPO), every intermediate has a buffer allocated once per batch size,
and clipping and Adam are a few whole-vector operations. The maths is dqn.py's loss, exactly;
tests/rl/test_dqn.py checks the gradients against autograd's for every option.

Data flow of one step, X = [obs; next_obs] (B + B rows; with double Q one online pass serves
both), h_0 = X:

    forward   z_l = h_{l-1} W_l^T + b_l,  h_l = f(z_l)        (the trunk, l = 1..L)
              Q = h_L W^T + b,  with the dueling heads folded into one linear map (Wang et al.
              2016, eq. 9: Q = V + A - mean_a A is linear in h_L):
                  W = W_A - mean_rows(W_A) + w_V,   b = b_A - mean(b_A) + b_V
    target    the target network's trunk on next_obs only, its folded head cached per refresh;
              y = r + gamma^m (1 - done) Q_target(s', argmax_a' Q(s', a'))   (double Q)
    loss      mean_i w_i huber(Q(s_i, a_i) - y_i)
    backward  dQ[i, a_i] = w_i clamp(Q(s_i, a_i) - y_i, -1, 1) / B    (huber; mse: no clamp)
              dW = dQ^T h_L,  db = sum_i dQ_i,  dh_L = dQ W            (rows of s only)
              dz_l = dh_l * f'(z_l) (read from h_l),  dW_l = dz_l^T h_{l-1},  db_l = sum_i dz_l,
              dh_{l-1} = dz_l W_l
              dueling: dW_A = dW - mean_rows(dW), dw_V = sum_rows(dW) (and so for the biases)
    update    flat gradient -> its norm, clipped -> Adam.fused_step on the flat parameters: the
              torch module, its state_dict and get_flat_weights see the new weights in place
"""

from __future__ import annotations

import numpy as np
import torch


# Each activation in place on its input z, and its derivative applied in place to the upstream
# gradient, read from the output h = f(z): relu' = [h > 0], tanh' = 1 - h^2, elu' = h + 1 below 0.
def _relu(z):
    torch.relu_(torch.from_numpy(z))  # a third of np.maximum's time on [256, 128] (measured)
    return z


def _relu_backward(grad, h):
    return np.multiply(grad, h > 0, out=grad)


def _tanh(z):
    return np.tanh(z, out=z)


def _tanh_backward(grad, h):
    grad *= 1.0 - h * h
    return grad


def _elu(z):
    np.copyto(z, np.expm1(np.minimum(z, 0.0)), where=z <= 0)
    return z


def _elu_backward(grad, h):
    grad *= np.where(h > 0, np.float32(1.0), h + 1.0)
    return grad


_ACTIVATIONS = {"relu": (_relu, _relu_backward), "tanh": (_tanh, _tanh_backward),
                "elu": (_elu, _elu_backward)}


def supports(module) -> bool:
    """Whether `module` is QModule's plain MLP (the hand-written maths' assumption)."""
    from pyactor.rl.dqn import QModule

    return (isinstance(module, QModule) and type(module).q_values is QModule.q_values
            and module.model_config["activation"] in _ACTIVATIONS
            and len(module.advantage) == 1
            and (module.value is None or len(module.value) == 1))


def supports_numpy_step(module) -> bool:
    """`supports`, with every parameter a float32 tensor in CPU memory (numpy views of it)."""
    return supports(module) and all(p.device.type == "cpu" and p.dtype == torch.float32
                                    for p in module.parameters())


def _layer_views(module, flat: np.ndarray) -> tuple[list, tuple, tuple | None]:
    """(trunk [(W, b), ...], advantage head (W, b), value head (W, b) or None) as views of
    `flat`, laid out in module.parameters() order: trunk, advantage head, value head."""
    arrays, offset = [], 0
    for p in module.parameters():
        arrays.append(flat[offset:offset + p.numel()].reshape(tuple(p.shape)))
        offset += p.numel()
    if offset != flat.size:
        raise ValueError(f"flat vector has {flat.size} values, module has {offset}")
    pairs = list(zip(arrays[0::2], arrays[1::2]))
    depth = len(module._trunk_layers)
    return pairs[:depth], pairs[depth], pairs[depth + 1] if module.value is not None else None


class _DuelingFold:
    """The dueling heads as one linear map and back: with C = I - 1/A (centring over actions),
        W = C W_A + 1 w_V,  b = C b_A + b_V                      (forward)
        dW_A = C dW = (dQ C)^T h_L,  dw_V = (dQ 1)^T h_L         (backward, C symmetric)
    so the fold is two tiny matmuls and the heads' gradients come straight from dQ."""

    def __init__(self, num_actions: int, width: int):
        self.centring = (np.eye(num_actions) - 1.0 / num_actions).astype(np.float32)
        self.weight = np.empty((num_actions, width), np.float32)
        self.bias = np.empty(num_actions, np.float32)

    def fold(self, advantage: tuple, value: tuple, out: tuple | None = None):
        weight, bias = out or (np.empty_like(self.weight), np.empty_like(self.bias))
        np.matmul(self.centring, advantage[0], out=weight)
        weight += value[0]
        np.matmul(self.centring, advantage[1], out=bias)
        bias += value[1]
        return weight, bias

    def backward(self, d_q: np.ndarray, d_q_rows: np.ndarray, last: np.ndarray,
                 advantage_grad: tuple, value_grad: tuple) -> None:
        """d_q [B, A] with d_q_rows = d_q 1 [B]; writes the heads' gradients."""
        d_centred = d_q @ self.centring
        np.matmul(d_centred.T, last, out=advantage_grad[0])
        np.add.reduce(d_centred, 0, out=advantage_grad[1])
        np.matmul(d_q_rows, last, out=value_grad[0][0])
        value_grad[1][0] = np.add.reduce(d_q_rows)


class _Workspace:
    """Every [rows, width] intermediate of a step on batches of `size` rows, allocated once:
    a fresh [256, 128] float32 array is 128 KiB, where malloc maps and unmaps pages per call."""

    def __init__(self, size: int, widths: list[int], num_actions: int, online_rows: int):
        self.size = size
        self.rows = np.arange(size)
        self.online = [np.empty((online_rows, width), np.float32) for width in widths]
        self.target = [np.empty((size, width), np.float32) for width in widths]
        self.q_all = np.empty((online_rows, num_actions), np.float32)
        self.next_q = np.empty((size, num_actions), np.float32)
        self.d_q = np.empty((size, num_actions), np.float32)
        self.d_hidden = [np.empty((size, width), np.float32) for width in widths]


class NumpyQStep:
    """Loss, flat gradient and TD errors of one batch, for a QModule and its target network
    whose parameters are views of the flat float32 vectors `flat` and `target_flat`."""

    def __init__(self, module, flat: np.ndarray, target, target_flat: np.ndarray,
                 double_q: bool, loss_fn: str):
        self.double_q, self.huber = double_q, loss_fn == "huber"
        self.activate, self.backward_activation = _ACTIVATIONS[module.model_config["activation"]]
        self.flat = flat
        self.grad = np.zeros_like(flat)
        self.trunk, self.advantage, self.value = _layer_views(module, flat)
        self.trunk_grads, self.advantage_grad, self.value_grad = _layer_views(module, self.grad)
        self.target_trunk, self.target_advantage, self.target_value = _layer_views(target,
                                                                                   target_flat)
        self.widths = [len(bias) for _, bias in self.trunk]
        self.num_actions = len(self.advantage[1])
        self.dueling = None if self.value is None else _DuelingFold(self.num_actions,
                                                                   self.widths[-1])
        self._target_head = None  # folded once per target refresh, not once per step
        self._work = None

    def target_changed(self) -> None:
        self._target_head = None

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) of the online network's map h_L -> Q(s, .), the dueling heads folded in."""
        if self.dueling is None:
            return self.advantage
        return self.dueling.fold(self.advantage, self.value,
                                 (self.dueling.weight, self.dueling.bias))

    def prepare(self, batch: dict) -> dict:
        """The arrays of a chunk of K stacked batches ([K, B, ...], or one batch [B, ...]) as a
        step reads them, computed for the whole chunk at once: X = [obs; next_obs] per batch,
        gamma^m (1 - done), the importance weights over B, and float32 / intp dtypes."""
        obs, next_obs, weights = batch["obs"], batch["next_obs"], batch["weights"]
        both = np.concatenate([obs.reshape(*obs.shape[:-1], -1),
                               next_obs.reshape(*next_obs.shape[:-1], -1)], axis=-2,
                              dtype=np.float32)
        scale = np.where(batch["terminateds"], np.float32(0.0), batch["discounts"])
        return {"both_obs": both, "actions": np.asarray(batch["actions"], np.intp),
                "rewards": np.asarray(batch["rewards"], np.float32),
                "bootstrap_scale": scale.astype(np.float32, copy=False),
                "weights_over_size": (np.asarray(weights, np.float32)
                                      * np.float32(1.0 / weights.shape[-1]))}

    def _trunk(self, layers, x: np.ndarray, buffers: list[np.ndarray]) -> list[np.ndarray]:
        hidden = [x]
        for (weight, bias), out in zip(layers, buffers):
            np.matmul(hidden[-1], weight.T, out=out)
            out += bias
            hidden.append(self.activate(out))
        return hidden

    def gradients(self, batch: dict) -> tuple[float, np.ndarray, np.ndarray]:
        """Write the flat gradient (self.grad) of the loss on one prepared batch; returns (loss,
        Q(s, a), |TD error|), the last two fresh arrays."""
        actions = batch["actions"]
        size = len(actions)
        work = self._work
        if work is None or work.size != size:
            work = self._work = _Workspace(size, self.widths, self.num_actions,
                                           2 * size if self.double_q else size)
        both = batch["both_obs"]
        weight, bias = self.head()
        hidden = self._trunk(self.trunk, both if self.double_q else both[:size], work.online)
        q_all = np.matmul(hidden[-1], weight.T, out=work.q_all)
        q_all += bias
        if self._target_head is None:
            self._target_head = self.target_head()
        target_weight, target_bias = self._target_head
        next_q = np.matmul(self._trunk(self.target_trunk, both[size:], work.target)[-1],
                           target_weight.T, out=work.next_q)
        next_q += target_bias
        if self.double_q:
            bootstrap = next_q[work.rows, q_all[size:].argmax(1)]
        else:
            bootstrap = next_q.max(1)
        bootstrap *= batch["bootstrap_scale"]
        q_taken = q_all[work.rows, actions]
        diff = q_taken - batch["rewards"]
        diff -= bootstrap  # Q(s, a) - y
        abs_diff = np.abs(diff)
        if self.huber:  # 0.5 d^2 within |d| <= 1, |d| - 0.5 outside: c (|d| - c / 2), c = min(|d|, 1)
            clipped = np.minimum(abs_diff, 1.0)
            per_sample = clipped * (abs_diff - 0.5 * clipped)
            slope = np.copysign(clipped, diff)  # clamp(d, -1, 1)
        else:
            per_sample = 0.5 * diff * diff
            slope = diff
        weights_over_size = batch["weights_over_size"]
        loss = float(np.dot(weights_over_size, per_sample))
        d_q_rows = slope * weights_over_size  # d loss / d Q(s_i, a_i)
        d_q = work.d_q
        d_q.fill(0.0)
        d_q[work.rows, actions] = d_q_rows
        self._backward(hidden, d_q, d_q_rows, weight, work)
        return loss, q_taken, abs_diff

    def target_head(self) -> list[np.ndarray]:
        if self.dueling is None:
            return [np.array(t) for t in self.target_advantage]
        return list(self.dueling.fold(self.target_advantage, self.target_value))

    def _backward(self, hidden: list[np.ndarray], d_q: np.ndarray, d_q_rows: np.ndarray,
                  weight: np.ndarray, work: _Workspace) -> None:
        size = work.size
        last = hidden[-1][:size]
        if self.dueling is None:
            np.matmul(d_q.T, last, out=self.advantage_grad[0])
            np.add.reduce(d_q, 0, out=self.advantage_grad[1])
        else:
            self.dueling.backward(d_q, d_q_rows, last, self.advantage_grad, self.value_grad)
        d_hidden = np.matmul(d_q, weight, out=work.d_hidden[-1])
        for index in range(len(self.trunk), 0, -1):
            grad_weight, grad_bias = self.trunk_grads[index - 1]
            d_z = self.backward_activation(d_hidden, hidden[index][:size])
            np.matmul(d_z.T, hidden[index - 1][:size], out=grad_weight)
            np.add.reduce(d_z, 0, out=grad_bias)
            if index > 1:
                d_hidden = np.matmul(d_z, self.trunk[index - 1][0], out=work.d_hidden[index - 2])


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
