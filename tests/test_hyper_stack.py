"""The stack as an optax transformation: faults, bad input, jit/scan/vmap, pytrees, read-outs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import hyper
from minilopt.hyper import rules
from helpers import float64


def quadratic(params, x):
    return 0.5 * jnp.sum((params["w"] - x) ** 2 * jnp.arange(1.0, 5.0))


XS = jax.random.normal(jax.random.PRNGKey(1), (30, 4)) * 0.1
W0 = {"w": jnp.ones(4)}


# ---- non-finite hypergradients --------------------------------------------------------

@pytest.mark.parametrize("g1, g2, hypergrad", [
    ([1e20, 0.0], [1e20, 0.0], -np.inf),         # −⟨g2, g1⟩ overflows float32: -inf
    ([1e20, 1e20], [1e20, -1e20], np.nan),       # inf − inf: NaN
])
def test_nonfinite_hypergradient_keeps_hyperparameters_and_is_flagged(g1, g2, hypergrad):
    opt = hyper.stack(rules.sgd(0.1), rules.adam(0.01))
    params = jnp.zeros(2)
    state = opt.init(params)
    _, state = opt.update(jnp.array(g1), state, params)
    before = hyper.hyperparams(state)
    updates, state = opt.update(jnp.array(g2), state, params)
    np.testing.assert_equal(float(hyper.hypergrads(state)[0]["alpha"]), hypergrad)  # the raw value is read out
    assert int(state.nonfinite) == 1
    assert float(hyper.hyperparams(state)[0]["alpha"]) == float(before[0]["alpha"]) == pytest.approx(0.1)
    assert int(state.by.count) == 1  # the hyper-optimizer's state was kept too: it did not step
    np.testing.assert_allclose(updates, -0.1 * np.array(g2, np.float32), rtol=1e-6)  # finite, with the kept α
    # the next ordinary step goes on normally
    _, state = opt.update(jnp.array([1.0, 1.0]), state, params)
    assert int(state.nonfinite) == 1 and np.isfinite(float(hyper.hyperparams(state)[0]["alpha"]))


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_nonfinite_read_out_is_the_raw_hypergradient_of_each_hyperparameter(mode):
    # two learned scalars: α's hypergradient overflows, μ's is exactly 0 (μ is unused at the first step)
    opt = hyper.stack(rules.sgd(0.1, mu=0.5), rules.adam(0.01), mode=mode)
    params = jnp.zeros(2)
    state = opt.init(params)
    _, state = opt.update(jnp.array([1e20, 0.0]), state, params)
    _, state = opt.update(jnp.array([1e20, 0.0]), state, params)
    assert int(state.nonfinite) == 1
    np.testing.assert_equal({k: float(v) for k, v in hyper.hypergrads(state)[0].items()},
                            {"alpha": -np.inf, "mu": 0.0})


@pytest.mark.parametrize("mode, counted", [("forward", 1), ("reverse", 0)])
def test_nonfinite_gradient_at_the_first_step_keeps_hyperparameters(mode, counted):
    # forward mode's zero tangents times inf are NaN, so the step counts as skipped;
    # reverse mode masks the first hypergradient to 0 and steps on it
    opt = hyper.stack(rules.sgd(0.1), rules.adam(0.01), mode=mode)
    params = jnp.zeros(2)
    state = opt.init(params)
    _, state = opt.update(jnp.array([jnp.inf, 1.0]), state, params)
    assert int(state.nonfinite) == counted
    assert float(hyper.hyperparams(state)[0]["alpha"]) == pytest.approx(0.1)
    assert int(state.by.count) == 1 - counted


def test_overflowing_hyper_step_keeps_hyperparameters():
    opt = hyper.stack(rules.sgd(0.1), rules.sgd(1e30))  # κ·hypergradient overflows float32
    params = jnp.zeros(2)
    state = opt.init(params)
    _, state = opt.update(jnp.array([1e10, 0.0]), state, params)
    updates, state = opt.update(jnp.array([1e10, 0.0]), state, params)
    assert int(state.nonfinite) == 1
    assert float(hyper.hyperparams(state)[0]["alpha"]) == pytest.approx(0.1)
    assert np.all(np.isfinite(np.asarray(updates)))


def test_tower_that_blows_up_keeps_every_level_finite():
    # A hyper-step far too large: the weights diverge (a finite α can do that), but no
    # level ever takes a NaN or infinite hyperparameter.
    opt = hyper.stack(rules.sgd(0.1), rules.sgd(1e3), rules.sgd(1e3))
    traj = jax.jit(lambda p, x: hyper.run(quadratic, p, opt, x * 1e6))(W0, XS)
    for level in traj.hyperparams:
        for v in jax.tree.leaves(level):
            assert np.all(np.isfinite(np.asarray(v)))
    assert int(traj.state.nonfinite) + int(traj.state.by.nonfinite) > 0


# ---- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("make, words", [
    (lambda: rules.sgd(0.0), ["alpha", "> 0"]),
    (lambda: rules.sgd(-0.1), ["alpha", "> 0"]),
    (lambda: rules.sgd(0.1, mu=1.0), ["mu", "[0, 1)"]),
    (lambda: rules.sgd_per_param(-1.0), ["alpha"]),
    (lambda: rules.adagrad(-1e-3), ["alpha"]),
    (lambda: rules.rmsprop(0.01, gamma=1.0), ["gamma", "(0, 1)"]),
    (lambda: rules.rmsprop(-0.01), ["alpha"]),
    (lambda: rules.adam(1e-3, beta1=0.0), ["beta1", "(0, 1)"]),
    (lambda: rules.adam(1e-3, beta2=1.5), ["beta2", "(0, 1)"]),
    (lambda: rules.adam(0.0), ["alpha"]),
    (lambda: hyper.stack(), ["at least one"]),
])
def test_bad_hyperparameters_raise_a_clear_value_error(make, words):
    with pytest.raises(ValueError) as err:
        make()
    for word in words:
        assert word in str(err.value)


def test_optax_optimizer_without_injected_hyperparameters_is_refused_with_the_fix():
    opt = hyper.hyperoptimize(optax.adam(1e-3), by=optax.sgd(1e-5))
    with pytest.raises(ValueError, match="inject_hyperparams"):
        opt.init(W0)


def test_learn_names_are_checked():
    inner = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    with pytest.raises(ValueError, match="'lr'.*learning_rate"):
        hyper.hyperoptimize(inner, by=optax.sgd(1e-5), learn="lr").init(W0)
    lookahead_like = optax.inject_hyperparams(lambda learning_rate, every: optax.sgd(learning_rate))(0.1, 3)
    with pytest.raises(ValueError, match="static"):
        hyper.hyperoptimize(lookahead_like, by=optax.sgd(1e-5), learn=("every",)).init(W0)
    no_lr = optax.inject_hyperparams(optax.scale)(step_size=-0.1)
    with pytest.raises(ValueError, match="step_size"):
        hyper.hyperoptimize(no_lr, by=optax.sgd(1e-5)).init(W0)


def test_sgd_per_param_alpha_tree_must_match():
    with pytest.raises(ValueError, match="one number per"):
        rules.sgd_per_param({"a": 0.1, "b": 0.2}).init({"w": jnp.ones(2)})


# ---- jit, scan, vmap, pytrees, chains ------------------------------------------------

def test_vmap_over_initial_alpha_matches_separate_runs():
    alphas = jnp.array([0.01, 0.1, 0.3])
    final = lambda a: hyper.run(quadratic, W0, hyper.stack(rules.adam(a), rules.sgd(1e-3)), XS).loss
    swept = jax.jit(jax.vmap(final))(alphas)
    for i, a in enumerate([0.01, 0.1, 0.3]):
        np.testing.assert_allclose(swept[i], jax.jit(final)(a), rtol=1e-5, atol=1e-7)


def test_any_pytree_and_dtype_preserved():
    params = {"scalar": jnp.array(1.5), "layers": [jnp.ones((2, 3)), jnp.zeros(3)],
              "conv": jnp.ones((3, 3, 2, 4))}
    loss = lambda p, x: sum(jnp.sum((leaf - x) ** 2) for leaf in jax.tree.leaves(p))
    for opt in [hyper.stack(rules.sgd_per_param(0.1), rules.sgd(1e-3)),
                hyper.stack(rules.rmsprop(0.01), rules.adam(1e-3), rules.sgd(1e-4))]:
        traj = jax.jit(lambda p, x: hyper.run(loss, p, opt, x))(params, jnp.linspace(0, 1, 10))
        assert jax.tree.structure(traj.params) == jax.tree.structure(params)
        assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(traj.params), jax.tree.leaves(params)))
        assert traj.loss[-1] < traj.loss[0]
    per_param = hyper.stack(rules.sgd_per_param(0.1), rules.sgd(1e-3))
    alphas = hyper.hyperparams(per_param.init(params))[0]["alpha"]
    assert jax.tree.structure(alphas) == jax.tree.structure(params)


def test_bfloat16_weights_stay_bfloat16():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    opt = hyper.stack(rules.adam(0.01), rules.sgd(1e-3))
    state = opt.init(params)
    assert hyper.hyperparams(state)[0]["alpha"].dtype == jnp.float32  # never below float32
    updates, state = opt.update({"w": jnp.ones(4, jnp.bfloat16)}, state, params)
    updates, state = opt.update({"w": jnp.ones(4, jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16


def test_works_first_in_an_optax_chain_and_read_outs_find_the_levels():
    opt = optax.chain(hyper.stack(rules.sgd(0.1), rules.sgd(1e-3)), optax.clip(1.0))
    traj = jax.jit(lambda p, x: hyper.run(quadratic, p, opt, x))(W0, XS)
    assert len(traj.hyperparams) == 2 and traj.hyperparams[0]["alpha"].shape == (30,)
    assert float(traj.hyperparams[0]["alpha"][-1]) != pytest.approx(0.1)
    assert traj.loss[-1] < traj.loss[0]


def test_read_outs_are_values_or_raw():
    state = hyper.stack(rules.rmsprop(0.04, 0.9), rules.adam(1e-3, 0.8, 0.99)).init(W0)
    values, raw = hyper.hyperparams(state), hyper.hyperparams(state, raw=True)
    assert values[0]["alpha"] == pytest.approx(0.04) and raw[0]["sqrt_alpha"] == pytest.approx(0.2)
    assert values[0]["gamma"] == pytest.approx(0.9) and raw[0]["atanh_gamma"] == pytest.approx(np.arctanh(0.8))
    assert values[1] == pytest.approx({"alpha": 1e-3, "beta1": 0.8, "beta2": 0.99})
    assert len(hyper.hypergrads(state)) == 1


def test_hyperoptimizing_a_hyperoptimized_optax_optimizer():
    # Adam (optax) / SGD (optax) / Adam (optax): any optax optimizer at every level
    adam = optax.inject_hyperparams(optax.adam)
    sgd = optax.inject_hyperparams(optax.sgd)
    opt = hyper.hyperoptimize(adam(learning_rate=0.05), by=hyper.hyperoptimize(sgd(learning_rate=1e-3),
                                                                               by=optax.adam(1e-4)))
    traj = jax.jit(lambda p, x: hyper.run(quadratic, p, opt, x))(W0, XS)
    assert len(traj.hyperparams) == 2
    assert np.ptp(np.asarray(traj.hyperparams[1]["learning_rate"])) > 0  # level 2 moved
    assert traj.loss[-1] < traj.loss[0]


def test_weights_are_stored_only_where_reverse_mode_reads_them():
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    assert hyper.hyperoptimize(adamw, by=optax.sgd(1e-5), mode="reverse").init(W0).prev_params is not None
    assert hyper.hyperoptimize(rules.adam(1e-3), by=optax.sgd(1e-5), mode="reverse").init(W0).prev_params is None
    forward = hyper.hyperoptimize(adamw, by=optax.sgd(1e-5), mode="forward").init(W0)
    # forward mode stores no inputs at all, only its tangents
    assert isinstance(forward, hyper.ForwardState) and not isinstance(forward, hyper.ReverseState)
    assert not {"prev_params", "prev_grads", "prev_inner"} & {f.name for f in dataclasses.fields(forward)}
    assert len(forward.tangents) == 1  # one tangent: only the learning rate is learned


def test_auto_mode_stores_the_smaller_of_tangents_and_yesterdays_inputs():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    adam = hyper.hyperoptimize(rules.adam(1e-3), by=optax.sgd(1e-5)).init(params)
    assert isinstance(adam, hyper.ForwardState) and len(adam.tangents) == 3  # α, β1, β2: 3 tangents vs g, m, v
    per_leaf = hyper.hyperoptimize(rules.sgd_per_param(1e-3), by=optax.sgd(1e-5)).init(params)
    assert isinstance(per_leaf, hyper.ReverseState) and per_leaf.prev_grads is not None  # 2 tangents vs 1 gradient
    with pytest.raises(ValueError, match="mode must be one of"):
        hyper.hyperoptimize(rules.adam(1e-3), by=optax.sgd(1e-5), mode="backward")


@pytest.mark.parametrize("make", [
    lambda mode: hyper.stack(rules.adam(1e-2), rules.sgd(1e-3), mode=mode),
    lambda mode: hyper.stack(rules.sgd(1e-2, 0.5), rules.sgd(1e-3), rules.adam(1e-4), mode=mode),
    lambda mode: hyper.stack(rules.rmsprop(1e-2), rules.adagrad(1e-3), mode=mode),
    lambda mode: hyper.stack(rules.sgd_per_param(1e-2), rules.sgd(1e-3), mode=mode),
    lambda mode: hyper.hyperoptimize(optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2),
                                     by=optax.adam(1e-3), mode=mode),
], ids=["adam/sgd", "sgd-momentum/sgd/adam", "rmsprop/adagrad", "per-leaf sgd/sgd", "optax adamw/adam"])
def test_forward_mode_computes_the_same_hypergradients_as_reverse_mode(make):
    # Two different computations of ⟨g_t, ∂U_{t−1}/∂h⟩ (jvp at the update vs vjp a step
    # later) must agree to float64 rounding, on a tree with a matrix and a vector leaf.
    with float64():
        params = {"w": jax.random.normal(jax.random.PRNGKey(0), (5, 4)), "b": jnp.zeros(4)}
        xs = jax.random.normal(jax.random.PRNGKey(1), (25, 3, 5))

        def loss(p, x):
            return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

        fwd, rev = (jax.jit(lambda p, x, m=m: hyper.run(loss, p, make(m), x, raw=True))(params, xs)
                    for m in ("forward", "reverse"))
        np.testing.assert_allclose(fwd.loss, rev.loss, rtol=1e-12)
        assert any(np.ptp(np.asarray(x)) > 0 for x in jax.tree.leaves(rev.hyperparams[0]))  # level 1 moved
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15),
                     fwd.hyperparams, rev.hyperparams)


def test_log_alpha_stays_positive_where_the_paper_goes_negative():
    # A large hyper-step on a noisy problem drives the paper's α below zero.
    noisy = jax.random.normal(jax.random.PRNGKey(3), (60, 4)) * 3.0
    plain = hyper.stack(rules.sgd(0.05), rules.sgd(0.05))
    logged = hyper.stack(rules.sgd(0.05, log_alpha=True), rules.sgd(0.05))
    alpha_plain = jax.jit(lambda p, x: hyper.run(quadratic, p, plain, x))(W0, noisy).hyperparams[0]["alpha"]
    alpha_log = jax.jit(lambda p, x: hyper.run(quadratic, p, logged, x))(W0, noisy).hyperparams[0]["alpha"]
    assert np.min(alpha_plain) < 0
    assert np.all(np.asarray(alpha_log) > 0)


def test_trajectory_on_a_task():
    from minilopt import tasks

    task = tasks.digits_logreg()
    traj = hyper.trajectory(task, hyper.stack(rules.sgd(0.05), rules.sgd(1e-3)), steps=40, key=jax.random.PRNGKey(0))
    assert traj.loss.shape == (40,) and traj.hyperparams[0]["alpha"].shape == (40,)
    assert float(traj.hyperparams[0]["alpha"][-1]) > 0.05  # on a fresh logistic regression α grows
    assert float(traj.loss[-5:].mean()) < float(traj.loss[:5].mean())


def test_per_hyperparameter_hyper_steps_with_a_per_leaf_sgd_level():
    # one hyper-step size per hyperparameter: a per-leaf SGD level above Adam
    steps = {"alpha": 1e-4, "atanh_beta1": 1e-2, "atanh_beta2": 1e-3}
    opt = hyper.stack(rules.adam(0.01), rules.sgd_per_param(steps))
    params = jnp.zeros(3)
    state = opt.init(params)
    # three steps: after Adam's first step the bias correction makes beta1's derivative exactly 0
    for g in ([1.0, -2.0, 0.5], [0.5, -1.0, 1.5], [0.7, -0.2, 1.0]):
        before = hyper.hyperparams(state, raw=True)[0]
        _, state = opt.update(jnp.array(g), state, params)
    after, hg = hyper.hyperparams(state, raw=True)[0], hyper.hypergrads(state)[0]
    for name, kappa in steps.items():
        assert float(hg[name]) != 0.0
        np.testing.assert_allclose(after[name] - before[name], -kappa * hg[name], rtol=1e-4, atol=1e-6)
