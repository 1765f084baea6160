"""DQN: deep Q-learning from replay (Mnih et al. 2015, Nature 518:529) with the Rainbow pieces as
options (Hessel et al. 2018): double Q (van Hasselt et al. 2016), dueling heads (Wang et al.
2016), n-step returns, prioritized replay (Schaul et al. 2016), a target network updated by hard
copies or softly (tau), and an epsilon-greedy schedule.

The pipeline (the Ape-X layout of Horgan et al. 2018, on one host):

    EnvRunner actors (epsilon-greedy, CPU copy of Q)
        | fragment refs [T, N]                       ^ one weights ref per iteration
        v                                            |
    ReplayActor (rl/buffers.py, behind           driver: DQN.training_step
      rl/sharded_replay.py with one shard)            |
        add_fragment(ref): n-step transitions        |
        sample_batches(K, B, beta) -- K batches ---> DQNLearner.update: K x (loss, Adam step,
        update_priorities_and_sample(ids, |delta|,     target) (one chunk request kept in flight,
          K, B, beta) <-----------------------------  so the replay draws chunk k+1 during SGD
                                                      on chunk k; chunk k's priorities ride on
                                                      the request for k+2: one message per K
                                                      updates; the chain runs across iterations)

One iteration (DQN.training_step), top to bottom:
    fragments = await sample(epsilon)            # one fragment per runner; the next round starts
    replay.add_fragment(ref) for each            # the runners' refs, never copied by the driver
    for each update owed (replay_ratio * env steps, once learning_starts steps are in):
        batch = next of replay.sample_batches(K, B, beta)   # uniform, or P(i) ~ p_i**alpha, w_i
        y = r^(n) + gamma^n (1 - done) Q_target(s', argmax_a' Q(s', a'))     # q_targets
        loss = mean(w * huber(y - Q(s, a)))      # td_loss; |y - Q(s, a)| -> new priorities
        gradients: by hand for QModule's MLP (rl/q_step.py), else autograd
        Adam step; every target_network_update_freq updates: theta' <- tau theta + (1-tau) theta'
    sync_weights()                               # one put, read by every runner

The defaults are tuned for CartPole-v1 (the target: the greedy policy's mean return over 20
episodes >= 475 within 30 s); bench/rl_bench.py's dqn rows measure it.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import typing
import warnings

import numpy as np
import torch
from torch import nn

from pyactor.rl.algorithm import Algorithm
from pyactor.rl.config import AlgorithmConfig, check_schedule, schedule_value
from pyactor.rl import numpy_learner, q_step
from pyactor.rl.learner import Learner
from pyactor.rl.module import ACTIVATIONS, RLModule, functional_layers, mlp, run_mlp
from pyactor.rl.sharded_replay import ShardedReplay

try:
    import gymnasium as gym
except ImportError as error:  # pragma: no cover
    raise ImportError("pyactor.rl needs gymnasium: pip install 'pyactor[rl]'") from error


@dataclasses.dataclass(frozen=True)
class DQNConfig(AlgorithmConfig):
    num_env_runners: int = 1
    num_envs_per_runner: int = 8
    rollout_fragment_length: int = 16
    gamma: float = 0.99
    # 1.5e-3 solved CartPole-v1 in ~40 % fewer steps than 1e-3; 2e-3 diverged on seed 2. Decaying
    # the step size keeps late updates from undoing a solved policy (Q-value divergence).
    lr: float = 1.5e-3
    lr_schedule: typing.Optional[list] = dataclasses.field(
        default_factory=lambda: [[0, 1.5e-3], [30_000, 1e-4]])
    grad_clip: typing.Optional[float] = 10.0
    model: dict = dataclasses.field(
        default_factory=lambda: {"hidden": [128, 128], "activation": "relu"})
    train_batch_size: int = 128
    replay_ratio: float = 0.5  # SGD updates per env step sampled
    # Batches fetched from the replay actor per round trip (the round trip, not the SGD step,
    # was most of an update's cost when fetched one at a time).
    replay_batches_per_request: int = 4  # 16: staler priorities, and seed 0 stalled at 465
    learning_starts: int = 500  # env steps in the replay buffer before the first update
    replay_buffer_capacity: int = 50_000  # transitions
    n_step: int = 3
    double_q: bool = True
    dueling: bool = True
    # Learner updates between target updates. Often: with gamma 0.99 a value must bootstrap
    # through ~75 target refreshes to reach its horizon, so rare refreshes bound learning speed;
    # every 10 updates diverged (Q-values past 1/(1 - gamma)) after ~15k updates.
    target_network_update_freq: int = 50
    tau: float = 1.0  # 1.0: hard copy; < 1: theta' <- tau theta + (1 - tau) theta'
    epsilon: list = dataclasses.field(default_factory=lambda: [[0, 1.0], [2_500, 0.01]])
    td_error_loss_fn: str = "huber"
    # Uniform by default: on CartPole-v1 prioritized replay solved seeds 0-4 at 11k to 43k env
    # steps, uniform at 14k to 20.5k (docs/rl-dqn.md, "How the defaults were chosen").
    prioritized_replay: bool = False
    prioritized_replay_alpha: float = 0.6
    prioritized_replay_beta: list = dataclasses.field(
        default_factory=lambda: [[0, 0.4], [50_000, 1.0]])
    prioritized_replay_eps: float = 1e-6
    store_buffer_in_checkpoints: bool = False

    algo_name = "DQN"

    def validate(self) -> None:
        super().validate()
        for name in ("train_batch_size", "replay_buffer_capacity", "n_step",
                     "target_network_update_freq", "replay_batches_per_request"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.replay_ratio <= 0:
            raise ValueError(f"replay_ratio must be > 0, got {self.replay_ratio}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.td_error_loss_fn not in ("huber", "mse"):
            raise ValueError(f"td_error_loss_fn must be 'huber' or 'mse', got "
                             f"{self.td_error_loss_fn!r}")
        if self.prioritized_replay_alpha < 0 or self.prioritized_replay_eps <= 0:
            raise ValueError("prioritized_replay_alpha must be >= 0 and prioritized_replay_eps > 0")
        check_schedule("epsilon", self.epsilon)
        check_schedule("prioritized_replay_beta", self.prioritized_replay_beta)

    @classmethod
    def algorithm_class(cls):
        return DQN


# ---------------------------------------------------------------------- the Q network
class QModule(RLModule):
    """Q(s, .) for every discrete action: an MLP trunk, then either one linear head or the
    dueling heads of Wang et al. 2016 (eq. 9):
        Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')"""

    def __init__(self, observation_space, action_space, model_config=None):
        super().__init__(observation_space, action_space, model_config)
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"DQN needs a Discrete action space, the env has {action_space}")
        n_obs = int(np.prod(observation_space.shape))
        hidden = list(self.model_config["hidden"])
        activation = self.model_config["activation"]
        self.num_actions = int(action_space.n)
        self.dueling = bool(self.model_config.get("dueling", False))
        self.trunk = nn.Sequential(*mlp([n_obs, *hidden], activation, out_gain=np.sqrt(2)),
                                   ACTIVATIONS[activation]())
        self.advantage = mlp([hidden[-1], self.num_actions], activation, out_gain=0.01)
        self.value = mlp([hidden[-1], 1], activation, out_gain=1.0) if self.dueling else None
        # Functional calls: the same maths without nn.Module's per-call overhead.
        self._trunk_layers = functional_layers(self.trunk)
        self._advantage_layers = functional_layers(self.advantage)
        self._value_layers = functional_layers(self.value) if self.dueling else None

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        features = run_mlp(self._trunk_layers, obs)
        advantage = run_mlp(self._advantage_layers, features)
        if self._value_layers is None:
            return advantage
        value = run_mlp(self._value_layers, features)
        return value + advantage - advantage.mean(-1, keepdim=True)

    def forward_exploration(self, obs, generator=None, epsilon: float | None = None, **explore_kw):
        """Epsilon-greedy (Mnih et al. 2015): a uniform action with probability epsilon, else the
        greedy one. epsilon defaults to the model config's `explore_epsilon` (the end of the
        training schedule, set by DQN), for compute_single_action(explore=True)."""
        if epsilon is None:
            epsilon = float(self.model_config.get("explore_epsilon", 0.0))
        return {"actions": epsilon_greedy(self.q_values(obs), epsilon, generator)}

    def forward_inference(self, obs):
        return {"actions": self.q_values(obs).argmax(-1)}

    def numpy_policy(self):
        """The numpy copy runners and evaluate() act with (rl/q_step.py), unless a subclass
        changed how this module acts."""
        if not q_step.supports(self) or any(
                getattr(type(self), name) is not getattr(QModule, name)
                for name in ("forward_exploration", "forward_inference")):
            return None
        return q_step.NumpyQ(self)

    def forward_train(self, batch):
        return {"q_values": self.q_values(batch["obs"])}


