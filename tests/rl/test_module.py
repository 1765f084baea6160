"""Action distributions, the weights vector of RLModules and their numpy copies."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

from pyactor.rl.module import ActorCriticModule, Categorical, DiagGaussian, ModuleSpec


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


@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3),
                                          gym.spaces.Box(-2, 2, (2,), np.float32)])
@pytest.mark.parametrize("model", [{}, {"hidden": [8], "activation": "relu"}])
def test_numpy_policy_matches_the_torch_module(action_space, model):
    """The runners' numpy copy of the actor-critic gives the torch module's values, greedy
    actions and log-probabilities of the actions it samples."""
    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    module = ActorCriticModule(space, action_space, model)
    if not module.discrete:
        with torch.no_grad():
            module.log_std.fill_(-0.5)
    policy = module.numpy_policy()
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    out = policy.explore(obs, np.random.default_rng(1))
    with torch.no_grad():
        reference = module.forward_train({"obs": torch.from_numpy(obs)})
        logp = reference["dist"].log_prob(torch.from_numpy(out["actions"]))
        greedy = module.forward_inference(torch.from_numpy(obs))["actions"].numpy()
    np.testing.assert_allclose(out["values"], reference["values"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logp"], logp.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(policy.greedy(obs)["actions"], greedy, rtol=1e-4, atol=1e-5)


def test_numpy_categorical_samples_follow_the_probabilities():
    """The numpy policy draws each discrete action with the module's probability."""
    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    module = ActorCriticModule(space, gym.spaces.Discrete(3), {"hidden": []})
    with torch.no_grad():  # a linear policy with logits log([0.2, 0.5, 0.3]) for every obs
        module.pi[0].weight.zero_()
        module.pi[0].bias.copy_(torch.tensor([0.2, 0.5, 0.3]).log())
    policy = module.numpy_policy()
    actions = policy.explore(np.zeros((100_000, 4), np.float32),
                             np.random.default_rng(0))["actions"]
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / 100_000, [0.2, 0.5, 0.3],
                               atol=0.01)


def test_adam_matches_torch_and_loads_its_state():
    """rl.optim.Adam takes torch.optim.Adam's steps, and each loads the other's state_dict."""
    from pyactor.rl.optim import Adam
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    optimizers = (Adam(ours, lr=1e-2, eps=1e-5), torch.optim.Adam(theirs, lr=1e-2, eps=1e-5))
    for step in range(10):
        for params, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            ((params[0] ** 2).sum() + params[1].sin().sum() * step).backward()
            optimizer.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach())
    restored = Adam([torch.nn.Parameter(p.detach().clone()) for p in theirs], lr=5.0)
    restored.load_state_dict(optimizers[1].state_dict())
    assert restored.steps == 10 and restored.param_groups[0]["lr"] == 1e-2
    torch.testing.assert_close(restored.exp_avg_sq[0], optimizers[1].state[theirs[0]]["exp_avg_sq"])
    torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in ours]).load_state_dict(
        optimizers[0].state_dict())


@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3),
                                          gym.spaces.Box(-2, 2, (2,), np.float32)])
@pytest.mark.parametrize("model", [{}, {"hidden": [8], "activation": "relu"}, {"hidden": []}])
def test_spec_numpy_policy_has_the_module_layout_and_outputs(action_space, model):
    """The numpy policy a spec makes without torch (what env runners use) lays out the flat
    vector as the module's named_parameters and, given the module's weights, acts like it."""
    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    spec = ModuleSpec(ActorCriticModule, space, action_space, model)
    module = spec.build()
    policy = spec.numpy_policy()
    assert policy.layout == [(name, tuple(p.shape)) for name, p in module.named_parameters()]
    policy.set_flat_weights(module.get_flat_weights())
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    reference = module.numpy_policy()
    for ours, theirs in [(policy.greedy(obs), reference.greedy(obs)),
                         (policy.explore(obs, np.random.default_rng(1)),
                          reference.explore(obs, np.random.default_rng(1)))]:
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key])


class _OwnActions(ActorCriticModule):
    def forward_inference(self, obs):
        return {"actions": torch.zeros(len(obs), dtype=torch.long)}


def test_spec_travels_by_class_name_and_keeps_other_modules_on_torch():
    """A pickled spec names an importable module class instead of carrying it (the receiver
    imports nothing until it builds); any module but the stock actor-critic gets no numpy copy
    from the spec; a bad activation is refused naming it."""
    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    spec = ModuleSpec(ActorCriticModule, space, gym.spaces.Discrete(2), {})
    payload = pickle.dumps(spec)
    assert b"ActorCriticModule" in payload and b"torch" not in payload
    assert pickle.loads(payload).module_class is ActorCriticModule
    assert ModuleSpec(_OwnActions, space, gym.spaces.Discrete(2)).numpy_policy() is None
    with pytest.raises(ValueError, match="activation 'swish'"):
        ModuleSpec(ActorCriticModule, space, gym.spaces.Discrete(2),
                   {"activation": "swish"}).numpy_policy()
