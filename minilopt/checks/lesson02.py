"""Checkers for lesson 02: hypergradient descent (Baydin et al. 2018)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import call, expect_close, fail

_RNG = np.random.default_rng(2)


def baydin_hypergradient_reference(g_now, g_prev):
    """∂f_t/∂α for w_t = w_{t−1} − α·g_{t−1}: the chain rule gives −⟨g_t, g_{t−1}⟩."""
    return -float(np.vdot(g_now, g_prev))


def hypergradient_by_vjp_reference(update, h, g_prev, g_now):
    """Pull g_now back through h ↦ update(g_prev, h) (the previous step), in h only."""
    _, pullback = jax.vjp(lambda h: update(g_prev, h), h)
    return pullback(g_now)[0]


def baydin_alphas_reference(grads, alpha0, kappa):
    """α after each step of SGD/SGD fed the gradients grads[0], grads[1], ...:
    α_t = α_{t−1} + κ·⟨g_t, g_{t−1}⟩, with nothing to correlate at the first step."""
    alphas, alpha, prev = [], alpha0, None
    for g in np.asarray(grads):
        if prev is not None:
            alpha = alpha + kappa * float(np.vdot(g, prev))
        alphas.append(alpha)
        prev = g
    return np.array(alphas)


def check_baydin_hypergradient(baydin_hypergradient):
    """baydin_hypergradient(g_now, g_prev) -> ∂f_t/∂α, a number."""
    hint = ("w_t = w_{t-1} - alpha * g_{t-1}, so dw_t/dalpha = -g_{t-1}, and the chain rule "
            "contracts it with df_t/dw_t = g_t: mind the sign")
    for case in range(3):
        g_now, g_prev = _RNG.normal(size=6), _RNG.normal(size=6)
        got = call(baydin_hypergradient, g_now, g_prev, what="baydin_hypergradient", hint=hint)
        expect_close(f"hypergradient (case {case})", baydin_hypergradient_reference(g_now, g_prev), got, hint)
    print("baydin_hypergradient: correct on 3 cases")


def _test_rules():
    """(name, update(g_prev, h) -> Δ, h) pairs: plain SGD, a per-coordinate scale, an Adam-like first step."""
    sgd = lambda g, h: -h["alpha"] * g
    scaled = lambda g, h: -h["alpha"] * g / (1.0 + h["c"] * g**2)
    adam_first = lambda g, h: -h["alpha"] * ((1 - h["b1"]) * g) / (jnp.sqrt((1 - 0.999) * g**2) + 1e-8)
    return [("sgd", sgd, {"alpha": jnp.array(0.1)}),
            ("scaled", scaled, {"alpha": jnp.array(0.05), "c": jnp.array(0.3)}),
            ("adam-like", adam_first, {"alpha": jnp.array(1e-3), "b1": jnp.array(0.9)})]


def check_hypergradient_by_vjp(hypergradient_by_vjp):
    """hypergradient_by_vjp(update, h, g_prev, g_now) -> {name: ∂f_t/∂h_name}."""
    hint = ("differentiate only in h: jax.vjp(lambda h: update(g_prev, h), h) gives a pullback; "
            "call it with today's gradient g_now as the cotangent")
    for name, update, h in _test_rules():
        g_prev, g_now = jnp.asarray(_RNG.normal(size=5)), jnp.asarray(_RNG.normal(size=5))
        got = call(hypergradient_by_vjp, update, h, g_prev, g_now, what="hypergradient_by_vjp", hint=hint)
        want = hypergradient_by_vjp_reference(update, h, g_prev, g_now)
        if not isinstance(got, dict) or set(got) != set(want):
            fail(f"hypergradient_by_vjp must return a dict with one entry per hyperparameter ({name} rule)",
                 {k: float(v) for k, v in want.items()}, got, hint)
        for k in want:
            expect_close(f"d f_t / d {k} for the {name} rule", want[k], got[k], hint, rtol=1e-4)
    print("hypergradient_by_vjp: correct for SGD, a scaled rule and an Adam-like step")


def check_baydin_alphas(baydin_alphas):
    """baydin_alphas(grads, alpha0, kappa) -> α after each of len(grads) steps."""
    hint = ("at step t use kappa * <g_t, g_{t-1}>, and at the first step there is no previous gradient, "
            "so alpha stays alpha0; record alpha after updating it")
    for case, (alpha0, kappa) in enumerate([(0.1, 0.01), (0.01, 0.1), (1.0, 1e-3)]):
        grads = _RNG.normal(size=(8, 3)) + 0.5
        got = call(baydin_alphas, grads, alpha0, kappa, what="baydin_alphas", hint=hint)
        expect_close(f"alpha after each step (alpha0={alpha0}, kappa={kappa})",
                     baydin_alphas_reference(grads, alpha0, kappa), got, hint)
    print("baydin_alphas: correct on 3 gradient sequences")
