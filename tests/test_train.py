"""fit and lr_sweep: closed forms, value= passing, clean stops, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import tasks, train

KEY = jax.random.key(0)


def test_sgd_on_a_quadratic_follows_the_closed_form():
    # x_{t+1} − c = (1 − lr·h)(x_t − c), so L_t = ½ Σ h (1 − lr·h)^{2t} (x_0 − c)²
    task = tasks.quadratic(dim=4, condition=10.0)
    x0 = {"x": jnp.zeros(4)}
    lr, steps = 0.5, 30
    result = train.fit(task, optax.sgd(lr), steps, KEY, params=x0, eval_every=10)
    h = np.asarray(task.curvatures, np.float64)
    t = np.arange(steps)[:, None]
    expected = 0.5 * np.sum(h * (1 - lr * h) ** (2 * t), axis=1)
    np.testing.assert_allclose(result.train_loss, expected, rtol=1e-4)
    np.testing.assert_array_equal(result.eval_steps, [0, 10, 20, 30])
    np.testing.assert_allclose(result.eval_loss[-1], 0.5 * np.sum(h * (1 - lr * h) ** (2 * steps)), rtol=1e-4)
    assert result.stopped_at is None


def test_the_loss_is_passed_as_value():
    # An "optimizer" that steps by the loss it is given: x ← x − 0.1·L(x)·1. If `value`
    # were missing or wrong, the trajectory below would not follow.
    def update(updates, state, params=None, *, value=None, **extra):
        return jax.tree.map(lambda g: -0.1 * value * jnp.ones_like(g), updates), state

    by_loss = optax.GradientTransformationExtraArgs(lambda p: (), update)
    task = tasks.quadratic(dim=3)
    result = train.fit(task, by_loss, 5, KEY, params={"x": jnp.zeros(3)})
    h, x, expected = np.asarray(task.curvatures, np.float64), np.zeros(3), []
    for _ in range(5):
        loss = 0.5 * np.sum(h * (x - 1.0) ** 2)
        expected.append(loss)
        x = x - 0.1 * loss
    np.testing.assert_allclose(result.train_loss, expected, rtol=1e-5)


def nan_at(step):
    """An SGD(0.1) whose update at `step` is NaN."""
    def update(g, count, params=None, **extra):
        scale = jnp.where(count == step, jnp.nan, -0.1)
        return jax.tree.map(lambda x: scale * x, g), count + 1
    return optax.GradientTransformation(lambda p: jnp.zeros((), jnp.int32), update)


def test_a_non_finite_update_stops_cleanly_and_keeps_the_curve():
    task = tasks.quadratic(dim=3)
    x0 = {"x": jnp.zeros(3)}
    with pytest.warns(RuntimeWarning, match="step 4"):
        result = train.fit(task, nan_at(4), 10, KEY, params=x0)
    reference = train.fit(task, optax.sgd(0.1), 4, KEY, params=x0)
    assert result.stopped_at == 4
    np.testing.assert_allclose(result.curve[:4], reference.train_loss, rtol=1e-6)
    assert len(result.curve) == 5 and np.isfinite(result.curve).all()
    assert np.isnan(result.train_loss[5:]).all()
    np.testing.assert_allclose(result.params["x"], reference.params["x"], rtol=1e-6)  # last finite params


def test_a_non_finite_loss_stops_cleanly():
    task = tasks.quadratic(dim=2)
    with pytest.warns(RuntimeWarning, match="step 0"):
        result = train.fit(task, optax.sgd(0.1), 5, KEY, params={"x": jnp.array([jnp.inf, 0.0])})
    assert result.stopped_at == 0 and np.isnan(result.eval_loss[1:]).all()


def test_bad_input_is_named():
    task = tasks.quadratic(dim=2)
    with pytest.raises(ValueError, match=r"parameter \['x'\] has dtype int32"):
        train.fit(task, optax.sgd(0.1), 3, KEY, params={"x": jnp.zeros(2, jnp.int32)})
    wrong = optax.GradientTransformation(lambda p: (), lambda g, s, p=None: ({"y": g["x"]}, s))
    with pytest.raises(ValueError, match="structure differs"):
        train.fit(task, wrong, 3, KEY)
    with pytest.raises(ValueError, match="steps must be"):
        train.fit(task, optax.sgd(0.1), 0, KEY)
    with pytest.raises(ValueError, match="positive"):
        train.lr_sweep(task, optax.sgd, [0.1, -1.0], 3, KEY)


def test_lr_sweep_rows_equal_single_runs_and_best_is_argmin():
    task = tasks.digits_logreg(batch_size=32)
    lrs = [1e-3, 1e-1, 10.0]
    sweep = train.lr_sweep(task, optax.sgd, lrs, 40, KEY, eval_every=20)
    for i, lr in enumerate(lrs):
        single = train.fit(task, optax.sgd(lr), 40, KEY, eval_every=20)
        # the same init and batches; the vmapped program may round differently, and at lr 10 the
        # loss climbs from 2.4 to ~44 before it falls below 1, which carries a last-bit difference
        # into the small late losses: the tolerance is relative to the run's largest loss
        scale = np.abs(single.train_loss).max()
        np.testing.assert_allclose(sweep.train_loss[i], single.train_loss, rtol=2e-4, atol=2e-5 * scale)
    assert sweep.best_index == int(np.argmin(sweep.final_loss))
    assert sweep.best_lr == pytest.approx(lrs[sweep.best_index])
    assert sweep.runs == 3


def test_lr_sweep_of_adam_on_digits_is_u_shaped():
    sweep = train.lr_sweep(tasks.digits_mlp(), optax.adam, np.logspace(-5, 1, 7), 150, KEY)
    final = sweep.final_loss
    assert 0 < sweep.best_index < len(final) - 1          # the best rate is inside the grid
    assert final[0] > 2 * final[sweep.best_index]         # too small is slow
    assert final[-1] > 2 * final[sweep.best_index]        # too large is unstable


def test_raw_uint32_keys_work_too():
    task = tasks.quadratic(dim=2)
    raw = train.fit(task, optax.sgd(0.1), 7, jax.random.PRNGKey(0), eval_every=3)
    assert raw.train_loss.shape == (7,) and list(raw.eval_steps) == [0, 3, 6, 7]
