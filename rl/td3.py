"""TD3: twin delayed deep deterministic policy gradient (Fujimoto, van Hoof and Meger 2018,
"Addressing Function Approximation Error in Actor-Critic Methods", arXiv:1802.09477).

DDPG (rl/ddpg.py) with the paper's three changes, each one hook of DDPGLearner:

    clipped double Q (sec. 4.2, eq. 10): two critics; the target takes the smaller:
        y = r + gamma^n (1 - done) min_{k=1,2} Q'_k(s', a~')
    target policy smoothing (sec. 5.3, eq. 15): the target action is noised and clipped:
        a~' = clip(mu'(s') + clip(eps, -c, c), -1, 1),   eps ~ N(0, sigma^2)
    delayed policy updates (sec. 5.2): the actor and the targets move every d critic updates;
        the actor follows Q_1 alone: J = -mean Q_1(s, mu(s))

Both critics regress to the same y (algorithm 1). Defaults: sigma 0.2, c 0.5, d 2 (the
paper's), in the policy's [-1, 1] action units.
"""

from __future__ import annotations

import dataclasses

import torch

from pyactor.rl.continuous_modules import gaussian_noise
from pyactor.rl.ddpg import DDPG, DDPGConfig, DDPGLearner


@dataclasses.dataclass(frozen=True)
class TD3Config(DDPGConfig):
    policy_delay: int = 2  # d: critic updates per actor (and target) update
    target_policy_noise: float = 0.2  # sigma
    target_noise_clip: float = 0.5  # c

    algo_name = "TD3"

    def validate(self) -> None:
        super().validate()
        if self.policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {self.policy_delay}")
        if self.target_policy_noise < 0 or self.target_noise_clip < 0:
            raise ValueError(f"target_policy_noise and target_noise_clip must be >= 0, got "
                             f"{self.target_policy_noise} and {self.target_noise_clip}")

    @classmethod
    def algorithm_class(cls):
        return TD3


def smoothed_target_actions(target_actions: torch.Tensor, noise_std: float, noise_clip: float,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """a~' = clip(mu'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, noise_std^2) (eq. 15)."""
    noise = gaussian_noise(target_actions, generator) * noise_std
    return (target_actions + noise.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def clipped_double_q_targets(rewards: torch.Tensor, discounts: torch.Tensor,
                             not_done: torch.Tensor, next_q: torch.Tensor) -> torch.Tensor:
    """y = r + gamma^n (1 - done) min_k Q'_k(s', a~') (eq. 10); next_q is [K, B]."""
    return rewards + discounts * not_done * next_q.min(0).values


class TD3Learner(DDPGLearner):
    def td_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        next_actions = smoothed_target_actions(self.target.actor(batch["next_obs"]),
                                               c["target_policy_noise"], c["target_noise_clip"],
                                               self.generator)
        next_q = self.target.critics(batch["next_obs"], next_actions)
        return clipped_double_q_targets(batch["rewards"], batch["discounts"], batch["not_done"],
                                        next_q)

    def actor_update_due(self) -> bool:
        # num_updates counts the updates before this one: the actor moves on updates d, 2d, ...
        return (self.num_updates + 1) % self.config["policy_delay"] == 0


class TD3(DDPG):
    config_class = TD3Config
    learner_class = TD3Learner

    def module_options(self, config) -> dict:
        return {"num_critics": 2, "exploration_noise": config.exploration_noise}
