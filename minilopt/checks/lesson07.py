"""Checkers for lesson 07: antithetic ES and the PES accumulator."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import call, expect_close, fail


def antithetic_es_reference(f, theta, sigma, num_pairs, key):
    """ĝ = 1/(2σ²N) Σ_i ε_i (f(θ+ε_i) − f(θ−ε_i)),  ε = σ · normal(key, (N,) + θ.shape)."""
    theta = jnp.asarray(theta, jnp.float32)
    eps = sigma * jax.random.normal(key, (num_pairs,) + theta.shape)
    diff = jax.vmap(lambda e: f(theta + e) - f(theta - e))(eps)
    return np.asarray(jnp.tensordot(diff, eps, axes=1) / (2 * sigma**2 * num_pairs))


def pes_update_reference(xi, eps, loss_plus, loss_minus, sigma, new_episode):
    """(ĝ, ξ'): ξ' = ε + (0 where a new episode starts, else ξ);  ĝ = 1/(2σ²N) Σ_i ξ'_i (L⁺_i − L⁻_i)."""
    xi, eps = np.asarray(xi, np.float64), np.asarray(eps, np.float64)
    keep = ~np.asarray(new_episode, bool).reshape((-1,) + (1,) * (xi.ndim - 1))
    xi = np.where(keep, xi, 0.0) + eps
    diff = np.asarray(loss_plus, np.float64) - np.asarray(loss_minus, np.float64)
    return np.tensordot(diff, xi, axes=1) / (2 * sigma**2 * len(diff)), xi


def check_antithetic_es(antithetic_es):
    """antithetic_es(f, theta, sigma, num_pairs, key) -> the antithetic ES gradient estimate."""
    hint = ("draw the perturbations exactly as the exercise says, all at once from this key (so the checker can "
            "reproduce them); each pair's loss difference weighs its own perturbation; average over the pairs and "
            "divide by the formula's constant")
    cases = [(lambda th: jnp.sum(th**2) + jnp.sin(th[0]), np.array([0.5, -1.0, 2.0]), 0.1, 4),
             (lambda th: jnp.sum(jnp.cos(3 * th)), np.array([[0.1, 0.2], [0.3, 0.4]]), 0.05, 7),
             (lambda th: jnp.dot(jnp.array([1.0, -2.0]), th) + 5.0, np.array([0.0, 0.0]), 1.0, 1)]
    for i, (f, theta, sigma, n) in enumerate(cases):
        key = jax.random.PRNGKey(i)
        expected = antithetic_es_reference(f, theta, sigma, n, key)
        got = call(antithetic_es, f, jnp.asarray(theta, jnp.float32), sigma, n, key, what="antithetic_es", hint=hint)
        if got is not None and np.shape(got) == expected.shape and np.allclose(got, 2 * expected, rtol=1e-3):
            fail(f"antithetic_es, case {i}: twice the expected estimate", expected, got,
                 "the central difference f(θ+ε) − f(θ−ε) spans 2ε: divide by 2σ², not σ²")
        expect_close(f"antithetic_es, case {i} (theta shape {theta.shape}, {n} pairs)", expected, got, hint,
                     rtol=1e-3, atol=1e-5)
    print("antithetic_es: correct on 3 functions, including an exact linear one")


def check_pes_update(pes_update):
    """pes_update(xi, eps, loss_plus, loss_minus, sigma, new_episode) -> (grad, new_xi)."""
    hint = ("first restart ξ at 0 for the pairs whose episode is new, THEN add this truncation's ε; the estimate "
            "weighs each pair's loss difference by its NEW ξ, the same way ES weighs it by ε")
    rng = np.random.default_rng(7)
    for n, shape, new in [(4, (3,), [False, True, False, False]), (3, (2, 2), [False, False, False])]:
        sigma = 0.1
        xi, eps = rng.normal(size=(n,) + shape) * 0.2, rng.normal(size=(n,) + shape) * sigma
        lp, lm = rng.normal(size=n), rng.normal(size=n)
        g_ref, xi_ref = pes_update_reference(xi, eps, lp, lm, sigma, np.array(new))
        out = call(pes_update, xi, eps, lp, lm, sigma, np.array(new), what="pes_update", hint=hint)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            fail("pes_update must return a pair (grad, new_xi); the expected new_xi is", xi_ref, out, hint)
        g, new_xi = out
        expect_close(f"pes_update: new ξ ({n} pairs, new episode {new})", xi_ref, new_xi, hint, rtol=1e-5, atol=1e-7)
        expect_close(f"pes_update: the gradient estimate ({n} pairs)", g_ref, g, hint, rtol=1e-4, atol=1e-6)
    print("pes_update: ξ restarts with each episode and weighs the loss differences")


def double_well_meta_loss(lr, T=50, x0=0.1):
    """Lesson 06's chaotic meta-loss: the mean of f(x) = ¼(x² − 1)² over T steps of gradient descent."""
    def step(x, _):
        x = x - lr * x * (x**2 - 1.0)
        return x, 0.25 * (x**2 - 1.0) ** 2
    return jnp.mean(jax.lax.scan(step, jnp.float32(x0), None, length=T)[1])


@jax.jit
def _one_pair_std(lr, sigma, key):
    """The standard deviation of a one-pair antithetic ES estimate of dL/dlr, over 4000 pairs."""
    eps = sigma * jax.random.normal(key, (4000,))
    diff = jax.vmap(lambda e: double_well_meta_loss(lr + e) - double_well_meta_loss(lr - e))(eps)
    return jnp.std(eps * diff / (2 * sigma**2))


def es_spread_growth(lr, sigma, reference_sigma=0.05):
    """How many times larger the one-pair ES spread is at `sigma` than at `reference_sigma`."""
    key = jax.random.PRNGKey(0)
    return float(_one_pair_std(jnp.float32(lr), jnp.float32(sigma), key)
                 / _one_pair_std(jnp.float32(lr), jnp.float32(reference_sigma), key))


def check_exploding_sigma(exploding_sigma, low=5.0, high=20.0):
    """exploding_sigma(meta_loss, lr) -> a σ at which the one-pair ES estimate's spread is about ten times its
    spread at σ = 0.05 (the checker accepts 5x to 20x), on the chaotic double well. Checked by measuring the
    spread at the learner's σ, not by comparing σ with a stored value."""
    hint = ("measure the spread (the standard deviation) of many one-pair estimates at σ = 0.05 and at smaller σ; "
            "once σ is finer than the wiggles of the chaotic meta-loss, the loss difference stops shrinking with σ, "
            "so the estimate's spread grows as σ shrinks. Sweep σ downwards and stop where the spread has grown "
            "about tenfold")
    for lr in (1.5, 1.7):
        sigma = call(exploding_sigma, double_well_meta_loss, lr, what="exploding_sigma", hint=hint)
        if sigma is None or np.ndim(sigma) != 0 or not np.isfinite(float(sigma)) or not 0 < float(sigma) < 1:
            fail(f"exploding_sigma(meta_loss, lr={lr}) must return one σ, a positive number below 1", "0 < σ < 1",
                 sigma, hint)
        growth = es_spread_growth(lr, float(sigma))
        if growth < low:
            fail(f"exploding_sigma(lr={lr}): at σ = {float(sigma):.3g} the spread of a one-pair estimate is only "
                 f"{growth:.2g} times its spread at σ = 0.05", f"{low:g}x to {high:g}x", growth,
                 "the spread has not exploded yet: go to smaller σ. " + hint)
        if growth > high:
            fail(f"exploding_sigma(lr={lr}): at σ = {float(sigma):.3g} the spread is already {growth:.3g} times its "
                 f"spread at σ = 0.05, far past the point where it took off", f"{low:g}x to {high:g}x", growth,
                 "find where the growth BEGINS to matter (about tenfold), not just any tiny σ: sweep σ downwards "
                 "from 0.05 and stop at the first that crosses")
        smooth = es_spread_growth(0.5, float(sigma))
        print(f"lr={lr}: at your σ = {float(sigma):.2g} the ES spread has grown {growth:.1f}x; on the smooth run at "
              f"lr=0.5 the same σ changes it {smooth:.2f}x")
    print("exploding_sigma: the spread explodes where σ is finer than the chaos, and only there")
