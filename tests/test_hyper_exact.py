"""Hypergradients are exact: closed forms, finite differences (float64), first step zero."""
import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minilopt import hyper
from minilopt.hyper import fast, rules
from helpers import float64


def feed(opt, grads):
    """Feed a sequence of gradients (T, d) to `opt`; return the updates (T, d) and the
    readable hyperparameters of every level after each step."""
    return jax.tree.map(np.asarray, _jitted_feed(opt)(grads))


@functools.lru_cache(maxsize=None)
def _jitted_feed(opt):
    def run(grads):
        def step(state, g):
            updates, state = opt.update(g, state, jnp.zeros_like(g))
            return state, (updates, hyper.hyperparams(state))
        return jax.lax.scan(step, opt.init(grads[0]), grads)[1]
    return jax.jit(run)


def baydin_closed_form(G, alpha, kappa):
    """SGD / SGD: α_t = α_{t−1} + κ·⟨g_t, g_{t−1}⟩ (⟨g_1, g_0⟩ = 0); Δ_t = −α_t·g_t."""
    alphas, updates, prev = [], [], np.zeros_like(G[0])
    for g in G:
        alpha = alpha + kappa * g @ prev
        alphas.append(alpha), updates.append(-alpha * g)
        prev = g
    return np.array(alphas), np.array(updates)


def tower3_closed_form(G, alpha, kappa, lam):
    """SGD / SGD / SGD: κ_t = κ_{t−1} + λ·⟨g_t, g_{t−1}⟩·⟨g_{t−1}, g_{t−2}⟩, then Baydin's rule with κ_t."""
    alphas, kappas, updates = [], [], []
    g1, g2 = np.zeros_like(G[0]), np.zeros_like(G[0])  # g_{t−1}, g_{t−2}
    for g in G:
        kappa = kappa + lam * (g @ g1) * (g1 @ g2)
        alpha = alpha + kappa * (g @ g1)
        alphas.append(alpha), kappas.append(kappa), updates.append(-alpha * g)
        g1, g2 = g, g1
    return np.array(alphas), np.array(kappas), np.array(updates)


gradient_sequences = hnp.arrays(np.float64, (12, 4), elements=st.floats(-2, 2, allow_nan=False))


BAYDIN = [hyper.stack(rules.sgd(0.1), rules.sgd(0.01)),
          hyper.hyperoptimize(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), by=optax.sgd(0.01))]
_inject_sgd = optax.inject_hyperparams(optax.sgd)
TOWER3 = [hyper.stack(rules.sgd(0.1), rules.sgd(0.01), rules.sgd(0.003)),
          hyper.stack(_inject_sgd(learning_rate=0.1), _inject_sgd(learning_rate=0.01), optax.sgd(0.003))]


@settings(max_examples=8, deadline=None)
@given(G=gradient_sequences)
def test_sgd_sgd_is_baydins_rule(G):
    with float64():
        for opt in BAYDIN:  # a minilopt rule, and optax's own sgd through inject_hyperparams
            updates, hps = feed(opt, jnp.asarray(G))
            alphas, expected_updates = baydin_closed_form(G, 0.1, 0.01)
            level1 = hps[0]["alpha"] if "alpha" in hps[0] else hps[0]["learning_rate"]
            np.testing.assert_allclose(level1, alphas, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(updates, expected_updates, rtol=1e-13, atol=1e-15)


@settings(max_examples=8, deadline=None)
@given(G=gradient_sequences)
def test_sgd_sgd_sgd_closed_form(G):
    with float64():
        for opt in TOWER3:
            updates, hps = feed(opt, jnp.asarray(G))
            alphas, kappas, expected_updates = tower3_closed_form(G, 0.1, 0.01, 0.003)
            first = lambda d: next(iter(d.values()))
            np.testing.assert_allclose(first(hps[0]), alphas, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(first(hps[1]), kappas, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(updates, expected_updates, rtol=1e-12, atol=1e-15)


def test_closed_form_sign_convention():
    # Aligned successive gradients raise α; opposed ones lower it.
    with float64():
        g = jnp.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
        _, hps = feed(hyper.stack(rules.sgd(0.1), rules.sgd(0.01)), g)
        np.testing.assert_allclose(hps[0]["alpha"], [0.1, 0.11, 0.1])


# ---- finite differences of every rule's hypergradient ---------------------------------

def tiny_net_loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2) + 0.1 * jnp.sum(params["s"] ** 2)


RULES_UNDER_TEST = {
    "sgd": lambda: rules.sgd(0.1),
    "sgd_momentum": lambda: rules.sgd(0.1, mu=0.7),
    "sgd_log_alpha": lambda: rules.sgd(0.1, log_alpha=True),
    "sgd_per_param": lambda: rules.sgd_per_param(0.1),
    "adagrad": lambda: rules.adagrad(0.1),
    "rmsprop": lambda: rules.rmsprop(0.01, 0.9),
    "rmsprop_alpha": lambda: rules.rmsprop(0.01, 0.9, learn_gamma=False),
    "adam": lambda: rules.adam(0.01, 0.8, 0.95),
    "adam_baydin": lambda: rules.adam(0.01, 0.8, 0.95, learn_betas=False),
    "adam_log_alpha": lambda: rules.adam(0.01, 0.8, 0.95, log_alpha=True),
    "optax_adam": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.01, b1=0.8, b2=0.95),
    "optax_adamw": lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=0.01, weight_decay=0.1),
}
LEARN = {"optax_adam": ("learning_rate", "b1", "b2"), "optax_adamw": ("learning_rate", "weight_decay")}


