import math

import numpy as np
import pytest

from minilopt import evaluate
from minilopt.checks import ExerciseError, lesson09 as L
from helpers import assert_blank_answers_fail


def reference_speedup(adam, lopt):
    return evaluate.speedup(adam, lopt).speedup


def reference_stalling_curve(adam):
    """Flat from the start at the level Adam's smoothed curve reaches at 0.8 T."""
    adam = np.asarray(adam, float)
    return np.full(len(adam), evaluate.trailing_mean(adam, evaluate.default_window(len(adam)))[int(0.8 * len(adam))])


def test_reference_answers_pass():
    L.check_smooth(evaluate.trailing_mean)
    L.check_speedup(reference_speedup)
    L.check_broken_measure(reference_stalling_curve)
    results = {"tasks": [{"name": "x", "speedup": 0.3}, {"name": "y", "speedup": 2.0}]}
    L.check_losing_tasks(L.losing_tasks_reference, results)
    assert L.losing_tasks_reference(results) == ["x"]


@pytest.mark.parametrize("check", [L.check_smooth, L.check_speedup, L.check_losing_tasks, L.check_broken_measure])
def test_blank_answers_fail_usefully(check):
    assert_blank_answers_fail(check)


def test_a_smoother_with_partial_windows_fails():
    def partial(curve, w):  # averages whatever is there at the start instead of NaN
        c = np.asarray(curve, float)
        return np.array([c[max(0, i - w + 1): i + 1].mean() for i in range(len(c))])
    with pytest.raises(ExerciseError, match=r"(?s)must be NaN.*expected.*got.*hint"):
        L.check_smooth(partial)


def test_an_inverted_ratio_fails_with_a_hint():
    with pytest.raises(ExerciseError, match=r"(?s)reciprocal.*expected.*got.*learned optimizer is faster"):
        L.check_speedup(lambda a, b: 1 / reference_speedup(a, b))


def test_the_flawed_rule_fails_and_is_named():
    with pytest.raises(ExerciseError, match=r"(?s)flawed rule.*expected.*got.*whole budget"):
        L.check_speedup(L.naive_speedup)


def test_a_tie_scored_as_a_win_fails():
    def ties_win(adam, lopt):   # learned <= Adam counted from the learned optimizer's first hit, ties included
        w = evaluate.default_window(len(adam))
        sa, sl = evaluate.trailing_mean(adam, w), evaluate.trailing_mean(lopt, w)
        if sl[-1] <= sa[-1]:
            return len(adam) / evaluate.steps_to_reach(sl, sa[-1])
        return evaluate.steps_to_reach(sa, sl[-1]) / len(adam)
    with pytest.raises(ExerciseError, match=r"(?s)same smoothed loss.*expected.*got.*tie scores exactly 1"):
        L.check_speedup(ties_win)


def test_naive_rule_rewards_a_plateau():
    """The fact the lesson teaches, on a closed form: Adam 1/t, learned flat at 1/240 from step 1.
    T = 300, w = 30: the window mean of 1/t over [a, a+29] is about ln((a+29.5)/(a-0.5))/30, which first drops
    below 1/240 at a = 226 (step 255); the flat curve is there at step w = 30, so the flawed rule says 255/30 =
    8.5x; yet the learned curve ends above Adam, so the measure is < 1."""
    t = np.arange(1, 301, dtype=float)
    adam, flat = 1 / t, np.full(300, 1 / 240)
    assert np.isclose(L.naive_speedup(adam, flat), 255 / 30)
    assert evaluate.speedup(adam, flat).speedup < 1


def test_a_stall_that_ends_below_adam_fails():
    with pytest.raises(ExerciseError, match=r"(?s)must end above Adam.*expected.*got.*hint"):
        L.check_broken_measure(lambda adam: np.asarray(adam) / 2)


def test_a_curve_the_flawed_rule_also_calls_slower_fails():
    with pytest.raises(ExerciseError, match=r"(?s)flawed rule must call it faster.*expected.*got.*hint"):
        L.check_broken_measure(lambda adam: 2 * np.asarray(adam))


def test_a_curve_of_the_wrong_length_fails():
    with pytest.raises(ExerciseError, match=r"(?s)same length.*expected.*got"):
        L.check_broken_measure(lambda adam: reference_stalling_curve(adam)[:-1])


def test_counting_ties_as_losses_fails():
    with pytest.raises(ExerciseError, match=r"(?s)made-up.*expected.*got.*tie"):
        L.check_losing_tasks(lambda res: sorted(r["name"] for r in res["tasks"] if r["speedup"] <= 1))