def epsilon_greedy(q_values: torch.Tensor, epsilon: float, generator=None) -> torch.Tensor:
    greedy = q_values.argmax(-1)
    if epsilon <= 0.0:
        return greedy
    batch, num_actions = q_values.shape
    explore = torch.rand(batch, generator=generator) < epsilon
    random_actions = torch.randint(num_actions, (batch,), generator=generator)
    return torch.where(explore, random_actions, greedy)


# ---------------------------------------------------------------------- the loss
def q_targets(rewards: torch.Tensor, terminateds: torch.Tensor, discounts: torch.Tensor,
              next_q_target: torch.Tensor, next_q_online: torch.Tensor | None) -> torch.Tensor:
    """The n-step TD target for each transition (rewards and discounts are the n-step sums and
    gamma**m of buffers.n_step_transitions):
        DQN (Mnih et al. 2015, eq. 2):          y = r + gamma^m (1 - done) max_a' Q_target(s', a')
        double DQN (van Hasselt et al. 2016, eq. 4):
                                                y = r + gamma^m (1 - done) Q_target(s', argmax_a' Q(s', a'))
    with next_q_online = Q(s', .) of the online network for double Q, None for plain DQN."""
    if next_q_online is None:
        bootstrap = next_q_target.max(-1).values
    else:
        best = next_q_online.argmax(-1, keepdim=True)
        bootstrap = next_q_target.gather(-1, best).squeeze(-1)
    return rewards + discounts * (1.0 - terminateds) * bootstrap


