"""PPO's numpy update (rl/numpy_learner.py and PPOLearner._numpy_minibatch) against the torch
autograd update it replaces: the same weights, optimiser state and metrics after an update, for
discrete and Box actions, every activation, value clipping and an entropy bonus; checkpoints of
the flat-parameter learner restore the same state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyactor import rl
from pyactor.rl import envs as rl_envs
from pyactor.rl import numpy_learner
from pyactor.rl.module import ActorCriticModule, ModuleSpec
from pyactor.rl.ppo import PPOLearner
from pyactor.rl.rollout import EnvRunner


def learner_pair(env: str, **config):
    obs_space, act_space = rl_envs.probe_spaces(env, {})
    model = config.pop("model", {})
    spec = ModuleSpec(ActorCriticModule, obs_space, act_space, model)
    c = rl.PPOConfig(env=env, seed=0, model=model, **config).to_dict()
    fused, plain = PPOLearner(spec, c, seed=0), PPOLearner(spec, c, seed=0)
    assert fused.fused is not None
    plain.fused = None  # the torch autograd path
    runners = [EnvRunner(env, {}, 4, spec, seed=i, runner_index=i) for i in range(2)]
    for runner in runners:
        runner.set_weights(fused.get_flat_weights(), 1)
    fragments = [runner.sample(16) for runner in runners]
    return fused, plain, fragments


@pytest.mark.parametrize("env, config", [
    ("CartPole-v1", {}),
    ("CartPole-v1", {"entropy_coeff": 0.05, "vf_clip_param": 0.1, "grad_clip": None,
                     "model": {"activation": "relu", "hidden": [32, 16, 8]}}),
    ("CartPole-v1", {"normalize_advantages": False, "model": {"activation": "elu"}}),
    ("Pendulum-v1", {"entropy_coeff": 0.01, "vf_clip_param": 1.0}),
])
def test_numpy_update_matches_torch_autograd(env, config):
    """Two updates (16 minibatch steps, clipping active in the second) leave the numpy learner's
    weights, Adam moments and metrics equal to the torch learner's."""
    fused, plain, fragments = learner_pair(env, num_epochs=2, minibatch_size=32,
                                           lr=1e-2, **config)
    for _ in range(2):
        got = fused.update(fragments, lr=3e-3, clip_param=0.02)
        want = plain.update(fragments, lr=3e-3, clip_param=0.02)
    np.testing.assert_allclose(fused.get_flat_weights(), plain.get_flat_weights(),
                               rtol=1e-4, atol=1e-5)
    for got_moment, want_moment in zip(fused.optimizer.exp_avg, plain.optimizer.exp_avg):
        torch.testing.assert_close(got_moment, want_moment, rtol=1e-3, atol=1e-6)
    assert got["num_sgd_steps"] == want["num_sgd_steps"] == 8  # 128 rows / 32, 2 epochs
    assert got["clip_fraction"] > 0  # the clipped branch was exercised
    for key in ("policy_loss", "vf_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm",
                "explained_variance"):
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key


def test_flat_learner_checkpoint_restores_weights_and_moments():
    """get_state/set_state of a numpy-path learner round-trip into another learner, which keeps
    training on the restored state exactly like the original."""
    fused, _, fragments = learner_pair("CartPole-v1", num_epochs=1, minibatch_size=64)
    fused.update(fragments, lr=1e-3, clip_param=0.2)
    state = fused.get_state()
    other = learner_pair("CartPole-v1", num_epochs=1, minibatch_size=64)[0]
    other.set_state(state)
    np.testing.assert_array_equal(other.get_flat_weights(), fused.get_flat_weights())
    fused.update(fragments, lr=1e-3, clip_param=0.2)
    other.update(fragments, lr=1e-3, clip_param=0.2)
    np.testing.assert_array_equal(other.get_flat_weights(), fused.get_flat_weights())
    # the checkpoint holds compact copies, not views of the learner's flat storage
    assert all(t.untyped_storage().nbytes() == t.numel() * 4 for t in state["module"].values())


def test_subclassed_module_keeps_the_torch_path():
    """A module that changes the actor-critic's maths is not trained by the numpy view."""
    class Scaled(ActorCriticModule):
        def value(self, obs):
            return 2 * super().value(obs)

    obs_space, act_space = rl_envs.probe_spaces("CartPole-v1", {})
    assert numpy_learner.supports(ActorCriticModule(obs_space, act_space))
    assert not numpy_learner.supports(Scaled(obs_space, act_space))


def test_one_blas_thread_nests_and_restores_once():
    """Inside one_blas_thread numpy's BLAS runs on one thread; a nested block changes nothing
    (leaving it keeps one thread), and leaving the outermost restores the count it found."""
    calls = numpy_learner._openblas_thread_calls()
    if calls is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS found in this process")
    get, set_ = calls
    before = get()
    set_(2)
    try:
        with numpy_learner.one_blas_thread():
            assert get() == 1
            with numpy_learner.one_blas_thread():
                assert get() == 1
            assert get() == 1
        assert get() == 2
    finally:
        set_(before)
