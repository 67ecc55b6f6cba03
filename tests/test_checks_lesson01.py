import numpy as np
import pytest

from minilopt.checks import ExerciseError, lesson01 as L
from helpers import assert_blank_answers_fail


def test_reference_answers_pass():
    L.check_momentum_step(L.momentum_step_reference)
    L.check_adam_step(L.adam_step_reference)
    L.check_best_lr(L.best_lr_reference)


@pytest.mark.parametrize("check", [L.check_momentum_step, L.check_adam_step, L.check_best_lr])
def test_blank_answers_fail_usefully(check):
    assert_blank_answers_fail(check)


@pytest.fixture(scope="module")
def diverging_sweep():
    """SGD on a quadratic with curvatures up to 1: rates above 2 blow up (gradient descent on
    h x^2 / 2 is stable only for lr < 2 / h), the rest converge."""
    import jax
    import optax
    from minilopt import tasks, train
    return train.lr_sweep(tasks.quadratic(), optax.sgd, np.logspace(-3, 1, 9), 100, jax.random.key(0))


def test_the_sweep_check_passes_the_reference_and_fails_a_blank(diverging_sweep):
    lrs = diverging_sweep.learning_rates
    assert np.isnan(diverging_sweep.train_loss[lrs > 2, -1]).all()  # the premise: diverged runs end in NaN
    assert L.check_best_lr_on_sweep(L.best_lr_reference, diverging_sweep) == pytest.approx(1.0)
    assert_blank_answers_fail(lambda answer: L.check_best_lr_on_sweep(answer, diverging_sweep))


def test_plain_argmin_over_a_sweep_with_nan_fails(diverging_sweep):
    with pytest.raises(ExerciseError, match=r"(?s)runs ended in NaN.*expected: 1\.0.*NaN loss"):
        L.check_best_lr_on_sweep(lambda lrs, losses: float(lrs[np.argmin(losses)]), diverging_sweep)


def test_a_sweep_without_divergence_is_refused(diverging_sweep):
    calm = diverging_sweep._replace(train_loss=np.nan_to_num(diverging_sweep.train_loss, nan=5.0))
    with pytest.raises(ValueError, match="no diverged run"):
        L.check_best_lr_on_sweep(L.best_lr_reference, calm)


def test_adam_without_bias_correction_fails_with_a_hint():
    def no_correction(g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        return -lr * m / (np.sqrt(v) + eps), m, v
    with pytest.raises(ExerciseError, match=r"(?s)step delta at t=1.*expected.*got.*power of t"):
        L.check_adam_step(no_correction)


def test_dampened_momentum_fails():
    def dampened(g, m, lr, beta):  # the EMA form is a different optimizer
        m = beta * m + (1 - beta) * g
        return -lr * m, m
    with pytest.raises(ExerciseError, match="new momentum"):
        L.check_momentum_step(dampened)


def test_argmin_with_nans_fails():
    with pytest.raises(ExerciseError, match="isfinite"):
        L.check_best_lr(lambda lrs, losses: lrs[np.argmin(losses)])


# The investigative exercise: the edge of stability.
def solution_edge_of_stability(task, make_optimizer, steps, key, by_nan_only=False):
    """A fine sweep (factor 1.12 between rates); the edge is the first rate whose run diverged."""
    import numpy as np
    from minilopt import train
    lrs = np.geomspace(1e-2, 1e2, 81)
    sweep = train.lr_sweep(task, make_optimizer, lrs, steps, key)
    first, last = sweep.train_loss[:, 0], sweep.train_loss[:, -1]
    diverged = ~np.isfinite(last) if by_nan_only else ~np.isfinite(last) | (last > first)
    i = int(np.argmax(diverged))
    return float(lrs[i - 1]), float(lrs[i])


def test_the_edge_reference_passes_and_a_blank_fails():
    L.check_edge_of_stability(solution_edge_of_stability)
    assert_blank_answers_fail(L.check_edge_of_stability)


def test_the_edge_cases_match_the_closed_form():
    # independent fact: SGD on the quadratic's largest curvature h = 1 multiplies x by (1 - lr) each step,
    # so 1.9 trains and 2.1 diverges; heavy-ball momentum 0.9 moves the edge to 2 (1 + 0.9) = 3.8
    import jax
    key = jax.random.key(0)
    for task, make, _, edge in L.edge_cases():
        below, above = L.run_outcomes(task, make, [0.95 * edge, 1.05 * edge], 100, key)
        assert not below[2] and above[2]


def test_judging_divergence_by_nan_alone_fails_with_a_hint():
    # a loss that grows by orders of magnitude in 100 steps need not overflow: the rate below the first NaN diverges too
    with pytest.raises(ExerciseError, match=r"(?s)stable rate.*diverged.*expected.*got.*not by NaN alone"):
        L.check_edge_of_stability(lambda *a: solution_edge_of_stability(*a, by_nan_only=True))


def test_a_wide_bracket_fails():
    with pytest.raises(ExerciseError, match=r"(?s)spans a factor 10.*expected.*got.*narrow it"):
        L.check_edge_of_stability(lambda *a: (0.5, 5.0))


def test_a_swapped_bracket_fails():
    with pytest.raises(ExerciseError, match=r"(?s)stable_lr < unstable_lr.*expected.*got.*larger one diverges"):
        L.check_edge_of_stability(lambda *a: (2.1, 1.9))
