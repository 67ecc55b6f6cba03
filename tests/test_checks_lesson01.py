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


def test_adam_without_bias_correction_fails_with_a_hint():
    def no_correction(g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        return -lr * m / (np.sqrt(v) + eps), m, v
    with pytest.raises(ExerciseError, match=r"(?s)step delta at t=1.*expected.*got.*1 - b1\*\*t"):
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
