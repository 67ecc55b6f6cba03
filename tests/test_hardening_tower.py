"""The tower refuses parameters and gradients it cannot handle, naming the leaf, and
never writes a non-finite value into the weights: a step with a non-finite gradient
is skipped (counted in `state.skipped`), so a run with such a step inserted follows
exactly the run without it."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import hyper
from minilopt.hyper import rules

MODES = ["forward", "reverse"]


def towers(mode):
    return {"adam/sgd": hyper.stack(rules.adam(0.01), rules.sgd(1e-4), mode=mode),
            "sgd/sgd/sgd": hyper.stack(rules.sgd(0.05, mu=0.5), rules.sgd(1e-4), rules.sgd(1e-6), mode=mode),
            "optax adam/sgd": hyper.hyperoptimize(optax.inject_hyperparams(optax.adam)(learning_rate=0.01),
                                                  by=optax.sgd(1e-4), mode=mode)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("params, leaf", [
    ({"w": jnp.arange(3)}, "['w']"),                          # would truncate the update
    ({"w": jnp.ones(3), "mask": jnp.array([True, False])}, "['mask']"),
    ({"z": jnp.ones(2, jnp.complex64)}, "['z']"),             # would lose the imaginary part
])
def test_parameters_that_are_not_real_floats_are_refused(mode, params, leaf):
    for opt in towers(mode).values():
        with pytest.raises(ValueError, match=rf"parameter leaf {re.escape(leaf)} has dtype"):
            opt.init(params)


@pytest.mark.parametrize("make", [rules.sgd, rules.sgd_per_param, rules.adagrad, rules.rmsprop, rules.adam])
def test_every_rule_refuses_integer_parameters(make):
    with pytest.raises(ValueError, match=r"parameter leaf \['n'\] has dtype int32"):
        make().init({"x": jnp.ones(2), "n": jnp.arange(2, dtype=jnp.int32)})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grads, words", [
    ({"w": jnp.ones((3, 1))}, r"gradient leaf \['w'\] has shape \(3, 1\)"),   # would broadcast to (3, 3)
    ({"v": jnp.ones(3)}, "tree structure"),
    ([jnp.ones(3)], "tree structure"),
    ({"w": jnp.ones(3, jnp.int32)}, r"gradient leaf \['w'\] has shape \(3,\) and dtype int32"),
])
def test_gradients_of_another_tree_or_shape_are_refused(mode, grads, words):
    params = {"w": jnp.ones(3)}
    for opt in towers(mode).values():
        state = opt.init(params)
        with pytest.raises(ValueError, match=words):
            opt.update(grads, state, params)


def test_nonfinite_initial_learning_rates_are_refused():
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(ValueError, match="alpha must be finite and > 0"):
            rules.sgd(bad)
        with pytest.raises(ValueError, match="alpha must be finite and > 0"):
            rules.adam(bad)


def quadratic_grad(w, x):
    return jax.grad(lambda w: 0.5 * jnp.sum((w["w"] - x) ** 2 * jnp.arange(1.0, 5.0)))(w)


def trajectory(opt, grads_at, steps):
    """Weights after each step; grads_at(i, w) gives the gradient of step i."""
    w = {"w": jnp.zeros(4)}
    state = opt.init(w)
    out = []
    for i in range(steps):
        u, state = opt.update(grads_at(i, w), state, w)
        w = optax.apply_updates(w, u)
        out.append(np.asarray(w["w"]))
    return np.stack(out), state


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("at", [0, 3])
def test_a_nonfinite_gradient_skips_the_step_exactly(mode, bad, at):
    """Inserting a step whose gradient holds NaN or inf leaves the weights as they
    were at that step, and every later step equal to the run without it."""
    target = jnp.array([1.0, -2.0, 3.0, 0.5])
    for name, opt in towers(mode).items():
        clean, clean_state = trajectory(opt, lambda i, w: quadratic_grad(w, target), 8)

        def with_bad(i, w):
            g = quadratic_grad(w, target)
            return {"w": g["w"].at[1].set(bad)} if i == at else g

        dirty, state = trajectory(opt, with_bad, 9)
        assert np.all(np.isfinite(dirty)), name
        before = dirty[at - 1] if at else np.zeros(4)
        np.testing.assert_array_equal(dirty[at], before, err_msg=name)  # no update at the bad step
        np.testing.assert_allclose(np.delete(dirty, at, axis=0), clean, rtol=1e-6, atol=1e-7, err_msg=name)
        assert int(state.skipped) == 1 and int(clean_state.skipped) == 0, name


def test_a_nonfinite_gradient_is_skipped_under_jit_and_scan():
    opt = hyper.stack(rules.adam(0.01), rules.sgd(1e-4))
    w = {"w": jnp.zeros(4)}
    gs = jnp.ones((6, 4)).at[2, 0].set(jnp.nan).at[4, 3].set(jnp.inf)

    def body(carry, g):
        w, s = carry
        u, s = opt.update({"w": g}, s, w)
        return (optax.apply_updates(w, u), s), w["w"]

    (w, state), _ = jax.jit(lambda w: jax.lax.scan(body, (w, opt.init(w)), gs))(w)
    assert np.all(np.isfinite(np.asarray(w["w"]))) and int(state.skipped) == 2
