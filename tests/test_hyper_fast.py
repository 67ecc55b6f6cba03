"""hyper.fast: each fast form equals its plain counterpart, in value and in derivative.

rules.ema, rules.adam_step and forward.dot_products are the formulas as written;
fast.ema, fast.adam_step and fast.dot_products are what the tower runs. Both are
checked here against each other and against numpy in float64, and a rule built on
the plain forms trains exactly like the shipped one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minilopt import hyper
from minilopt.hyper import fast, forward, rules

from helpers import float64

floats = st.floats(-3, 3, allow_subnormal=False)  # XLA flushes subnormals to zero


@settings(max_examples=30, deadline=None)
@given(old=hnp.arrays(np.float64, 5, elements=floats), new=hnp.arrays(np.float64, 5, elements=floats),
       beta=st.floats(0.01, 0.999), seed=st.integers(0, 2**16))
def test_ema_equals_the_plain_moving_average_in_value_and_every_derivative(old, new, beta, seed):
    with float64():
        args = tuple(map(jnp.asarray, (old, new, beta)))
        np.testing.assert_allclose(fast.ema(*args), beta * old + (1 - beta) * new, rtol=1e-14, atol=1e-14)
        rng = np.random.default_rng(seed)
        direction = (jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal()))
        _, want = jax.jvp(rules.ema, args, direction)
        _, got = jax.jvp(fast.ema, args, direction)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(m=hnp.arrays(np.float64, 4, elements=floats), v=hnp.arrays(np.float64, 4, elements=st.floats(1e-6, 9)),
       alpha=st.floats(1e-4, 1.0), n=st.integers(1, 50), b1=st.floats(0.5, 0.99), b2=st.floats(0.9, 0.9999))
def test_adam_step_equals_the_plain_formula_in_value_and_every_derivative(m, v, alpha, n, b1, b2):
    with float64():
        c1, c2, eps = 1 - b1 ** n, 1 - b2 ** n, 1e-8
        m_hat, v_hat = m / c1, v / c2
        args = tuple(map(jnp.asarray, (alpha, m, v, c1, c2)))
        want = -alpha * m_hat / (np.sqrt(v_hat) + eps)  # numpy, from the docstring
        np.testing.assert_allclose(rules.adam_step(*args, eps), want, rtol=1e-12, atol=1e-290)
        np.testing.assert_allclose(fast.adam_step(*args, eps), want, rtol=1e-12, atol=1e-290)
        for i in range(5):  # the derivative in each argument
            one = tuple(jnp.ones_like(a) if j == i else jnp.zeros_like(a) for j, a in enumerate(args))
            plain = jax.jvp(lambda *a: rules.adam_step(*a, eps), args, one)[1]
            fast_ = jax.jvp(lambda *a: fast.adam_step(*a, eps), args, one)[1]
            np.testing.assert_allclose(fast_, plain, rtol=1e-10, atol=1e-14)
        # the tangent in α is the direction itself: Δ / α
        np.testing.assert_allclose(jax.jvp(lambda a: fast.adam_step(a, *args[1:], eps), (args[0],),
                                           (jnp.ones(()),))[1], want / alpha, rtol=1e-12, atol=1e-290)


@pytest.mark.parametrize("sizes", [[3, 5], [700, 130, 1]])  # at most ROW elements, and more
def test_dot_products_equal_the_plain_ones_and_numpy(sizes):
    rng = np.random.default_rng(0)
    grads = {f"w{i}": rng.normal(size=(n,)).astype(np.float32) for i, n in enumerate(sizes)}
    tangents = tuple({k: rng.normal(size=g.shape).astype(np.float32) for k, g in grads.items()} for _ in range(3))
    want = [sum(float(np.sum(t[k].astype(np.float64) * grads[k])) for k in grads) for t in tangents]
    plain = np.asarray(jax.jit(lambda t, g: forward.dot_products(t, g, jnp.float32))(tangents, grads))
    got = np.asarray(jax.jit(lambda t, g: fast.dot_products(t, g, jnp.float32))(tangents, grads))
    tree = np.asarray(jax.jit(lambda t, g: fast._row_sum_dots(t, g, jnp.float32))(tangents, grads))
    for x in (plain, got, tree):
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_a_tower_on_the_plain_forms_follows_the_shipped_one(mode):
    with float64():
        params = {"w": jax.random.normal(jax.random.PRNGKey(0), (6, 3)), "b": jnp.zeros(3)}
        xs = jax.random.normal(jax.random.PRNGKey(1), (20, 4, 6))
        loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)  # noqa: E731
        shipped = jax.jit(lambda p, x: hyper.run(loss, p, hyper.stack(rules.adam(1e-2), rules.sgd(1e-3),
                                                                      mode=mode), x))(params, xs)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fast, "ema", rules.ema)
            patch.setattr(fast, "adam_step", rules.adam_step)
            patch.setattr(fast, "dot_products", forward.dot_products)
            plain = jax.jit(lambda p, x: hyper.run(loss, p, hyper.stack(rules.adam(1e-2), rules.sgd(1e-3),
                                                                        mode=mode), x))(params, xs)
        np.testing.assert_allclose(plain.loss, shipped.loss, rtol=1e-12)
        assert np.ptp(np.asarray(shipped.hyperparams[0]["beta1"])) > 0  # β1 moved
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15),
                     plain.hyperparams, shipped.hyperparams)
