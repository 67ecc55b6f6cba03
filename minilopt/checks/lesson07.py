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
    hint = ("eps = sigma * jax.random.normal(key, (num_pairs,) + theta.shape); for each pair evaluate "
            "f(theta + eps_i) - f(theta - eps_i); the estimate is sum_i eps_i * diff_i / (2 * sigma**2 * num_pairs)")
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
            "weighs each pair's loss difference by its new ξ: sum_i xi_i * (L+_i - L-_i) / (2 sigma**2 N)")
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
