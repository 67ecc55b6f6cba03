"""The L2L coordinate-wise LSTM optimizer, checked against the paper's formulas written in numpy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import tasks, train
from minilopt.lopt.lstm import LSTMLOpt, preprocess_gradient

PARAMS = {"w": jnp.array([[0.5, -1.0, 2.0], [0.1, 0.0, -0.3]]), "s": jnp.array(1.5)}
GRADS = {"w": jnp.array([[1.0, -2e-3, 0.5], [0.0, 3e-6, -1e-5]]), "s": jnp.array(-20.0)}


def random_theta(lopt, seed):
    """Every weight random (init zeroes the output layer), biases too."""
    theta = lopt.init(jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return treedef.unflatten([x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def np_preprocess(g, p=10.0):
    """Andrychowicz et al. 2016, appendix A, one scalar at a time."""
    if abs(g) >= math.exp(-p):
        return [math.log(abs(g)) / p, math.copysign(1.0, g)]
    return [-1.0, math.exp(p) * g]


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm_optimizer_step(theta, g, states, output_scale=0.1):
    """One coordinate: preprocess, two LSTM cells (gates i, g, f, o; forget bias 1), output."""
    x = np.array(np_preprocess(g))
    new_states = []
    for i, (h, c) in enumerate(states):
        w, b = np.asarray(theta[f"lstm_{i}"]["w"], np.float64), np.asarray(theta[f"lstm_{i}"]["b"], np.float64)
        z = np.concatenate([x, h]) @ w + b
        zi, zg, zf, zo = np.split(z, 4)
        c = np_sigmoid(zf + 1.0) * c + np_sigmoid(zi) * np.tanh(zg)
        h = np_sigmoid(zo) * np.tanh(c)
        new_states.append((h, c))
        x = h
    out = x @ np.asarray(theta["output"]["w"], np.float64)[:, 0] + float(theta["output"]["b"][0])
    return output_scale * out, new_states


def test_preprocessing_closed_form():
    e = math.exp
    g = jnp.array([1.0, -e(-5.0), e(2.0), e(-11.0), 0.0, -3e-6])
    expected = [[0.0, 1.0], [-0.5, -1.0], [0.2, 1.0], [-1.0, e(-1.0)], [-1.0, 0.0], [-1.0, -3e-6 * e(10.0)]]
    np.testing.assert_allclose(preprocess_gradient(g), expected, rtol=1e-5, atol=1e-7)
    # with p = 5 the threshold moves to e^-5
    np.testing.assert_allclose(preprocess_gradient(jnp.array(e(-6.0)), p=5.0), [-1.0, e(-1.0)], rtol=1e-5)


def test_preprocessing_is_continuous_at_the_threshold():
    threshold = math.exp(-10.0)
    for sign in (1.0, -1.0):
        below = preprocess_gradient(jnp.array(sign * threshold * (1 - 1e-4)))
        above = preprocess_gradient(jnp.array(sign * threshold * (1 + 1e-4)))
        np.testing.assert_allclose(below, above, atol=2e-4)
        np.testing.assert_allclose(above, [-1.0, sign], atol=2e-4)


def test_preprocessing_gradient_is_finite_at_zero():
    grad = jax.grad(lambda g: preprocess_gradient(g).sum())(jnp.array(0.0))
    assert np.isfinite(grad) and grad == pytest.approx(math.exp(10.0), rel=1e-5)


def test_three_updates_match_a_numpy_lstm_per_coordinate():
    lopt = LSTMLOpt()
    theta = random_theta(lopt, 0)
    opt = lopt.optimizer(theta, num_steps=3)
    state, update = opt.init(PARAMS), jax.jit(opt.update)
    zero = [(np.zeros(20), np.zeros(20)) for _ in range(2)]
    np_states = {name: {i: zero for i in np.ndindex(np.shape(p))} for name, p in PARAMS.items()}
    for t in range(3):
        grads = jax.tree.map(lambda g: g * (1.0 + t) * (-1) ** t, GRADS)
        updates, state = update(grads, state, PARAMS)
        for name in PARAMS:
            g = np.asarray(grads[name], np.float64)
            for idx in np.ndindex(g.shape):
                expected, np_states[name][idx] = np_lstm_optimizer_step(theta, float(g[idx]), np_states[name][idx])
                np.testing.assert_allclose(updates[name][idx], expected, rtol=1e-4, atol=1e-6)
    h_layer1 = state.hidden["w"][1][0]
    np.testing.assert_allclose(h_layer1[1, 2], np_states["w"][(1, 2)][1][0], rtol=1e-4, atol=1e-6)
    assert int(state.count) == 3


def test_fresh_optimizer_does_nothing_and_state_shapes():
    lopt = LSTMLOpt(hidden=7, layers=3)
    opt = lopt.optimizer(lopt.init(jax.random.key(0)), num_steps=10)
    state = opt.init(PARAMS)
    for name, p in PARAMS.items():
        assert len(state.hidden[name]) == 3
        for h, c in state.hidden[name]:
            assert h.shape == c.shape == p.shape + (7,)
    updates, state = opt.update(GRADS, state, PARAMS)
    for name in PARAMS:
        np.testing.assert_array_equal(updates[name], 0.0)
    # ... yet its state moved, so the memory is there for meta-training to use
    assert float(jnp.abs(state.hidden["w"][0][1]).max()) > 0


def test_coordinatewise_and_shared_across_tensors():
    """Weights are shared and coordinates never interact: permuting the coordinates
    permutes the updates, and the same gradient history gives the same update in any tensor."""
    lopt = LSTMLOpt()
    opt = lopt.optimizer(random_theta(lopt, 4), num_steps=5)
    g = jnp.array([0.3, -2.0, 1e-6, 0.0, 5.0, -0.01])
    perm = np.array([3, 0, 5, 1, 4, 2])
    params = {"a": jnp.zeros(6), "b": jnp.zeros((2, 3)), "c": jnp.zeros(6)}
    state = opt.init(params)
    for t in range(2):
        grads = {"a": g * (t + 1), "b": (g * (t + 1)).reshape(2, 3), "c": g[perm] * (t + 1)}
        updates, state = opt.update(grads, state, params)
    np.testing.assert_allclose(updates["b"].reshape(-1), updates["a"], rtol=1e-6)
    np.testing.assert_allclose(updates["c"], updates["a"][perm], rtol=1e-6)
    assert np.unique(np.round(np.asarray(updates["a"]), 6)).size == 6


def test_memory_the_same_gradient_twice_gives_different_updates():
    lopt = LSTMLOpt()
    opt = lopt.optimizer(random_theta(lopt, 2), num_steps=5)
    state = opt.init(PARAMS)
    first, state = opt.update(GRADS, state, PARAMS)
    second, state = opt.update(GRADS, state, PARAMS)
    assert not np.allclose(first["w"], second["w"])


def test_trains_inside_fit_and_chain_and_vmaps_over_thetas():
    lopt = LSTMLOpt()
    theta = random_theta(lopt, 1)
    task = tasks.quadratic(dim=4)
    opt = optax.chain(lopt.optimizer(theta, num_steps=20), optax.clip_by_global_norm(1e-3))
    result = train.fit(task, opt, 20, jax.random.key(0))
    assert result.stopped_at is None
    # the clip bounds every step: the parameters moved at most 20 · 1e-3 in norm
    start = task.init(jax.random.split(jax.random.key(0))[0])
    assert 0 < float(jnp.linalg.norm(result.params["x"] - start["x"])) <= 20e-3 + 1e-6

    thetas = jax.tree.map(lambda *xs: jnp.stack(xs), theta, random_theta(lopt, 7))

    def one(theta):
        opt = lopt.optimizer(theta, num_steps=20)
        return opt.update(GRADS, opt.init(PARAMS), PARAMS)[0]

    batched = jax.jit(jax.vmap(one))(thetas)
    for i, seed in enumerate((1, 7)):
        single = one(random_theta(lopt, seed))
        for name in PARAMS:
            np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-5, atol=1e-8)


def test_bad_input():
    lopt = LSTMLOpt()
    theta = lopt.init(jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps"):
        lopt.optimizer(theta, num_steps=-3)
    opt = lopt.optimizer(theta, num_steps=4)
    with pytest.raises(ValueError, match=r"\['k'\]"):
        opt.init({"x": jnp.ones(2), "k": jnp.ones(2, jnp.int32)})
    with pytest.raises(ValueError, match="hidden"):
        LSTMLOpt(hidden=0)
