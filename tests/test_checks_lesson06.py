import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt.checks import ExerciseError, lesson06 as L
from helpers import assert_blank_answers_fail


def f(x):
    return 0.25 * (x**2 - 1.0) ** 2


def solution_meta_loss(lr, T, record_before_step=False):
    x, losses = 0.1, []
    for _ in range(T):
        if record_before_step:
            losses.append(f(x))
        x = x - lr * x * (x**2 - 1.0)
        if not record_before_step:
            losses.append(f(x))
    return np.mean(losses)


def _scan(lr, x, K):
    def step(x, _):
        x = x - lr * x * (x**2 - 1.0)
        return x, f(x)
    return jax.lax.scan(step, x, None, length=K)


def solution_truncated_gradients(lr, T, K, stop=True):
    x, out = jnp.float32(0.1), []
    for _ in range(T // K):
        start = jax.lax.stop_gradient(x) if stop else x
        out.append(jax.grad(lambda r: jnp.mean(_scan(r, start, K)[1]))(jnp.float32(lr)))
        x = _scan(jnp.float32(lr), start, K)[0]
    return np.asarray(out)


def solution_full_gradients(lr, T, K):
    """A typical wrong answer: every truncation differentiated through the whole past."""
    def per_truncation(r):
        return _scan(r, jnp.float32(0.1), T)[1].reshape(T // K, K).mean(axis=1)
    return np.asarray(jax.jacobian(per_truncation)(jnp.float32(lr)))


def test_reference_answers_pass():
    L.check_meta_loss(solution_meta_loss)
    L.check_truncated_gradients(solution_truncated_gradients)


@pytest.mark.parametrize("check", [L.check_meta_loss, L.check_truncated_gradients])
def test_blank_answers_fail_helpfully(check):
    assert_blank_answers_fail(check)


def test_typical_wrong_answers_fail_with_expected_got_and_hint():
    with pytest.raises(ExerciseError, match=r"(?s)meta_loss\(lr=0.5, T=5\).*expected.*got.*hint: start at x = 0.1.*AFTER each step"):
        L.check_meta_loss(lambda lr, T: solution_meta_loss(lr, T, record_before_step=True))
    with pytest.raises(ExerciseError, match=r"(?s)differentiates through the start.*expected.*got.*a constant: stop the gradient"):
        L.check_truncated_gradients(solution_full_gradients)


# Exercise 3, an investigation: the horizon where the unrolled meta-gradient explodes

MAX_T = 100


@jax.jit
def _masked_meta_loss(lr, T):
    """L(lr, T) for any T <= MAX_T with ONE compile: a fixed-length scan whose losses after T are masked."""
    losses = _scan(lr, jnp.float32(0.1), MAX_T)[1]
    return jnp.sum(jnp.where(jnp.arange(1, MAX_T + 1) <= T, losses, 0.0)) / T


_masked_gradient = jax.jit(jax.grad(_masked_meta_loss))


def _gradient_at(lr, T):
    return abs(float(_masked_gradient(jnp.float32(lr), T)))


def solution_explosion_horizon(lr, threshold, max_T, shift=0, measure=_gradient_at):
    """The first horizon whose |dL/dlr| exceeds the threshold (bisection would miss a crossing; go in order)."""
    for T in range(1, max_T + 1):
        if measure(lr, T) > threshold:
            return T + shift
    return None


def finite_difference(lr, T, eps=1e-3):
    """A typical slip: measure the slope by finite differences, which stays bounded."""
    return abs(float(_masked_meta_loss(jnp.float32(lr + eps), T) - _masked_meta_loss(jnp.float32(lr - eps), T))) / (2 * eps)


def test_explosion_horizon_reference_passes():
    L.check_explosion_horizon(lambda lr, thr, max_T: solution_explosion_horizon(lr, thr, max_T))


def test_explosion_horizon_blank_fails():
    assert_blank_answers_fail(L.check_explosion_horizon)


@pytest.mark.parametrize("wrong, pattern", [
    (lambda lr, thr, m: solution_explosion_horizon(lr, thr, m, shift=-1), r"not above.*hint: return the first horizon"),
    (lambda lr, thr, m: solution_explosion_horizon(lr, thr, m, shift=+1), r"shorter horizon.*hint: test every"),
    (lambda lr, thr, m: solution_explosion_horizon(lr, thr, m, measure=finite_difference),
     r"must return a horizon.*None.*finite difference stays below"),
    (lambda lr, thr, m: solution_explosion_horizon(lr, thr, m) or m, r"lr=0.5.*never exceeds.*hint: return None"),
])
def test_explosion_horizon_fails_typical_wrong_answers(wrong, pattern):
    with pytest.raises(ExerciseError, match=r"(?s)" + pattern) as err:
        L.check_explosion_horizon(wrong)
    assert "expected:" in str(err.value) and "got:" in str(err.value)


def test_explosion_horizon_agrees_with_backprop():
    # the checker's masked one-compile gradients are jax.grad's of the mean over T steps
    fast = L.meta_gradients_by_horizon(1.5, 30)
    for T in (1, 7, 23, 24):
        plain = abs(float(jax.grad(lambda r: jnp.mean(_scan(r, jnp.float32(0.1), T)[1]))(jnp.float32(1.5))))
        assert np.isclose(fast[T - 1], plain, rtol=2e-2)
