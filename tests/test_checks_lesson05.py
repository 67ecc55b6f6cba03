"""Checkers of lesson 05: hand-written answers pass; blank and typical wrong answers
fail with a message holding expected, got and a hint."""
import functools

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


# Exercise 4, an investigation: VeLO's first step over 12 decades of gradient scale

@functools.lru_cache(maxsize=1)
def _velo_first_update():
    """One jitted first update of the shipped VeLO: (grads, params) -> updates, compiled once."""
    import jax
    import minilopt
    _, _, loss = L.velo_probe()
    opt = minilopt.pretrained("velo", L.PROBE_STEPS)
    return jax.jit(lambda g, p: opt.update(g, opt.init(p), p, value=loss)[0])


def _probe_rms(scale, what="update"):
    import jax
    import jax.numpy as jnp
    params, grads, _ = L.velo_probe()
    if what == "params":          # a typical slip: scale the parameters instead of the gradient
        params = jax.tree.map(lambda p: scale * p, params)
    else:
        grads = jax.tree.map(lambda g: scale * g, grads)
    updates = _velo_first_update()(grads, params)
    if what == "new w":           # another: the new parameters, not the step
        return float(jnp.sqrt(jnp.mean((params["w"] + updates["w"]) ** 2)))
    return float(jnp.sqrt(jnp.mean(updates["w"] ** 2)))


def test_scale_response_passes_a_measurement_and_reports_the_spread():
    spread = L.check_scale_response(_probe_rms)
    assert 1 < spread < 100          # far from SGD's 1e12: the point of the exercise


def test_scale_response_fails_blank_answers():
    assert_blank_answers_fail(L.check_scale_response)


@pytest.mark.parametrize("wrong, words", [
    (lambda s: _probe_rms(s, "new w"), ["first_step_rms(1)", "UPDATE of w"]),
    (lambda s: _probe_rms(s, "params"), ["gradient times the scale"]),
    (lambda s: s * _probe_rms(1.0), ["in proportion to the gradient", "do not scale a step yourself"]),
])
def test_scale_response_fails_typical_wrong_answers(wrong, words):
    with pytest.raises(ExerciseError) as err:
        L.check_scale_response(wrong)
    msg = str(err.value)
    assert "expected:" in msg and "got:" in msg and "hint:" in msg
    for w in words:
        assert w in msg
