import math

import numpy as np
import pytest

from minilopt import evaluate
from minilopt.checks import ExerciseError, lesson09 as L
from helpers import assert_blank_answers_fail


def reference_speedup(adam, lopt):
    return evaluate.speedup(adam, lopt).speedup


def test_reference_answers_pass():
    L.check_smooth(evaluate.smooth)
    L.check_speedup(reference_speedup)
    results = {"tasks": [{"name": "x", "speedup": 0.3}, {"name": "y", "speedup": 2.0}]}
    L.check_losing_tasks(L.losing_tasks_reference, results)
    assert L.losing_tasks_reference(results) == ["x"]


@pytest.mark.parametrize("check", [L.check_smooth, L.check_speedup, L.check_losing_tasks])
def test_blank_answers_fail_usefully(check):
    assert_blank_answers_fail(check)


def test_a_smoother_with_partial_windows_fails():
    def partial(curve, w):  # averages whatever is there at the start instead of NaN
        c = np.asarray(curve, float)
        return np.array([c[max(0, i - w + 1): i + 1].mean() for i in range(len(c))])
    with pytest.raises(ExerciseError, match=r"(?s)must be NaN.*expected.*got.*hint"):
        L.check_smooth(partial)


def test_an_inverted_ratio_fails_with_a_hint():
    with pytest.raises(ExerciseError, match=r"(?s)reciprocal.*expected.*got.*divide Adam's steps"):
        L.check_speedup(lambda a, b: 1 / reference_speedup(a, b))


def test_a_target_at_the_better_final_loss_fails():
    def at_adams_final(adam, lopt):  # always targets Adam's final loss, even when the learned one never gets there
        w = evaluate.default_window(len(adam))
        sa, sl = evaluate.smooth(adam, w), evaluate.smooth(lopt, w)
        n_l = evaluate.steps_to_reach(sl, sa[-1])
        return math.nan if n_l is None else evaluate.steps_to_reach(sa, sa[-1]) / n_l
    with pytest.raises(ExerciseError, match=r"(?s)ends worse.*expected.*got.*L\* = max"):
        L.check_speedup(at_adams_final)


def test_counting_ties_as_losses_fails():
    with pytest.raises(ExerciseError, match=r"(?s)made-up.*expected.*got.*tie"):
        L.check_losing_tasks(lambda res: sorted(r["name"] for r in res["tasks"] if r["speedup"] <= 1))
