"""minilopt.guard: the loss guard (LGL2O) and the nominal descent term.

- a broken learned optimizer (zero, sign-flipped, NaN updates) on a quadratic: the guarded run
  ends no more than TOL above the fallback run, and every step's loss is no higher than the
  fallback's step would give from the same point;
- a perfect learned optimizer (the exact Newton step) is never overruled;
- the branch counts sum to the steps;
- nominal: Δ = Δ_learned + w·Δ_nominal exactly; w differentiable;
- hypothesis: any tree of leaves of rank 0-4, float32/bfloat16, poisoned gradients: shapes and
  dtypes kept, parameters never NaN;
- bad input: no loss_fn, no params, a non-scalar loss, a non-finite weight.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import poisoned_trees
from minilopt import guard, tasks, train
from minilopt.lopt.mlp import MLPLOpt

TASK = tasks.quadratic(dim=8, condition=50.0)          # noise 0: the loss is the same for every batch
BATCH = TASK.batch(jax.random.key(0))
LOSS = lambda p: TASK.loss(p, BATCH)                    # noqa: E731
STEPS = 150
TOL = 1e-6   # the guarded final loss may exceed the fallback's by at most this (absolute)


def scaled_sgd(lr):
    """SGD with any (also negative or zero) learning rate: a 'learned optimizer' we can break on purpose."""
    return optax.GradientTransformationExtraArgs(
        lambda p: optax.EmptyState(), lambda g, s, p=None, **kw: (jax.tree.map(lambda x: -lr * x, g), s))


def nan_updates():
    return optax.GradientTransformationExtraArgs(
        lambda p: optax.EmptyState(), lambda g, s, p=None, **kw: (jax.tree.map(lambda x: x * jnp.nan, g), s))


def newton():
    """The perfect learned optimizer on TASK: one Newton step lands on the minimiser."""
    def update(g, s, p=None, **kw):
        return {"x": -g["x"] / TASK.curvatures}, s
    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def run(opt, steps=STEPS):
    result = train.fit(TASK, opt, steps, jax.random.key(1))
    return result


@pytest.mark.parametrize("fallback", [optax.sgd(0.5), optax.adam(0.05)], ids=["sgd", "adam"])
@pytest.mark.parametrize("broken", ["zero", "sign-flipped", "nan", "too-big"])
def test_a_broken_learned_optimizer_never_ends_above_the_fallback(fallback, broken):
    learned = {"zero": scaled_sgd(0.0), "sign-flipped": scaled_sgd(-0.5), "nan": nan_updates(),
               "too-big": scaled_sgd(50.0)}[broken]
    guarded = run(guard.loss_guarded(learned, fallback, LOSS))
    alone = run(fallback)
    assert guarded.stopped_at is None
    assert guarded.train_loss[-1] <= alone.train_loss[-1] + TOL, (guarded.train_loss[-1], alone.train_loss[-1])
    assert guarded.train_loss[-1] < 1e-2 * guarded.train_loss[0]      # and it did train


def test_every_guarded_step_is_no_worse_than_the_fallback_step_from_the_same_point():
    """The rule itself, step by step: L(θ + Δ_guard) ≤ L(θ + Δ_fallback) with the fallback's own state."""
    learned, fallback = scaled_sgd(1.9), optax.sgd(0.5)     # 1.9 overshoots the stiff direction
    opt = guard.loss_guarded(learned, fallback, LOSS)
    params = TASK.init(jax.random.key(2))
    state = opt.init(params)
    for _ in range(30):
        g = jax.grad(LOSS)(params)
        d_fallback, _ = fallback.update(g, state.fallback, params)
        updates, state = opt.update(g, state, params)
        assert LOSS(optax.apply_updates(params, updates)) <= LOSS(optax.apply_updates(params, d_fallback)) + 1e-7
        params = optax.apply_updates(params, updates)
    counts = guard.branch_counts(state)
    assert int(counts["learned"]) > 0 and int(counts["fallback"]) > 0   # both branches were exercised


def test_a_perfect_learned_optimizer_is_never_overruled():
    opt = guard.loss_guarded(newton(), optax.adam(0.1), LOSS)
    params = TASK.init(jax.random.key(3))
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.update(jax.grad(LOSS)(p), s, p))
    for _ in range(20):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    assert guard.branch_counts(state) == {"learned": 20, "fallback": 0, "skipped": 0}
    np.testing.assert_allclose(params["x"], TASK.center, atol=1e-5)


def test_branch_counts_sum_to_the_steps_inside_a_chain_and_a_scan():
    opt = optax.chain(guard.loss_guarded(MLPLOpt().optimizer(MLPLOpt().init(jax.random.key(0)), 40),
                                         optax.sgd(0.3), LOSS), optax.clip(10.0))
    params = TASK.init(jax.random.key(4))

    def step(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(LOSS)(p), s, p, value=LOSS(p))
        return (optax.apply_updates(p, u), s), None

    (_, state), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=40))(params)
    counts = {k: int(v) for k, v in guard.branch_counts(state).items()}
    assert sum(counts.values()) == 40 and counts["skipped"] == 0


def test_neither_candidate_finite_means_no_step():
    opt = guard.loss_guarded(nan_updates(), nan_updates(), LOSS)
    params = TASK.init(jax.random.key(5))
    updates, state = opt.update(jax.grad(LOSS)(params), opt.init(params), params)
    assert np.all(np.asarray(updates["x"]) == 0) and int(state.skipped_steps) == 1


# ---- nominal ----------------------------------------------------------------------------

