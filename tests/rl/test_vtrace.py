"""V-trace (rl/vtrace.py) against a direct loop over the paper's definition (Espeholt et al. 2018,
eq. 1 and 4), with episode ends inside the fragment and the clipping thresholds."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyactor.rl.vtrace import vtrace


def vtrace_by_definition(mu_logp, pi_logp, rewards, values, next_values, terminateds, truncateds,
                         gamma, rho_bar, c_bar, pg_rho_bar, lam):
    """v_s = V(x_s) + sum_{t=s}^{e} gamma^(t-s) (prod_{i=s}^{t-1} c_i) delta_t V, summed term by
    term up to e, the end of s's episode or of the fragment; the next state's value is 0 after a
    termination and V(final observation) after a truncation or at the fragment's end."""
    T, N = rewards.shape
    clip = lambda x, bar: x if bar is None else min(bar, x)  # noqa: E731
    vs = np.zeros((T, N))
    advantages = np.zeros((T, N))
    for n in range(N):
        ratio = [math.exp(pi_logp[t, n] - mu_logp[t, n]) for t in range(T)]

        def next_value(t):  # V(x_{t+1}) of the transition at t
            return 0.0 if terminateds[t, n] else next_values[t, n]

        def delta(t):
            return clip(ratio[t], rho_bar) * (rewards[t, n] + gamma * next_value(t) - values[t, n])

        for s in range(T):
            total, trace, t = 0.0, 1.0, s
            while True:
                total += gamma ** (t - s) * trace * delta(t)
                if terminateds[t, n] or truncateds[t, n] or t == T - 1:
                    break
                trace *= lam * clip(ratio[t], c_bar)
                t += 1
            vs[s, n] = values[s, n] + total
        for s in range(T):
            ended = terminateds[s, n] or truncateds[s, n] or s == T - 1
            v_next = next_value(s) if ended else vs[s + 1, n]
            advantages[s, n] = clip(ratio[s], pg_rho_bar) * (
                rewards[s, n] + gamma * v_next - values[s, n])
    return vs, advantages


def random_fragment(rng, T, N, p_end):
    terminateds = rng.random((T, N)) < p_end
    truncateds = (rng.random((T, N)) < p_end) & ~terminateds
    values = rng.normal(size=(T, N))
    next_values = np.concatenate([values[1:], rng.normal(size=(1, N))])  # V(x_{t+1}) ...
    ended = terminateds | truncateds
    next_values[ended] = rng.normal(size=int(ended.sum()))  # ... or V(final obs) at an end
    return dict(mu_logp=rng.normal(-0.7, 0.5, (T, N)), pi_logp=rng.normal(-0.7, 0.5, (T, N)),
                rewards=rng.normal(size=(T, N)), values=values, next_values=next_values,
                terminateds=terminateds, truncateds=truncateds)


def run_vtrace(f, **kw):
    t = {k: torch.as_tensor(v, dtype=torch.float64 if v.dtype != bool else torch.bool)
         for k, v in f.items()}
    out = vtrace(t["mu_logp"], t["pi_logp"], t["rewards"], t["values"], t["next_values"],
                 t["terminateds"], t["truncateds"], **kw)
    return out.vs.numpy(), out.pg_advantages.numpy()


thresholds = st.one_of(st.none(), st.floats(0.3, 3.0))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 7), N=st.integers(1, 4),
       p_end=st.sampled_from([0.0, 0.15, 0.4]), gamma=st.floats(0.0, 1.0),
       rho_bar=thresholds, c_bar=thresholds, pg_rho_bar=thresholds, lam=st.floats(0.0, 1.0))
def test_vtrace_matches_the_papers_definition(seed, T, N, p_end, gamma, rho_bar, c_bar,
                                              pg_rho_bar, lam):
    """Targets and advantages equal the direct sum of eq. 1 / eq. 4 for any thresholds, with
    terminations and truncations anywhere in the fragment."""
    f = random_fragment(np.random.default_rng(seed), T, N, p_end)
    kw = dict(gamma=gamma, rho_bar=rho_bar, c_bar=c_bar, pg_rho_bar=pg_rho_bar, lambda_=lam)
    vs, adv = run_vtrace(f, **kw)
    want_vs, want_adv = vtrace_by_definition(*f.values(), gamma, rho_bar, c_bar, pg_rho_bar, lam)
    np.testing.assert_allclose(vs, want_vs, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-9, atol=1e-9)


def test_vtrace_on_policy_is_the_n_step_return():
    """With pi = mu and no episode end, v_s is the discounted return to the fragment's end
    bootstrapped by V(x_T) (the paper's remark on the on-policy case)."""
    rng = np.random.default_rng(0)
    f = random_fragment(rng, 5, 2, 0.0)
    f["pi_logp"] = f["mu_logp"].copy()
    vs, _ = run_vtrace(f, gamma=0.9)
    r, boot = f["rewards"], f["next_values"][-1]
    want = np.array([sum(0.9 ** (t - s) * r[t] for t in range(s, 5)) + 0.9 ** (5 - s) * boot
                     for s in range(5)])
    np.testing.assert_allclose(vs, want, rtol=1e-9)


def test_vtrace_stops_at_a_termination_and_bootstraps_a_truncation():
    """A terminated step's target is its reward alone; a truncated one's is r + gamma V(final
    obs); neither sees the rewards of the next episode."""
    T = 3
    f = {"mu_logp": np.zeros((T, 2)), "pi_logp": np.zeros((T, 2)),
         "rewards": np.array([[1.0, 1.0], [2.0, 2.0], [100.0, 100.0]]),
         "values": np.zeros((T, 2)), "next_values": np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]]),
         "terminateds": np.array([[False, False], [True, False], [False, False]]),
         "truncateds": np.array([[False, False], [False, True], [False, False]])}
    vs, adv = run_vtrace(f, gamma=0.5)
    np.testing.assert_allclose(vs[:, 0], [1 + 0.5 * 2, 2, 100])
    np.testing.assert_allclose(vs[:, 1], [1 + 0.5 * (2 + 0.5 * 5), 2 + 0.5 * 5, 100])
    np.testing.assert_allclose(adv[1], [2, 2 + 0.5 * 5])
