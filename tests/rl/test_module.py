"""Action distributions and the weights vector of RLModules."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from pyactor.rl.module import ActorCriticModule, Categorical, DiagGaussian


def test_categorical_samples_follow_the_probabilities():
    """Categorical.sample draws each action with its probability (inverse-CDF sampling)."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.2, 0.5, 0.3])
    samples = Categorical(probs.log().expand(100_000, 3)).sample(generator)
    frequencies = torch.bincount(samples, minlength=3).double() / 100_000
    assert torch.allclose(frequencies, probs.double(), atol=0.01)


def test_diag_gaussian_log_prob_and_entropy_match_torch():
    """DiagGaussian's log-prob and entropy equal torch.distributions.Normal's, summed."""
    mean, log_std = torch.randn(5, 3), torch.randn(3)
    actions = torch.randn(5, 3)
    reference = torch.distributions.Normal(mean, log_std.exp())
    ours = DiagGaussian(mean, log_std)
    assert torch.allclose(ours.log_prob(actions), reference.log_prob(actions).sum(-1), atol=1e-5)
    assert torch.allclose(ours.entropy(), reference.entropy().sum(-1), atol=1e-5)


def test_flat_weights_round_trip_between_modules():
    """Weights copied as one flat vector make a second module act identically."""
    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    first = ActorCriticModule(space, gym.spaces.Discrete(3))
    second = ActorCriticModule(space, gym.spaces.Discrete(3))
    second.set_flat_weights(first.get_flat_weights())
    obs = torch.randn(7, 4)
    assert torch.equal(first.forward_train({"obs": obs})["values"],
                       second.forward_train({"obs": obs})["values"])
    assert torch.equal(first.forward_inference(obs)["actions"],
                       second.forward_inference(obs)["actions"])


def test_learner_clips_the_gradient_norm_like_torch():
    """Learner.apply_gradients scales gradients exactly as nn.utils.clip_grad_norm_ does."""
    from pyactor.rl.learner import Learner
    from pyactor.rl.module import ModuleSpec
    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    learner = Learner(ModuleSpec(ActorCriticModule, space, gym.spaces.Discrete(2)), {"lr": 0.0}, 0)
    reference = ActorCriticModule(space, gym.spaces.Discrete(2))
    reference.load_state_dict(learner.module.state_dict())
    obs = torch.randn(32, 4) * 10
    loss = lambda module: module.forward_train({"obs": obs})["values"].pow(2).sum()  # noqa: E731
    norm = learner.apply_gradients(loss(learner.module), grad_clip=0.5)
    loss(reference).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert abs(norm - float(expected)) < 1e-3 * float(expected)
    for ours, theirs in zip(learner.module.parameters(), reference.parameters()):
        assert (ours.grad is None) == (theirs.grad is None)  # the policy net has no value loss
        if theirs.grad is not None:
            assert torch.allclose(ours.grad, theirs.grad, atol=1e-6)
