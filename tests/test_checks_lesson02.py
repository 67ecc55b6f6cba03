import jax
import numpy as np
import pytest

from minilopt.checks import ExerciseError, lesson02 as L
from helpers import assert_blank_answers_fail


def test_reference_answers_pass():
    L.check_baydin_hypergradient(L.baydin_hypergradient_reference)
    L.check_hypergradient_by_vjp(L.hypergradient_by_vjp_reference)
    L.check_baydin_alphas(L.baydin_alphas_reference)


def test_reference_hypergradient_is_the_chain_rule():
    # independent of the checker: a finite difference of f_t(w - alpha g_prev) for f = |w - c|^2 / 2
    rng = np.random.default_rng(0)
    w, c, g_prev, alpha, eps = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), 0.3, 1e-6
    f = lambda a: 0.5 * np.sum((w - a * g_prev - c) ** 2)
    g_now = w - alpha * g_prev - c
    fd = (f(alpha + eps) - f(alpha - eps)) / (2 * eps)
    assert L.baydin_hypergradient_reference(g_now, g_prev) == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("check", [L.check_baydin_hypergradient, L.check_hypergradient_by_vjp, L.check_baydin_alphas])
def test_blank_answers_fail_usefully(check):
    assert_blank_answers_fail(check)


def test_sign_error_fails_with_expected_got_and_hint():
    with pytest.raises(ExerciseError, match=r"(?s)expected.*got.*mind the sign"):
        L.check_baydin_hypergradient(lambda g_now, g_prev: float(np.vdot(g_now, g_prev)))


def test_wrong_cotangent_fails():
    def with_ones(update, h, g_prev, g_now):  # forgot to pull back today's gradient
        _, pullback = jax.vjp(lambda h: update(g_prev, h), h)
        return pullback(np.ones_like(g_now))[0]
    with pytest.raises(ExerciseError, match=r"(?s)expected.*got.*cotangent"):
        L.check_hypergradient_by_vjp(with_ones)


def test_off_by_one_alphas_fail():
    def recorded_before_update(grads, alpha0, kappa):
        alphas, alpha, prev = [], alpha0, np.zeros_like(grads[0])
        for g in grads:
            alphas.append(alpha)
            alpha = alpha + kappa * float(np.vdot(g, prev))
            prev = g
        return np.array(alphas)
    with pytest.raises(ExerciseError, match=r"(?s)expected.*got.*record alpha after"):
        L.check_baydin_alphas(recorded_before_update)


# The investigative exercise: the range of alpha0 from which a run recovers.
def solution_recovery_range(make_optimizer, final_accuracy, claim=None):
    """A log grid over the search range, a factor 1.78 apart: the first and last alpha0 that recover."""
    grid = np.logspace(-6, 2, 33)
    ok = np.flatnonzero(final_accuracy(make_optimizer, grid) >= L.RECOVERED)
    return float(grid[ok[0]]), float(grid[ok[-1]])


def test_the_recovery_reference_passes_and_shows_the_tower_widens_the_range_downwards_only():
    found = L.check_recovery_range(solution_recovery_range)
    (plain_lo, plain_hi), (tower_lo, tower_hi) = found.values()
    assert tower_lo < plain_lo / 100       # the hypergradient rescues a far too small start ...
    assert tower_hi < 3 * plain_hi         # ... not a far too large one
    assert_blank_answers_fail(L.check_recovery_range)


def test_claiming_the_tower_recovers_from_any_alpha0_fails_with_a_hint():
    calls = []
    def overclaim(make_optimizer, final_accuracy):   # right for plain SGD, then "the tower fixes everything"
        calls.append(1)
        return solution_recovery_range(make_optimizer, final_accuracy) if len(calls) == 1 else (1e-6, 100.0)
    with pytest.raises(ExerciseError, match=r"(?s)SGD/SGD.*alpha0 = 100.*does not recover.*expected.*got.*"
                                            r"first steps are taken at alpha0 itself"):
        L.check_recovery_range(overclaim)


def test_a_range_that_stops_short_fails():
    with pytest.raises(ExerciseError, match=r"(?s)plain SGD still recovers.*twice your hi.*expected.*got.*further up"):
        L.check_recovery_range(lambda make, acc: (0.05, 0.3))
