"""The actor-critic's forward and backward pass in numpy, for the learner's minibatch steps on CPU.

On CartPole-sized networks (two 64x64 MLPs) and minibatches of a few hundred rows, a torch SGD
step is a hundred tiny operations whose dispatch and autograd bookkeeping cost far more than
their arithmetic; the same step written as numpy array operations with the gradients taken by
hand costs a fraction of it (measured in bench/rl_bench.py's ppo_update_per_s row). So a learner
of a plain `ActorCriticModule` on CPU trains through this view of it:

    torch module parameters --(made views of one flat float32 tensor, shared with numpy)--> flat
    obs [B, d] --forward--> policy head [B, A], values [B], and the activations kept for backward
    d loss / d head, d loss / d values --backward--> flat gradient (same layout as `flat`)
    flat gradient --Adam.fused_step--> flat parameters, updated in place: the torch module,
                                       its state_dict and get_flat_weights see the new weights

The maths is ActorCriticModule's (tanh/relu/elu MLPs, policy and value nets side by side, an
optional state-independent log std); the algorithm supplies the gradient of its loss with respect
to the two heads. tests/rl/test_numpy_learner.py checks the gradients against torch autograd.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import numpy as np
import torch

from pyactor.rl.module import ActorCriticModule
from pyactor.rl.numpy_policy import ACTIVATIONS

# The derivative of each activation from its output alone (tanh' = 1 - tanh^2; relu and elu are
# positive exactly where their input is, and elu(z) + 1 = exp(z) below zero).
ACTIVATION_GRADS = {
    "tanh": lambda a: 1.0 - a * a,
    "relu": lambda a: (a > 0).astype(np.float32),
    "elu": lambda a: np.where(a > 0, np.float32(1.0), a + 1.0),
}

_ACTING_METHODS = ("forward_exploration", "forward_inference", "forward_train", "distribution",
                   "value")


def supports(module: torch.nn.Module) -> bool:
    """True for an ActorCriticModule on CPU whose subclass (if any) does not change its maths."""
    if not isinstance(module, ActorCriticModule):
        return False
    if any(getattr(type(module), name) is not getattr(ActorCriticModule, name)
           for name in _ACTING_METHODS):
        return False
    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in module.parameters())


@functools.cache
def _openblas_thread_calls():
    """numpy's OpenBLAS (get, set) number-of-threads functions, or None when not found."""
    np.ones((2, 2)) @ np.ones((2, 2))  # the library is loaded by the first matmul
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:  # not Linux: leave the threads alone
        return None
    for path in sorted(paths):
        library = ctypes.CDLL(path)
        for get, set_ in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                          ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(library, get) and hasattr(library, set_):
                return getattr(library, get), getattr(library, set_)
    return None


_blas_thread_holds = 0  # open one_blas_thread blocks; only the outermost sets and restores


@contextlib.contextmanager
def one_blas_thread():
    """numpy's matmuls on one thread inside: on these sizes OpenBLAS's threads cost more than
    they give (3-6x slower steps measured on two busy cores, where they spin waiting for work).
    Nested blocks cost nothing: setting the count is not free (OpenBLAS resizes its per-thread
    buffers; ~0.7 ms a set/restore pair in a DQN run's driver), so a loop of many updates holds
    one block around them all."""
    global _blas_thread_holds
    calls = _openblas_thread_calls()
    if calls is None or _blas_thread_holds:
        _blas_thread_holds += 1
        try:
            yield
        finally:
            _blas_thread_holds -= 1
        return
    get, set_ = calls
    before = get()
    set_(1)
    _blas_thread_holds += 1
    try:
        yield
    finally:
        _blas_thread_holds -= 1
        set_(before)


def flatten_parameters(parameters: list[torch.Tensor]) -> torch.Tensor:
    """Make every parameter a view of one new flat tensor (values kept) and return that tensor."""
    flat = torch.cat([p.detach().reshape(-1) for p in parameters])
    offset = 0
    for p in parameters:
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


class NumpyActorCritic:
    """Forward/backward of an ActorCriticModule whose parameters live in one flat float32 vector
    (`flat`, a numpy view of the module's storage); gradients go to `grad`, the same layout."""

    def __init__(self, module: ActorCriticModule, flat: np.ndarray):
        self.activation = ACTIVATIONS[module.model_config["activation"]]
        self.activation_grad = ACTIVATION_GRADS[module.model_config["activation"]]
        self.discrete = module.discrete
        self.flat = flat
        self.grad = np.zeros_like(flat)
        views, grads, offset = {}, {}, 0
        for name, p in module.named_parameters():
            size = p.numel()
            views[name] = flat[offset:offset + size].reshape(tuple(p.shape))
            grads[name] = self.grad[offset:offset + size].reshape(tuple(p.shape))
            offset += size
        if offset != flat.size:
            raise ValueError(f"flat vector has {flat.size} values, module has {offset}")

        def layers(prefix):
            names = sorted({name.rsplit(".", 1)[0] for name in views if name.startswith(prefix)},
                           key=lambda n: int(n.split(".")[1]))
            return [(views[n + ".weight"], views[n + ".bias"], grads[n + ".weight"],
                     grads[n + ".bias"]) for n in names]

        self.pi_layers, self.vf_layers = layers("pi."), layers("vf.")
        self.log_std = views.get("log_std")
        self.log_std_grad = grads.get("log_std")

    def _mlp(self, layers, x: np.ndarray) -> tuple[np.ndarray, list]:
        """Output of one MLP and the (input, output) of each layer."""
        cache = []
        last = len(layers) - 1
        for i, (weight, bias, _, _) in enumerate(layers):
            z = x @ weight.T
            z += bias
            out = self.activation(z) if i < last else z
            cache.append((x, out))
            x = out
        return x, cache

    def _mlp_backward(self, layers, cache, d_out: np.ndarray) -> None:
        """Write the weight and bias gradients of one MLP given d loss / d output."""
        d = d_out
        for i in range(len(layers) - 1, -1, -1):
            weight, _, weight_grad, bias_grad = layers[i]
            x, out = cache[i]
            if i < len(layers) - 1:
                d = d * self.activation_grad(out)
            np.matmul(d.T, x, out=weight_grad)
            d.sum(axis=0, out=bias_grad)
            if i > 0:
                d = d @ weight

    def values(self, obs: np.ndarray) -> np.ndarray:
        return self._mlp(self.vf_layers, obs)[0][:, 0]

    def forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(policy head: logits or Gaussian means [B, A], values [B], cache for backward)."""
        head, pi_cache = self._mlp(self.pi_layers, obs)
        values, vf_cache = self._mlp(self.vf_layers, obs)
        return head, values[:, 0], (pi_cache, vf_cache)

    def backward(self, cache: tuple, d_head: np.ndarray, d_values: np.ndarray,
                 d_log_std: np.ndarray | None = None) -> np.ndarray:
        """The flat gradient of the loss whose derivatives with respect to the heads are given."""
        pi_cache, vf_cache = cache
        self._mlp_backward(self.pi_layers, pi_cache, d_head)
        self._mlp_backward(self.vf_layers, vf_cache, d_values[:, None])
        if self.log_std_grad is not None:
            self.log_std_grad[:] = 0.0 if d_log_std is None else d_log_std
        return self.grad
