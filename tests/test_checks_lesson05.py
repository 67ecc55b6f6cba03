"""Checkers of lesson 05: hand-written answers pass; blank and typical wrong answers
fail with a message holding expected, got and a hint."""
import numpy as np
import pytest

from minilopt.checks import ExerciseError, lesson05 as L
from helpers import assert_blank_answers_fail


def rsqrt_safe(x):
    return 1.0 / np.sqrt(np.maximum(x, 1e-9))


def solution_factored(g, v_row, v_col, decay, normalise_rows=True):
    gsq = g ** 2 + 1e-30
    v_row = decay * v_row + (1 - decay) * gsq.mean(axis=0)
    v_col = decay * v_col + (1 - decay) * gsq.mean(axis=1)
    row = v_row / (v_row.mean() + 1e-9) if normalise_rows else v_row
    return v_row, v_col, g * rsqrt_safe(row)[None, :] * rsqrt_safe(v_col)[:, None]


def cliplog(x):
    return 0.5 * np.clip(np.log(1e-8 + np.abs(10 * x)), -5, 5)


def solution_lstm_statistics(p, m, rms, quirk=True):
    s = 1 / np.sqrt(max(1e-9, np.mean(p ** 2)))
    axes = tuple(range(p.ndim))
    m, rms = s * m, s * rms
    mean_m = m.mean(axis=axes)
    centre = mean_m if quirk else rms.mean(axis=axes)
    var_rms = np.mean((rms - centre) ** 2, axis=axes)
    return np.concatenate([cliplog(rms.mean(axis=axes)), cliplog(m.var(axis=axes)),
                           cliplog(np.broadcast_to(var_rms, (3,)))])


def solution_mix(controls, stacked, average=True):
    mixed = np.tensordot(controls, stacked, axes=1)
    return 100 * mixed / (len(controls) if average else 1)


def test_hand_written_answers_pass():
    L.check_factored(solution_factored)
    L.check_lstm_statistics(solution_lstm_statistics)
    L.check_mix(solution_mix)


@pytest.mark.parametrize("check", [L.check_factored, L.check_lstm_statistics, L.check_mix])
def test_blank_answers_fail_with_a_hint(check):
    assert_blank_answers_fail(check)


@pytest.mark.parametrize("check, wrong, words", [
    (L.check_factored, lambda *a: solution_factored(*a, normalise_rows=False), ["v_row", "mean(v_row)"]),
    (L.check_lstm_statistics, lambda *a: solution_lstm_statistics(*a, quirk=False), ["MOMENTUM mean"]),
    (L.check_mix, lambda *a: solution_mix(*a, average=False), ["AVERAGE"]),
])
def test_typical_wrong_answers_fail_with_expected_got_and_hint(check, wrong, words):
    with pytest.raises(ExerciseError) as err:
        check(wrong)
    msg = str(err.value)
    assert "expected:" in msg and "got:" in msg and "hint:" in msg
    for w in words:
        assert w in msg