def td_loss(q_taken: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
            loss_fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, TD errors). Huber loss is Mnih et al.'s clipping of the error term to [-1, 1];
    `weights` are prioritized replay's importance weights w_i (Schaul et al. 2016, algorithm 1
    line 12), all ones under uniform replay."""
    errors = targets - q_taken
    if loss_fn == "huber":
        per_sample = nn.functional.huber_loss(q_taken, targets, reduction="none", delta=1.0)
    else:
        per_sample = 0.5 * errors ** 2
    return (weights * per_sample).mean(), errors


def update_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta' (Lillicrap et al. 2016); tau=1 is DQN's copy."""
    with torch.no_grad():
        for target_param, param in zip(target.parameters(), online.parameters()):
            if tau >= 1.0:
                target_param.copy_(param)
            else:
                target_param.lerp_(param, tau)


class DQNLearner(Learner):
    def __init__(self, module_spec, config: dict, seed: int | None = None):
        super().__init__(module_spec, config, seed)
        self.target = copy.deepcopy(self.module)
        self.target.requires_grad_(False)
        # QModule's MLP on CPU takes the hand-derived numpy step (rl/q_step.py), its parameters,
        # the target's and Adam's moments made views of flat vectors; another module (or a
        # GPU) takes autograd.
        self.numpy_step = None
        if q_step.supports_numpy_step(self.module):
            flat = numpy_learner.flatten_parameters(self.parameters)
            target_flat = numpy_learner.flatten_parameters(list(self.target.parameters()))
            self.moments = tuple(moment.numpy() for moment in self.optimizer.flatten())
            self.numpy_step = q_step.NumpyQStep(self.module, flat.numpy(), self.target,
                                                target_flat.numpy(), config["double_q"],
                                                config["td_error_loss_fn"])

    def update(self, batches: list[dict], **kw) -> dict:
        """One SGD step per batch; returns the metrics summed over the batches, and the batches'
        transition `ids` with their |TD error| as `priorities` (the new p_i, Schaul et al. 2016).
        A batch may be stacked [K, B, ...] (ReplayActor.sample_batches): K steps, one per row,
        with the arrays converted once."""
        if self.numpy_step is not None:
            with numpy_learner.one_blas_thread():
                stats, priorities = self._numpy_steps(batches)
        else:
            # Batches arrive as read-only views of the object store; torch only reads them.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                stats, priorities = self._autograd_steps(batches)
        totals = dict(zip(("loss", "q_mean", "td_error_abs", "grad_norm"),
                          np.sum(stats, axis=0, dtype=np.float64).tolist()))
        totals["num_updates"] = len(stats)
        totals["ids"] = np.concatenate([np.ravel(batch["ids"]) for batch in batches])
        totals["priorities"] = np.concatenate(priorities)
        return totals

    def _numpy_steps(self, batches: list[dict]) -> tuple[list, list]:
        stats, priorities = [], []
        for batch in batches:
            arrays = self.numpy_step.prepare(batch)
            stacked = arrays["actions"].ndim == 2
            for row in range(len(arrays["actions"])) if stacked else [None]:
                step = arrays if row is None else {k: v[row] for k, v in arrays.items()}
                errors, step_stats = self._numpy_sgd_step(step)
                priorities.append(errors)
                stats.append(step_stats)
        return stats, priorities

    def _numpy_sgd_step(self, batch: dict) -> tuple[np.ndarray, tuple]:
        """The loss of Mnih et al. 2015 on one prepared batch and one Adam step; returns the
        |TD errors| and (loss, mean Q, mean |TD error|, grad norm)."""
        step, clip = self.numpy_step, self.config["grad_clip"]
        loss, q_taken, errors = step.gradients(batch)
        grad = step.grad
        grad_norm = float(np.sqrt(np.dot(grad, grad)))
        # nn.utils.clip_grad_norm_'s maths (a factor of exactly 1 below the threshold: skipped)
        if clip and clip < grad_norm + 1e-6:
            grad *= clip / (grad_norm + 1e-6)
        self.optimizer.fused_step(step.flat, grad, *self.moments)
        self._count_update()
        size = len(errors)
        return errors, (loss, float(np.add.reduce(q_taken)) / size,
                        float(np.add.reduce(errors)) / size, grad_norm)

    def _autograd_steps(self, batches: list[dict]) -> tuple[list, list]:
        stats, priorities = [], []
        for batch in batches:
            tensors = {key: self.to_tensor(batch[key]) for key in
                       ("obs", "next_obs", "actions", "rewards", "terminateds", "discounts",
                        "weights")}
            tensors["actions"] = tensors["actions"].long()
            tensors["terminateds"] = tensors["terminateds"].float()
            stacked = tensors["weights"].dim() == 2
            for row in range(len(tensors["weights"])) if stacked else [None]:
                step = tensors if row is None else {k: v[row] for k, v in tensors.items()}
                errors, step_stats = self._sgd_step_autograd(step)
                priorities.append(errors)
                stats.append(step_stats)
        # One device-to-host copy per update call, not one per step.
        return torch.stack(stats).cpu().numpy(), [errors.cpu().numpy() for errors in priorities]

    def _count_update(self) -> None:
        c = self.config
        self.num_updates += 1
        if self.num_updates % c["target_network_update_freq"] == 0:
            update_target(self.target, self.module, c["tau"])
            if self.numpy_step is not None:
                self.numpy_step.target_changed()

    def _sgd_step_autograd(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """_numpy_sgd_step's loss and Adam step through torch autograd: for modules other than
        QModule's MLP or off the CPU, and the reference the hand-derived gradients are tested
        against."""
        c = self.config
        obs, next_obs, actions = batch["obs"], batch["next_obs"], batch["actions"]
        if c["double_q"]:  # one pass of the online net over s and s'
            both = self.module.q_values(torch.cat([obs, next_obs]))
            q_all, next_q_online = both[:len(obs)], both[len(obs):].detach()
        else:
            q_all, next_q_online = self.module.q_values(obs), None
        with torch.no_grad():
            targets = q_targets(batch["rewards"], batch["terminateds"], batch["discounts"],
                                self.target.q_values(next_obs), next_q_online)
        q_taken = q_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        loss, errors = td_loss(q_taken, targets, batch["weights"], c["td_error_loss_fn"])
        grad_norm = self.apply_gradients(loss, c["grad_clip"])
        self._count_update()
        errors = errors.detach().abs()
        return errors, torch.stack([loss.detach(), q_taken.detach().mean(), errors.mean(),
                                    torch.tensor(grad_norm)])

    def num_updates_done(self) -> int:
        return self.num_updates

    def get_state(self) -> dict:
        state = super().get_state()
        state["target"] = {k: v.cpu() for k, v in self.target.state_dict().items()}
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self.target.load_state_dict(state["target"])
        if self.numpy_step is not None:
            self.numpy_step.target_changed()


# ---------------------------------------------------------------------- the algorithm
class DQN(Algorithm):
    config_class = DQNConfig
    learner_class = DQNLearner
    module_class = QModule

    def __init__(self, config: DQNConfig):
        if not isinstance(config, DQNConfig):
            raise TypeError(f"DQN needs a DQNConfig, got {type(config).__name__}")
        # The module reads its head and its default exploration from the model config.
        final_epsilon = float(config.epsilon[-1][1])
        self.replay = None
        super().__init__(config.replace(model={**config.model, "dueling": config.dueling,
                                               "explore_epsilon": final_epsilon}))
        try:
            self.replay = ShardedReplay(
                self.num_replay_shards(), config.replay_buffer_capacity,
                config.prioritized_replay, config.prioritized_replay_alpha, config.n_step,
                config.gamma, config.seed)
        except BaseException:
            self.stop()  # leave no runner or learner behind
            raise
        self.transitions_added = 0  # n-step transitions sent to the replay actor
        self._update_credit = 0.0  # updates owed by replay_ratio, carried across iterations
        self._replay_stats: dict = {}
        self._prefetched = None  # (shard, ref) of the next iteration's first chunk (_learn)

    def num_replay_shards(self) -> int:
        """DQN keeps one replay actor; Ape-X shards its replay over several."""
        return 1

    def exploration_kwargs(self) -> dict:
        """What the runners' forward_exploration gets: the schedule's epsilon now."""
        return {"epsilon": schedule_value(self.config.epsilon, 0.0, self.env_steps_total)}

    def after_updates(self, num_updates: int) -> None:
        """DQN sends the weights to the runners after every iteration's updates."""
        self.sync_weights()

    async def training_step(self) -> dict:
        c = self.config
        explore_kw = self.exploration_kwargs()
        fragments = await self.sample(**explore_kw)
        refs = self.env_runner_group.collected_refs
        new_steps = 0
        for fragment, ref in zip(fragments, refs):
            # The runner's ref: the replay actor reads the arrays from the store itself.
            self.replay.add_fragment(ref if ref is not None else fragment,
                                     int(fragment["runner_index"]), int(fragment["env_steps"]))
            new_steps += int(fragment["env_steps"])
        self.transitions_added += new_steps
        ready = min(self.transitions_added, c.replay_buffer_capacity) >= c.learning_starts \
            and self.replay.smallest_shard_size() >= c.train_batch_size
        if ready:
            self._update_credit += c.replay_ratio * new_steps
        num_updates = int(self._update_credit)
        self._update_credit -= num_updates
        lr = schedule_value(c.lr_schedule, c.lr, self.env_steps_total)
        if num_updates:
            self.learner.call("set_lr", lr)
        # Asked now, answered while the learner works (the size is final once the fragments
        # are in): the result's replay sizes cost no round trip of their own.
        replay_stats = asyncio.ensure_future(self.replay.stats())
        try:
            next_updates = int(self._update_credit + c.replay_ratio * new_steps) if ready else 0
            metrics = await self._learn(num_updates, next_updates)
            self.after_updates(num_updates)
            self._replay_stats = await replay_stats
        finally:
            replay_stats.cancel()  # a no-op once done; else (an error above) nothing waits on it
        metrics.update(explore_kw, lr=lr,
                       num_updates_total=self.learner.call("num_updates_done"))
        metrics["replay/size"] = self._replay_stats["size"]
        metrics["replay/size_bytes"] = self._replay_stats["size_bytes"]
        return metrics

    async def _learn(self, num_updates: int, next_updates: int = 0) -> dict:
        """num_updates SGD steps, each on a fresh replay batch. Batches come from the replay
        actor in chunks of replay_batches_per_request (one round trip per chunk, not per step),
        with one request always ahead: the replay actor draws chunk k+1 while the learner
        computes on chunk k. Chunk k's priorities travel with the request for chunk k+2 (one
        message per chunk; fire and forget), so a chunk is drawn with every priority but the
        last two chunks' applied, as Ape-X's are.

        The chain runs across iterations: when the next iteration is expected to make at least
        a full chunk of updates (`next_updates`, from this iteration's env steps), its first
        chunk is requested during this one, so the learner does not wait for the replay actor
        at the start of every iteration. That chunk is drawn before the next fragments reach
        the buffer (one fragment staler; priorities no staler than within an iteration) and
        waits for the first iteration that makes a full chunk of updates."""
        c = self.config
        size = c.replay_batches_per_request
        beta = schedule_value(c.prioritized_replay_beta, 0.4, self.env_steps_total)
        chunks = [min(size, num_updates - done) for done in range(0, num_updates, size)]
        in_flight: collections.deque = collections.deque()  # (shard, ref), in order of use
        to_request = list(chunks)
        if chunks and chunks[0] == size and self._prefetched is not None:
            in_flight.append(self._prefetched)
            self._prefetched, to_request = None, to_request[1:]
        prefetch = bool(chunks) and next_updates >= size and self._prefetched is None
        if prefetch:
            to_request.append(size)

        def request(num_batches: int, priorities: tuple | None = None):
            return self.replay.sample_batches(num_batches, c.train_batch_size, beta, priorities)

        while len(in_flight) < 2 and to_request:
            in_flight.append(request(to_request.pop(0)))
        totals: dict[str, float] = {}
        with numpy_learner.one_blas_thread():  # once for all the chunks (each update nests)
            for _ in chunks:
                shard, batch_ref = in_flight.popleft()
                out = await self._update_on(batch_ref)
                ids, priorities = out.pop("ids"), out.pop("priorities")
                done = (shard, ids, priorities) if c.prioritized_replay else None
                if to_request:
                    in_flight.append(request(to_request.pop(0), done))
                elif done is not None:
                    self.replay.update_priorities(*done)
                for key, value in out.items():
                    totals[key] = totals.get(key, 0.0) + value
        if prefetch:
            self._prefetched = in_flight.popleft()
        metrics = {key: value / max(num_updates, 1) for key, value in totals.items()
                   if key != "num_updates"}
        metrics["num_updates"] = num_updates
        if c.prioritized_replay:
            metrics["prioritized_replay_beta"] = beta
        return metrics

    async def _update_on(self, batch_ref) -> dict:
        if self.learner.local is not None:
            return self.learner.local.update([await batch_ref])
        # The learner actor reads the batches from the store; the driver never holds them.
        return await self.learner.update([], fragment_refs=[batch_ref])

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        state = {"transitions_added": self.transitions_added,
                 "update_credit": self._update_credit, "replay": None}
        if self.config.store_buffer_in_checkpoints:
            state["replay"] = self.replay.get_state()
        return state

    def set_extra_state(self, state: dict) -> None:
        self._prefetched = None  # drawn from the buffer this state replaces
        self.transitions_added = state["transitions_added"]
        self._update_credit = state["update_credit"]
        if state["replay"] is not None:
            self.replay.set_state(state["replay"])
        else:  # an empty buffer: learning waits for learning_starts new transitions again
            self.transitions_added = 0

    def stop(self) -> None:
        if getattr(self, "replay", None) is not None:
            self.replay.stop()
            self.replay = None
        super().stop()
