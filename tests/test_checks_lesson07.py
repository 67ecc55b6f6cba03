import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt.checks import ExerciseError, lesson07 as L
from helpers import assert_blank_answers_fail


def solution_antithetic_es(f, theta, sigma, num_pairs, key, denominator=2.0):
    eps = sigma * jax.random.normal(key, (num_pairs,) + theta.shape)
    diff = jnp.stack([f(theta + e) - f(theta - e) for e in eps])
    return jnp.tensordot(diff, eps, axes=1) / (denominator * sigma**2 * num_pairs)


def solution_pes_update(xi, eps, loss_plus, loss_minus, sigma, new_episode, reset_after=False):
    mask = np.asarray(new_episode).reshape((-1,) + (1,) * (np.ndim(xi) - 1))
    if reset_after:  # the typical slip: reset after adding ε, which throws this ε away
        xi = np.where(mask, 0.0, xi + eps)
    else:
        xi = np.where(mask, 0.0, xi) + eps
    diff = np.asarray(loss_plus) - np.asarray(loss_minus)
    return np.tensordot(diff, xi, axes=1) / (2 * sigma**2 * len(diff)), xi


def test_reference_answers_pass():
    L.check_antithetic_es(solution_antithetic_es)
    L.check_pes_update(solution_pes_update)


@pytest.mark.parametrize("check", [L.check_antithetic_es, L.check_pes_update])
def test_blank_answers_fail_helpfully(check):
    assert_blank_answers_fail(check)


def test_typical_wrong_answers_fail_with_expected_got_and_hint():
    with pytest.raises(ExerciseError, match=r"(?s)twice the expected.*expected.*got.*divide by 2σ²"):
        L.check_antithetic_es(lambda *a: solution_antithetic_es(*a, denominator=1.0))
    with pytest.raises(ExerciseError, match=r"(?s)new ξ.*expected.*got.*first restart ξ at 0"):
        L.check_pes_update(lambda *a: solution_pes_update(*a, reset_after=True))
