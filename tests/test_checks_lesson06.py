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
    with pytest.raises(ExerciseError, match=r"(?s)meta_loss\(lr=0.5, T=5\).*expected.*got.*hint: start at x = 0.1"):
        L.check_meta_loss(lambda lr, T: solution_meta_loss(lr, T, record_before_step=True))
    with pytest.raises(ExerciseError, match=r"(?s)differentiates through the start.*expected.*got.*stop_gradient"):
        L.check_truncated_gradients(solution_full_gradients)
