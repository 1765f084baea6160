"""The driver loop SAC, DDPG and TD3 share: replay-based actor-critic training for continuous
actions, on the env runners and the replay actor (the same layout as DQN's, without priorities).

    EnvRunner actors (actor copy; uniform random actions before learning_starts)
        | fragment refs [T, N]                      ^ one weights ref (the actor's) per iteration
        v                                           |
    ReplayActor (rl/buffers.py, uniform)       driver: OffPolicyAlgorithm.training_step
        add_fragment(ref): n-step transitions       |
        sample(B) ----------- batch -------------> learner.update([batch]): the algorithm's
                                                    losses and updates (one batch request kept in
                                                    flight: the replay draws batch k+1 during k)

One iteration: one fragment per runner (num_env_runners x num_envs_per_runner x
rollout_fragment_length env steps) into the replay; then replay_ratio gradient steps per env step
sampled (fractions carry over), once learning_starts transitions are stored; then the actor's
weights go out. An algorithm file supplies its config (an OffPolicyConfig), its module class and
its learner (an OffPolicyLearner: `update_on(batch) -> metrics`).
"""

from __future__ import annotations

import dataclasses
import typing
import warnings

import torch

import pyactor as pa
from pyactor.rl.algorithm import Algorithm
from pyactor.rl.buffers import ReplayActor
from pyactor.rl.config import AlgorithmConfig
from pyactor.rl.learner import Learner