@pytest.mark.parametrize("name", list(RULES_UNDER_TEST))
def test_hypergradient_matches_finite_differences(name):
    """At step t the hypergradient is d f_t(w_t) / d h, where
    w_t = w_{t−1} + U(g_{t−1}, s_{t−2}; h) with the previous inputs held fixed. We
    perturb each raw hyperparameter in that one update and measure f_t."""
    t = 4
    with float64():
        keys = jax.random.split(jax.random.PRNGKey(0), 6)
        params = {"w1": jax.random.normal(keys[0], (3, 5)), "b1": jnp.zeros(5),
                  "w2": jax.random.normal(keys[1], (5, 2)), "s": jnp.array(0.7)}
        batches = (jax.random.normal(keys[2], (t, 8, 3)), jax.random.normal(keys[3], (t, 8, 2)))
        batch = lambda i: jax.tree.map(lambda b: b[i], batches)
        rule = RULES_UNDER_TEST[name]()

        # the hypergradient minilopt reports at step t (hyper-step 0, so h stays put)
        opt = hyper.hyperoptimize(rule, by=optax.sgd(0.0), learn=LEARN.get(name))
        traj = jax.jit(lambda p, b: hyper.run(tiny_net_loss, p, opt, b))(params, batches)
        reported = jax.tree.map(lambda x: np.asarray(x[t - 1]), traj.hypergrads[0])

        # the same by finite differences: run the plain rule for t − 2 steps ...
        w, s = params, rule.init(params)
        for i in range(t - 2):
            updates, s = rule.update(jax.grad(tiny_net_loss)(w, batch(i)), s, w)
            w = optax.apply_updates(w, updates)
        g_prev = jax.grad(tiny_net_loss)(w, batch(t - 2))

        def loss_after_step(h):  # ... then perturb h in step t − 1 only, and measure f_t
            updates, _ = rule.update(g_prev, s._replace(hyperparams={**s.hyperparams, **h}), w)
            return tiny_net_loss(optax.apply_updates(w, updates), batch(t - 1))

        h0 = {k: s.hyperparams[k] for k in reported}
        flat, unravel = jax.flatten_util.ravel_pytree(h0)
        eps = 1e-6
        fd = np.array([(loss_after_step(unravel(flat + eps * e)) - loss_after_step(unravel(flat - eps * e))) / (2 * eps)
                       for e in np.eye(flat.size)])
        ours = np.asarray(jax.flatten_util.ravel_pytree(reported)[0])
        assert np.all(np.abs(fd) > 1e-8), f"{name}: a zero hypergradient would make this check vacuous"
        np.testing.assert_allclose(ours, fd, rtol=1e-6, atol=1e-10, err_msg=name)


@settings(max_examples=30, deadline=None)
@given(old=hnp.arrays(np.float64, 6, elements=st.floats(-3, 3)), new=hnp.arrays(np.float64, 6, elements=st.floats(-3, 3)),
       beta=st.floats(0.01, 0.999), cotangent=hnp.arrays(np.float64, 6, elements=st.floats(-1, 1)))
def test_moving_average_derivatives_are_the_closed_form(old, new, beta, cotangent):
    """ema = β·old + (1 − β)·new has ∂/∂β = old − new, ∂/∂old = β, ∂/∂new = 1 − β.
    fast.ema, which the rules run, takes the β-derivative from its output, (ema − new)/β:
    the same number, in forward and in reverse mode (which transposes that rule)."""
    with float64():
        args = tuple(map(jnp.asarray, (old, new, beta)))
        d_beta = jax.jvp(fast.ema, args, (jnp.zeros(6), jnp.zeros(6), jnp.ones(())))[1]
        np.testing.assert_allclose(d_beta, old - new, rtol=1e-12, atol=1e-12)
        d_old, d_new, d_b = jax.grad(lambda *a: jnp.sum(cotangent * fast.ema(*a)), argnums=(0, 1, 2))(*args)
        np.testing.assert_allclose(d_old, beta * cotangent, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(d_new, (1 - beta) * cotangent, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(d_b, np.sum(cotangent * (old - new)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_first_step_hypergradient_is_exactly_zero_and_hyper_levels_still_step(mode):
    # forward mode has no first-step flag: its tangents start at zero; reverse mode masks
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    g = {"w": jnp.array([0.5, 0.25, -1.0])}
    for opt in [hyper.stack(rules.adam(0.01), rules.sgd(1e-2), mode=mode),
                hyper.stack(rules.sgd(0.1), rules.adam(0.01), mode=mode),
                hyper.stack(rules.rmsprop(0.01), rules.sgd(1e-3), rules.adam(1e-3), mode=mode)]:
        state = opt.init(params)
        before = hyper.hyperparams(state)
        _, state = opt.update(g, state, params)
        for hg in hyper.hypergrads(state):
            for leaf in jax.tree.leaves(hg):
                assert np.asarray(leaf) == 0.0
        assert jax.tree.map(float, hyper.hyperparams(state)) == jax.tree.map(float, before)
    # the top Adam counted that zero step (the paper's semantics): its count is 1
    top = state.by.by
    assert int(top.count) == 1
    _, state = opt.update(g, state, params)
    assert any(np.asarray(leaf) != 0 for leaf in jax.tree.leaves(hyper.hypergrads(state)[0]))
