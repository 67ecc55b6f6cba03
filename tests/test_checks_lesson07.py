import functools

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


# Exercise 3, an investigation: the σ below which ES's spread explodes on a chaotic meta-loss

@functools.lru_cache(maxsize=4)
def _jitted_spread(meta_loss, pairs=2000):
    def spread(lr, sigma, key):
        eps = sigma * jax.random.normal(key, (pairs,))
        diff = jax.vmap(lambda e: meta_loss(lr + e) - meta_loss(lr - e))(eps)
        return jnp.std(eps * diff / (2 * sigma**2))
    return jax.jit(spread)


def _spread(meta_loss, lr, sigma, key=1):
    return float(_jitted_spread(meta_loss)(jnp.float32(lr), jnp.float32(sigma), jax.random.PRNGKey(key)))


def solution_exploding_sigma(meta_loss, lr, factor=10.0, keep_going=0):
    """Sweep σ down from 0.05 by √2 and return the first σ whose spread is `factor` times the spread at 0.05
    (keep_going > 0: the typical slip of sweeping on, far past it)."""
    reference = _spread(meta_loss, lr, 0.05)
    for sigma in 0.05 / np.sqrt(2) ** np.arange(1, 40):
        if _spread(meta_loss, lr, sigma) >= factor * reference:
            return sigma / 10 ** keep_going
    return None


def test_exploding_sigma_reference_passes():
    L.check_exploding_sigma(solution_exploding_sigma)


def test_exploding_sigma_blank_fails():
    assert_blank_answers_fail(L.check_exploding_sigma)


@pytest.mark.parametrize("wrong, pattern", [
    (lambda f, lr: solution_exploding_sigma(f, lr, keep_going=3), r"far past the point.*hint: find where"),
    (lambda f, lr: solution_exploding_sigma(f, lr, factor=2.0), r"only .* times.*hint: the spread has not exploded"),
    (lambda f, lr: 0.1, r"only .* times.*go to smaller σ"),
])
def test_exploding_sigma_fails_typical_wrong_answers(wrong, pattern):
    with pytest.raises(ExerciseError, match=r"(?s)" + pattern) as err:
        L.check_exploding_sigma(wrong)
    assert "expected:" in str(err.value) and "got:" in str(err.value)