@dataclasses.dataclass(frozen=True)
class OffPolicyConfig(AlgorithmConfig):
    """The fields every replay-based continuous-action algorithm has; defaults for Pendulum-v1."""
    num_env_runners: int = 1
    num_envs_per_runner: int = 1
    rollout_fragment_length: int = 64
    gamma: float = 0.99
    grad_clip: typing.Optional[float] = None
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    model: dict = dataclasses.field(
        default_factory=lambda: {"hidden": [64, 64], "activation": "relu"})
    train_batch_size: int = 256
    replay_ratio: float = 1.0  # gradient steps per env step sampled
    learning_starts: int = 1000  # env steps (uniform random actions) before the first update
    replay_buffer_capacity: int = 1_000_000  # transitions
    n_step: int = 1
    tau: float = 0.005  # Polyak step of the target networks, every update
    store_buffer_in_checkpoints: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("train_batch_size", "replay_buffer_capacity", "n_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("actor_lr", "critic_lr", "replay_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")


class OffPolicyLearner(Learner):
    """A learner with an actor optimiser and a critic optimiser (`self.optimizer`, so the base
    class checkpoints it) over the module's two parameter sets."""

    def __init__(self, module_spec, config: dict, seed: int | None = None):
        super().__init__(module_spec, config, seed)
        # Lists made once: walking the modules for their parameters on every update costs
        # more than some of the update's kernels.
        self.critic_params = list(self.module.critics.parameters())
        self.actor_params = list(self.module.actor.parameters())
        self.optimizer = torch.optim.Adam(self.critic_params, lr=config["critic_lr"], fused=True)
        self.actor_optimizer = torch.optim.Adam(self.actor_params, lr=config["actor_lr"],
                                                fused=True)
        self.scaling = self.module.scaling.to(self.device)

    def update(self, batches: list[dict], **kw) -> list[dict]:
        # Batches arrive as read-only views of the object store; torch only reads them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = []
            for batch in batches:
                out.append(self.update_on(self.batch_tensors(batch)))
                self.num_updates += 1
            return out

    def batch_tensors(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch as tensors, actions mapped back to the policy's [-1, 1]."""
        return {"obs": self.to_tensor(batch["obs"]),
                "actions": self.scaling.to_policy(self.to_tensor(batch["actions"])),
                "rewards": self.to_tensor(batch["rewards"]),
                "next_obs": self.to_tensor(batch["next_obs"]),
                "not_done": 1.0 - self.to_tensor(batch["terminateds"]).float(),
                "discounts": self.to_tensor(batch["discounts"])}

    def update_on(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
             parameters: list) -> float:
        """One optimiser step on `loss`; returns the gradient norm of `parameters` before
        clipping them to grad_clip."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_grad_norm(parameters, self.config["grad_clip"])
        optimizer.step()
        return norm

    def q_for_actor(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q_k(s, a) [K, B] with gradients to the actions only: the actor's loss moves the
        actor, and the critics' weight gradients are not computed for nothing."""
        for parameter in self.critic_params:
            parameter.requires_grad_(False)
        try:
            return self.module.critics(obs, actions)
        finally:
            for parameter in self.critic_params:
                parameter.requires_grad_(True)

    def num_updates_done(self) -> int:
        return self.num_updates

    def checkpointed(self) -> dict:
        """name -> nn.Module, optimiser or tensor saved in checkpoints besides the module and
        the critic optimiser (subclasses add their target networks, temperature...)."""
        return {"actor_optimizer": self.actor_optimizer}

    def get_state(self) -> dict:
        state = super().get_state()
        for name, part in self.checkpointed().items():
            state[name] = part.detach().cpu().clone() if isinstance(part, torch.Tensor) \
                else part.state_dict()
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        for name, part in self.checkpointed().items():
            if isinstance(part, torch.Tensor):
                with torch.no_grad():
                    part.copy_(state[name])
            else:
                part.load_state_dict(state[name])


def clip_grad_norm(parameters: list, clip: float | None) -> float:
    """The gradients' global norm, scaling them down to `clip` when given (foreach ops, as
    Learner.apply_gradients, for the parameter subset one optimiser owns)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if clip:
        torch._foreach_mul_(grads, (clip / (norm + 1e-6)).clamp(max=1.0))
    return float(norm)


class OffPolicyAlgorithm(Algorithm):
    """The loop of the module docstring; subclasses set config_class, module_class and
    learner_class (and may add explore_kw for the runners via `exploration_kwargs`)."""

    def __init__(self, config: OffPolicyConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        self.replay = None
        super().__init__(config.replace(model={**config.model, **self.module_options(config),
                                               "algorithm": self.config_class.algo_name}))
        try:
            self.replay = pa.remote(ReplayActor).remote(
                config.replay_buffer_capacity, False, 0.6, config.n_step, config.gamma,
                config.seed)
        except BaseException:
            self.stop()  # leave no runner or learner behind
            raise
        self.transitions_added = 0
        self._update_credit = 0.0  # gradient steps owed by replay_ratio, across iterations

    def module_options(self, config) -> dict:
        """Model-config entries the algorithm sets from its own config (e.g. num_critics)."""
        return {}

    async def training_step(self) -> dict:
        c = self.config
        fragments = await self.sample(
            random_actions=self.env_steps_total < c.learning_starts)
        new_steps = 0
        for fragment, ref in zip(fragments, self.env_runner_group.collected_refs):
            # The runner's ref: the replay actor reads the arrays from the store itself.
            self.replay.add_fragment.remote(ref if ref is not None else fragment)
            new_steps += int(fragment["env_steps"])
        self.transitions_added += new_steps
        ready = min(self.transitions_added, c.replay_buffer_capacity) >= max(
            c.learning_starts, c.train_batch_size)
        if ready:
            self._update_credit += c.replay_ratio * new_steps
        num_updates = int(self._update_credit)
        self._update_credit -= num_updates
        metrics = await self._learn(num_updates)
        self.sync_weights()
        metrics["num_updates_total"] = self.learner.call("num_updates_done")
        stats = await self.replay.stats.remote()
        metrics["replay/size"] = stats["size"]
        metrics["replay/size_bytes"] = stats["size_bytes"]
        return metrics

    async def _learn(self, num_updates: int) -> dict:
        """num_updates gradient steps, each on a fresh replay batch; the request for batch k+1
        goes out before the update on batch k. A metric is averaged over the updates that
        reported it (TD3's actor loss: only the delayed actor updates)."""
        size = self.config.train_batch_size
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        next_ref = self.replay.sample.remote(size) if num_updates else None
        for i in range(num_updates):
            batch_ref = next_ref
            next_ref = self.replay.sample.remote(size) if i + 1 < num_updates else None
            if self.learner.local is not None:
                out = self.learner.local.update([await batch_ref])
            else:  # the learner actor reads the batch from the store; the driver never holds it
                out = await self.learner.update([], fragment_refs=[batch_ref])
            for key, value in out[0].items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
        metrics = {key: value / counts[key] for key, value in sums.items()}
        metrics["num_updates"] = num_updates
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        state = {"transitions_added": self.transitions_added,
                 "update_credit": self._update_credit, "replay": None}
        if self.config.store_buffer_in_checkpoints:
            state["replay"] = pa.get(self.replay.get_state.remote())
        return state

    def set_extra_state(self, state: dict) -> None:
        self.transitions_added = state["transitions_added"]
        self._update_credit = state["update_credit"]
        if state["replay"] is not None:
            pa.get(self.replay.set_state.remote(state["replay"]))
        else:  # an empty buffer: learning waits for learning_starts new transitions again
            self.transitions_added = 0

    def stop(self) -> None:
        replay = getattr(self, "replay", None)
        if replay is not None:
            try:
                pa.kill(replay, no_restart=True)
            except Exception:  # already gone
                pass
            self.replay = None
        super().stop()

