"""The learner: owns the trained module and its optimiser; an algorithm subclasses it with its loss
and update (`update(batch, ...)`), nothing else.

It runs in the driver by default. With `num_learners=1` (or `num_gpus_per_learner > 0`) the same
class runs as an actor, placed with the GPUs asked for, and moves the module to CUDA when the
actor's process sees one. `LearnerHandle` hides the difference from the algorithm: `await
handle.update(fragments, **kw)` either calls the local learner or sends the fragment refs to the
actor (top-level refs, so the actor reads the arrays in place from the object store).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import torch

import pyactor as pa
from pyactor.rl.module import ModuleSpec
from pyactor.rl.optim import Adam


class Learner:
    def __init__(self, module_spec: ModuleSpec, config: dict, seed: int | None = None):
        if seed is not None:
            torch.manual_seed(seed)
        self.config = config
        self.device = torch.device("cuda" if torch.cuda.is_available() and
                                   config.get("num_gpus_per_learner", 0) > 0 else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # small networks; also keeps updates reproducible
        self.module = module_spec.build().to(self.device)
        self.parameters = list(self.module.parameters())  # walking the modules each step costs
        self.optimizer = Adam(self.parameters, lr=config["lr"], eps=1e-5)
        self.num_updates = 0
        self.generator = torch.Generator()  # minibatch shuffles, seeded for reproducibility
        if seed is not None:
            self.generator.manual_seed(seed)

    def update(self, fragments: list[dict], **kw) -> dict[str, float]:
        raise NotImplementedError

    def update_from(self, kw: dict, *fragments: dict) -> dict[str, float]:
        """The actor's entry point: fragments arrive as separate arguments, read from the store."""
        return self.update(list(fragments), **kw)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def apply_gradients(self, loss: torch.Tensor, grad_clip: float | None,
                        as_tensor: bool = False) -> float | torch.Tensor:
        """One optimiser step on `loss`; returns the gradient norm before clipping (a 0-d tensor
        with as_tensor, which saves a device sync per step)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.parameters if p.grad is not None]
        # The same maths as nn.utils.clip_grad_norm_ in three foreach ops: its device grouping
        # and wrappers took 0.45x more time than this on our ~10 small tensors (measured).
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if grad_clip:
            torch._foreach_mul_(grads, (grad_clip / (norm + 1e-6)).clamp(max=1.0))
        self.optimizer.step()
        return norm.detach() if as_tensor else float(norm)

    def to_tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), device=self.device)

    def get_flat_weights(self) -> np.ndarray:
        return self.module.get_flat_weights()

    def get_state(self) -> dict:
        # Copies: on CPU the parameters may be views of one flat tensor (PPO's numpy update),
        # which pickling would otherwise write whole for each of them.
        return {"module": {k: v.cpu().clone() for k, v in self.module.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "num_updates": self.num_updates,
                "generator": self.generator.get_state()}

    def set_state(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = state["num_updates"]
        self.generator.set_state(state["generator"])

    def device_name(self) -> str:
        return str(self.device)


class LearnerHandle:
    """The algorithm's view of its learner, local or an actor."""

    def __init__(self, learner_class: type[Learner], module_spec: ModuleSpec, config: dict,
                 seed: int | None, num_learners: int, num_gpus_per_learner: float):
        self.remote = num_learners > 0 or num_gpus_per_learner > 0
        if self.remote:
            actor_class = pa.remote(learner_class).options(num_cpus=1, num_gpus=num_gpus_per_learner)
            self.actor = actor_class.remote(module_spec, config, seed)
            self.local = None
        else:
            self.actor = None
            self.local = learner_class(module_spec, config, seed)

    async def update(self, fragments: list, fragment_refs: list | None = None, **kw) -> dict:
        if self.local is not None:
            return self.local.update(fragments, **kw)
        # Refs as top-level arguments: the actor gets the arrays read in place from the store.
        refs = fragment_refs if fragment_refs is not None else [pa.put(f) for f in fragments]
        return await self.actor.update_from.remote(kw, *refs)

    def call(self, method: str, *args) -> Any:
        if self.local is not None:
            return getattr(self.local, method)(*args)
        return pa.get(getattr(self.actor, method).remote(*args))

    async def call_async(self, method: str, *args) -> Any:
        if self.local is not None:
            return getattr(self.local, method)(*args)
        return await getattr(self.actor, method).remote(*args)

    def stop(self) -> None:
        if self.actor is not None:
            pa.kill(self.actor, no_restart=True)
            self.actor = None

