"""The per-parameter MLP learned optimizer, checked against facts computed by hand in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import tasks, train
from minilopt.lopt.mlp import MLPLOpt, clean_gradient, num_meta_parameters

T = 10
PARAMS = {"w": jnp.array([[0.5, -1.0, 2.0], [0.1, 0.0, -0.3]]), "b": jnp.array([0.2, -0.4]), "s": jnp.array(1.5)}
GRADS = {"w": jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]), "b": jnp.array([-0.5, 0.25]), "s": jnp.array(-2.0)}


def np_normalise(x, eps=1e-5):
    """Per channel (last axis), over every element of the tensor."""
    axes = tuple(range(x.ndim - 1))
    return x / np.sqrt(eps + np.mean(x ** 2, axis=axes, keepdims=True))


def np_channels(g, p, ms, v, rms_eps=1e-8):
    """The 13 channels written out from the docstring, in order."""
    inv = 1.0 / np.sqrt(v + rms_eps)
    cols = [g, p, *ms, v, *[m * inv for m in ms], inv, g * inv]
    return np.stack(cols, axis=-1)


def one_hot_theta(lopt, d_channel, mu_time_index, mu_scale):
    """hidden=(2,): unit 0 = relu(channel `d_channel`), unit 1 = relu(1 + time feature k).
    d = unit 0, μ = mu_scale · unit 1."""
    n = lopt.num_inputs
    w0 = np.zeros((n, 2), np.float32)
    w0[lopt.channel_names.index(d_channel), 0] = 1.0
    w0[len(lopt.channel_names) + mu_time_index, 1] = 1.0
    b0 = np.array([0.0, 1.0], np.float32)
    w1 = np.array([[1.0, 0.0], [0.0, mu_scale]], np.float32)
    return {"layer_0": {"w": jnp.asarray(w0), "b": jnp.asarray(b0)},
            "layer_1": {"w": jnp.asarray(w1), "b": jnp.zeros(2)}}


def test_channels_match_hand_formula_and_are_normalised_per_tensor():
    lopt = MLPLOpt()
    rng = np.random.default_rng(0)
    g, p = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    ms = [rng.normal(size=(4, 3)) for _ in lopt.momentum_decays]
    v = rng.uniform(0.1, 2.0, size=(4, 3))
    got = lopt.parameter_channels(g, p, jnp.stack(ms, -1), v[..., None])
    np.testing.assert_allclose(got, np_channels(g, p, ms, v), rtol=1e-5)
    normed = np.asarray(lopt.normalise(got))
    # invariant: every channel has mean square 1 (up to eps) over the tensor
    np.testing.assert_allclose(np.mean(normed ** 2, axis=(0, 1)), 1.0, rtol=1e-3)
    # ... and normalising is blind to a positive rescaling of any one channel
    scaled = np.asarray(got) * rng.uniform(0.5, 50.0, size=got.shape[-1])
    np.testing.assert_allclose(lopt.normalise(jnp.asarray(scaled)), normed, rtol=1e-3, atol=1e-5)


def test_time_features_at_start_and_end():
    lopt = MLPLOpt(fractions=(0.0, 0.25, 0.5, 1.0))
    tau = np.array(lopt.fractions)
    np.testing.assert_allclose(lopt.time_features(0, T), np.tanh(-10 * tau), rtol=1e-6)
    np.testing.assert_allclose(lopt.time_features(T, T), np.tanh(10 * (1 - tau)), rtol=1e-6)
    np.testing.assert_allclose(lopt.time_features(T // 2, T), np.tanh(10 * (0.5 - tau)), atol=1e-6)


@pytest.mark.parametrize("channel", ["g", "m0.5"])
def test_step_equals_d_exp_mu_c1_c2_for_a_hand_set_theta(channel):
    """Three updates; with one-hot weights d and μ are readable off the inputs, and
    Δ = d·exp(μ·c1)·c2 is computed here in numpy from the accumulator recurrences."""
    lopt = MLPLOpt(hidden=(2,), step_mult=0.01, exp_mult=0.5, fractions=(0.1, 0.5, 0.9))
    k, scale = 2, 1.5   # μ reads the τ = 0.9 feature, so μ changes most near the end
    opt = lopt.optimizer(one_hot_theta(lopt, channel, k, scale), num_steps=2)
    state = opt.init(PARAMS)
    ms = {n: [np.zeros_like(np.asarray(x)) for _ in lopt.momentum_decays] for n, x in PARAMS.items()}
    update = jax.jit(opt.update)
    for t in range(3):   # the third update is at t = T = 2
        grads = jax.tree.map(lambda g: (t + 1.0) * g, GRADS)
        updates, state = update(grads, state, PARAMS)
        time = np.tanh(10 * (t / 2 - np.array(lopt.fractions)))
        for name, p in PARAMS.items():
            g = np.asarray(grads[name], np.float64)
            ms[name] = [b * m + (1 - b) * g for b, m in zip(lopt.momentum_decays, ms[name])]
            x = {"g": g, "m0.5": ms[name][0]}[channel]
            x = x / np.sqrt(1e-5 + np.mean(x ** 2))
            d = np.maximum(x, 0.0)
            mu = scale * max(1.0 + time[k], 0.0)
            np.testing.assert_allclose(updates[name], -d * np.exp(mu * 0.5) * 0.01, rtol=2e-5, atol=1e-9)
    assert int(state.count) == 3


def test_init_is_per_tensor_normalised_momentum():
    lopt = MLPLOpt(step_mult=0.01)
    opt = lopt.optimizer(lopt.init(jax.random.key(3)), num_steps=100)
    state, update = opt.init(PARAMS), jax.jit(opt.update)
    m = {n: np.zeros(np.shape(p)) for n, p in PARAMS.items()}
    for t in range(4):
        grads = jax.tree.map(lambda g: g * (-1.0) ** t + 0.1 * t, GRADS)
        updates, state = update(grads, state, PARAMS)
        for name in PARAMS:
            m[name] = 0.9 * m[name] + 0.1 * np.asarray(grads[name])
            expected = -0.01 * m[name] / np.sqrt(1e-5 + np.mean(m[name] ** 2))
            np.testing.assert_allclose(updates[name], expected, rtol=1e-4, atol=1e-8)


def test_zero_gradients_give_zero_updates_and_state_shapes():
    lopt = MLPLOpt()
    opt = lopt.optimizer(lopt.init(jax.random.key(0)), num_steps=T)
    state = opt.init(PARAMS)
    for name, p in PARAMS.items():
        assert state.momentum[name].shape == p.shape + (4,) and state.rms[name].shape == p.shape + (1,)
        assert state.momentum[name].dtype == jnp.float32
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, state = opt.update(zeros, state, PARAMS)
    for name in PARAMS:
        np.testing.assert_array_equal(updates[name], 0.0)
        np.testing.assert_array_equal(state.momentum[name], 0.0)
    assert int(state.count) == 1


def test_gradient_scale_invariance():
    """With negligible epsilons, every channel is rescaled by a power of c when g → c·g
    (p is untouched), so after normalisation the update is unchanged."""
    lopt = MLPLOpt(eps=1e-30, rms_eps=1e-30)
    theta = jax.tree.map(lambda w: w + 0.3, lopt.init(jax.random.key(1)))   # make every unit count
    opt = lopt.optimizer(theta, num_steps=T)

    def two_steps(c):
        state = opt.init(PARAMS)
        for t in range(2):
            updates, state = opt.update(jax.tree.map(lambda g: c * g * (t + 1), GRADS), state, PARAMS)
        return updates

    base = two_steps(1.0)
    for c in (1e-3, 40.0):
        for name in PARAMS:
            np.testing.assert_allclose(two_steps(c)[name], base[name], rtol=2e-4, atol=1e-9)


def test_clean_gradient():
    g = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1e30, -3.0, 0.5])
    np.testing.assert_array_equal(clean_gradient(g), [0.0, 1000.0, -1000.0, 1000.0, -3.0, 0.5])


def test_meta_gradient_matches_finite_differences():
    """The loss after a short unroll is differentiable in theta: jax.grad agrees with
    central differences along a random direction of the output layer."""
    lopt = MLPLOpt(step_mult=0.05)
    theta = lopt.init(jax.random.key(0))
    task = tasks.quadratic(dim=6, condition=10.0)

    def meta_loss(theta):
        opt = lopt.optimizer(theta, num_steps=5)
        params = {"x": jnp.linspace(-1.0, 1.0, 6)}
        state = opt.init(params)
        for _ in range(5):
            g = jax.grad(task.loss)(params, task.center[None])
            u, state = opt.update(g, state, params)
            params = optax.apply_updates(params, u)
        return task.loss(params, task.center[None])

    grad = jax.jit(jax.grad(meta_loss))(theta)
    direction = jax.random.normal(jax.random.key(1), theta["layer_1"]["w"].shape)
    shift = lambda s: {**theta, "layer_1": {**theta["layer_1"], "w": theta["layer_1"]["w"] + s * direction}}
    f = jax.jit(lambda s: meta_loss(shift(s)))
    h = 1e-2
    fd = (float(f(h)) - float(f(-h))) / (2 * h)
    analytic = float(jnp.vdot(grad["layer_1"]["w"], direction))
    assert abs(analytic) > 1e-4
    np.testing.assert_allclose(analytic, fd, rtol=2e-2)


def test_trains_inside_fit_and_chain_and_vmaps_over_thetas():
    lopt = MLPLOpt(step_mult=0.02)
    theta = lopt.init(jax.random.key(0))
    task = tasks.quadratic(dim=8, condition=10.0)
    opt = optax.chain(lopt.optimizer(theta, num_steps=60), optax.clip_by_global_norm(1.0))
    result = train.fit(task, opt, 60, jax.random.key(1))
    assert result.stopped_at is None
    assert result.train_loss[-1] < 0.2 * result.train_loss[0]

    thetas = jax.tree.map(lambda x: jnp.stack([x, 2.0 * x]), theta)

    def one(theta):
        opt = lopt.optimizer(theta, num_steps=60)
        return opt.update(GRADS, opt.init(PARAMS), PARAMS)[0]

    batched = jax.jit(jax.vmap(one))(thetas)
    for i in range(2):
        single = one(jax.tree.map(lambda x: x[i], thetas))
        for name in PARAMS:
            np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-5, atol=1e-9)


def test_size_and_bad_input():
    lopt = MLPLOpt()
    theta = lopt.init(jax.random.key(0))
    # 13 channels + 5 time features → 32 → 2: a few hundred meta-parameters
    assert lopt.num_inputs == 18
    assert num_meta_parameters(theta) == 18 * 32 + 32 + 32 * 2 + 2
    with pytest.raises(ValueError, match="num_steps"):
        lopt.optimizer(theta, num_steps=0)
    opt = lopt.optimizer(theta, num_steps=T)
    with pytest.raises(ValueError, match=r"\['n'\]"):
        opt.init({"n": jnp.arange(3), "x": jnp.ones(3)})
    with pytest.raises(ValueError, match="parameters"):
        opt.update(GRADS, opt.init(PARAMS))
    with pytest.raises(ValueError, match="0.9"):
        MLPLOpt(momentum_decays=(0.5, 0.99))
