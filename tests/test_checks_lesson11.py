import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt.checks import ExerciseError, lesson11 as L
from helpers import assert_blank_answers_fail


def solution_impulse_response(opt, steps, sign=-1.0, every_step=False):
    params = {"w": jnp.zeros(1)}
    state, out = opt.init(params), []
    for t in range(steps):
        g = 1.0 if (t == 0 or every_step) else 0.0
        updates, state = opt.update({"w": jnp.array([g])}, state, params)
        params = optax.apply_updates(params, updates)
        out.append(sign * float(updates["w"][0]))
    return np.array(out)


def solution_saturation_point(scales, step, tol=0.1, first_close=False):
    close = np.abs(np.asarray(step) / step[-1] - 1) <= tol
    if first_close:                      # the typical slip: the first close scale, not the start of the last run
        i = int(np.argmax(close))
        return float(scales[i]) if i < len(close) - 1 else float("nan")
    i = len(close)
    while i > 0 and close[i - 1]:
        i -= 1
    return float(scales[i]) if i < len(close) - 1 else float("nan")


def test_reference_answers_pass():
    L.check_impulse_response(solution_impulse_response)
    L.check_saturation_point(solution_saturation_point)
    L.check_mimic(lambda: optax.adam(1e-3, b1=0.6), target_tau=3.1)


@pytest.mark.parametrize("check", [L.check_impulse_response, L.check_saturation_point,
                                   lambda f: L.check_mimic(f, target_tau=3.0)])
def test_blank_answers_fail_helpfully(check):
    assert_blank_answers_fail(check)


def test_typical_wrong_answers_fail_with_expected_got_and_hint():
    with pytest.raises(ExerciseError, match=r"(?s)sign is flipped.*expected.*got.*descent step"):
        L.check_impulse_response(lambda o, n: solution_impulse_response(o, n, sign=1.0))
    with pytest.raises(ExerciseError, match=r"(?s)spike fed more than once.*expected.*got.*impulse, not a step"):
        L.check_impulse_response(lambda o, n: solution_impulse_response(o, n, every_step=True))
    with pytest.raises(ExerciseError, match=r"(?s)a dip.*expected.*got.*all the way to the largest scale"):
        L.check_saturation_point(lambda s, y: solution_saturation_point(s, y, first_close=True))
    with pytest.raises(ExerciseError, match=r"(?s)time scale.*expected: 3\.0.*got.*larger b1"):
        L.check_mimic(lambda: optax.adam(1e-3, b1=0.9), target_tau=3.0)
    with pytest.raises(ExerciseError, match=r"(?s)not scale invariant.*got.*rms of the gradient"):
        L.check_mimic(lambda: optax.sgd(0.1, momentum=0.5), target_tau=2.0)
    with pytest.raises(ExerciseError, match=r"(?s)must return an optax optimizer"):
        L.check_mimic(lambda: 0.6, target_tau=3.0)