def test_nominal_adds_the_weighted_nominal_update_exactly():
    params = {"a": jnp.linspace(-1, 1, 6).reshape(2, 3), "b": jnp.array(0.5)}
    grads = jax.tree.map(lambda p: jnp.cos(3 * p) + 0.1, params)
    learned, nom = optax.sgd(0.1, momentum=0.9), optax.adam(0.01)
    opt = guard.nominal(learned, nom, weight=0.3)
    state, s_l, s_n = opt.init(params), learned.init(params), nom.init(params)
    for _ in range(3):
        u, state = opt.update(grads, state, params)
        ul, s_l = learned.update(grads, s_l, params)
        un, s_n = nom.update(grads, s_n, params)
        for k in params:
            np.testing.assert_allclose(u[k], ul[k] + 0.3 * un[k], rtol=1e-6, atol=1e-8)


def test_nominal_weight_is_differentiable_and_rescues_a_zero_learned_optimizer():
    def last_loss(opt):
        return train.make_run(TASK, opt, 50, eval_every=50)(jax.random.key(0), TASK.init(jax.random.key(1)))[0][-1]

    def final_loss(w):
        return last_loss(guard.nominal(scaled_sgd(0.0), optax.sgd(0.5), weight=w))

    # with a zero learned update, Δ = w · (−0.5 g): plain SGD at rate 0.5 w
    sgd_final = last_loss(optax.sgd(0.25))
    np.testing.assert_allclose(final_loss(0.5), sgd_final, rtol=1e-4)
    grad = jax.grad(final_loss)(0.5)
    fd = (final_loss(0.5 + 1e-3) - final_loss(0.5 - 1e-3)) / 2e-3
    assert grad < 0 and np.isclose(grad, fd, rtol=2e-2)


def test_with_nominal_is_a_learned_optimizer_with_the_weight_in_theta():
    lopt = guard.WithNominal(MLPLOpt(), nominal_fn=lambda: optax.sgd(0.1), init_weight=0.25)
    theta = lopt.init(jax.random.key(0))
    assert float(theta["nominal_weight"]) == 0.25
    params = TASK.init(jax.random.key(6))
    g = jax.grad(LOSS)(params)

    def first_update(w):
        opt = lopt.optimizer({**theta, "nominal_weight": w}, 10)
        return opt.update(g, opt.init(params), params)[0]["x"]

    # ∂Δ/∂w is the nominal update, −0.1 g
    np.testing.assert_allclose(jax.jacfwd(first_update)(0.25), -0.1 * g["x"], rtol=1e-5, atol=1e-8)


# ---- properties, as for the other optimizers ---------------------------------------------------

SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MLP = MLPLOpt()


@functools.cache  # on first use, not while collecting
def mlp_optimizer():
    return MLP.optimizer(MLP.init(jax.random.key(0)), 10)


def sum_of_squares(params):
    return sum(jnp.sum(jnp.square(jnp.asarray(p, jnp.float32))) for p in jax.tree.leaves(params))


WRAPPERS = {
    "guard(mlp, adam)": lambda: guard.loss_guarded(mlp_optimizer(), optax.adam(0.1), sum_of_squares),
    "guard(adam, sgd)": lambda: guard.loss_guarded(optax.adam(0.1), optax.sgd(0.1), sum_of_squares),
    "nominal(mlp, adam)": lambda: guard.nominal(mlp_optimizer(), optax.adam(0.1), 0.5),
    "nominal(sgd, adam)": lambda: guard.nominal(optax.sgd(0.1), optax.adam(0.1), 0.5),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
@SETTINGS
@given(tree=poisoned_trees())
def test_any_tree_keeps_shapes_and_dtypes_and_never_gets_nan(name, tree):
    params, grads = tree
    opt = WRAPPERS[name]()
    state = opt.init(params)
    update = jax.jit(opt.update)
    for step in range(2):          # the bad gradient enters the states, then is read back
        updates, state = update(grads, state, params, value=1.0)
        for key, p in params.items():
            assert updates[key].shape == p.shape and updates[key].dtype == p.dtype, key
        params = optax.apply_updates(params, updates)
        for key, p in params.items():
            assert p.dtype == tree[0][key].dtype
            assert not np.any(np.isnan(np.asarray(p, np.float32))), (key, step)


# ---- bad input ---------------------------------------------------------------------------------

def test_missing_loss_fn_names_the_argument():
    with pytest.raises(ValueError, match=r"loss_fn="):
        guard.loss_guarded(optax.sgd(0.1), optax.adam(0.1))
    with pytest.raises(ValueError, match=r"loss_fn=.*not a function"):
        guard.loss_guarded(optax.sgd(0.1), optax.adam(0.1), loss_fn=3.0)


def test_missing_params_and_non_scalar_loss_are_clear_errors():
    opt = guard.loss_guarded(optax.sgd(0.1), optax.adam(0.1), lambda p: p["x"] ** 2)
    params = {"x": jnp.ones(3)}
    with pytest.raises(ValueError, match="needs params"):
        opt.update(params, opt.init(params))
    with pytest.raises(ValueError, match="scalar"):
        opt.update(params, opt.init(params), params)


def test_branch_counts_of_another_state_is_a_clear_error():
    with pytest.raises(ValueError, match="loss_guarded"):
        guard.branch_counts(optax.adam(0.1).init({"x": jnp.ones(2)}))


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "big"])
def test_nominal_rejects_a_non_finite_weight(weight):
    with pytest.raises(ValueError, match="weight"):
        guard.nominal(optax.sgd(0.1), optax.adam(0.1), weight)
