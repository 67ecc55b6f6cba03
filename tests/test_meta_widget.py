"""Lesson 07's explorer: its callback redraws, and its numbers are the facts it illustrates;
`estimators.episode_estimates`, which computes them, against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt import widgets
from minilopt.meta import estimators
from minilopt.meta.unroll import TruncatedUnroll
from test_meta_estimators import Drift, LinearTask  # loss w·x + c + ½a|x|², and x_t = t·θ


# 128 replicas, as lesson 07's explorer: the same program, compiled once in a test run
def test_es_explorer_callback_redraws_without_recompiling_sigma():
    before = widgets.es_spread.cache_info().misses
    explorer = widgets.es_explorer(replicas=128)
    png = explorer.update(sigma=0.05)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert explorer.values() == {"sigma": 0.05, "truncation": 10, "particles": 4}
    explorer.update(sigma=0.2)
    # σ is traced: one compiled function per (K, N) serves every σ (other tests may have built it already)
    assert widgets.es_spread.cache_info().misses - before <= 1


def test_es_explorer_estimates_show_bias_and_unbiasedness():
    est = widgets.es_explorer(replicas=128).estimates(0.01, 10, 4)
    truth = float(est["jax.grad"])
    se = {k: v.std(ddof=1) / np.sqrt(len(v)) for k, v in est.items() if k != "jax.grad"}
    assert abs(est["PES"].mean() - truth) < 4 * se["PES"]
    assert abs(est["ES (full horizon)"].mean() - truth) < 4 * se["ES (full horizon)"]
    assert est["truncated ES"].mean() - truth > 4 * se["truncated ES"]  # short-horizon bias


# ---- estimators.episode_estimates, which the explorer draws -------------------------------

def linear(w):
    return LinearTask(jnp.asarray(w), jnp.float32(0.0), jnp.float32(0.0))  # loss w·x


def test_episode_estimates_of_es_on_a_linear_meta_loss_have_the_gaussian_spread():
    """Meta-loss mean_{t=1..3} w·(tθ) = 2 w·θ, so ∇ = a = 2w. One antithetic pair's estimate
    ε (ε·a)/σ² has mean a and, in coordinate j, variance |a|² + a_j² (Gaussian moments):
    N pairs divide that by N. Checked on 400 independent estimates."""
    w = np.array([1.0, -2.0, 0.5], np.float32)
    a, pairs, replicas = 2 * w.astype(np.float64), 4, 400
    unroll = TruncatedUnroll(Drift(), linear(w), 4, 4, normalise=False, clip=1e9, stagger=False)
    keys = jax.random.split(jax.random.PRNGKey(0), replicas)
    est = jax.jit(lambda k: estimators.episode_estimates(estimators.es(unroll, pairs, 0.1), Drift().init(), k))(keys)
    est = np.asarray(est["v"], np.float64)
    assert est.shape == (replicas, 3)
    want_std = np.sqrt((np.sum(a ** 2) + a ** 2) / pairs)
    np.testing.assert_allclose(est.std(0, ddof=1), want_std, rtol=0.15)  # 400 replicas: the sd's sd is ~4%
    assert np.all(np.abs(est.mean(0) - a) < 4 * want_std / np.sqrt(replicas))


def test_episode_estimates_average_the_calls_of_one_episode():
    """A truncated estimator over T/K = 2 calls: the mean of the two truncations' estimates.
    truncated_grad differentiates each truncation from its carried state, a constant.
    Steps 0, 1 (step 0 masked): w·x_1 = w·θ, gradient w. Steps 2, 3 from x_2:
    mean(w·x_2, w·(x_2 + θ)), gradient w/2. Their mean is 0.75 w (the whole episode's
    gradient is 2w: the short-horizon bias)."""
    w = np.array([1.0, -2.0, 0.5], np.float32)
    unroll = TruncatedUnroll(Drift(), linear(w), 4, 2, normalise=False, clip=1e9, stagger=False)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    est = estimators.episode_estimates(estimators.truncated_grad(unroll, 1), Drift().init(), keys, calls=2)
    np.testing.assert_allclose(np.asarray(est["v"]), np.tile(0.75 * w, (3, 1)), rtol=1e-5)
    with pytest.raises(ValueError, match="calls must be a positive int"):
        estimators.episode_estimates(estimators.truncated_grad(unroll, 1), Drift().init(), keys, calls=0)
