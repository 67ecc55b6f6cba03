import jax.numpy as jnp
import numpy as np
import pytest

from minilopt.checks import ExerciseError, lesson04 as L
from helpers import assert_blank_answers_fail


def solution_normalise(x, eps=1e-5):
    axes = tuple(range(np.ndim(x) - 1))
    return x / np.sqrt(eps + np.mean(np.square(x), axis=axes, keepdims=True))


def solution_time_features(t, num_steps, fractions):
    return np.tanh(10.0 * (t / num_steps - np.asarray(fractions)))


def solution_step(d, mu, exp_mult, step_mult):
    return d * np.exp(mu * exp_mult) * step_mult


def solution_tensor_update(lopt, theta, g, p, m, v, t, num_steps, use_old_accumulators=False):
    """The answer written from the lesson's formulas (as in the solutions notebook)."""
    betas = np.array(lopt.momentum_decays)
    m_new = betas * m + (1 - betas) * g[..., None]
    v_new = lopt.rms_decay * v + (1 - lopt.rms_decay) * g[..., None] ** 2
    mf, vf = (m, v) if use_old_accumulators else (m_new, v_new)   # the features read these
    inv = 1.0 / np.sqrt(vf + lopt.rms_eps)
    x = np.concatenate([g[..., None], p[..., None], mf, vf, mf * inv, inv, g[..., None] * inv], axis=-1)
    x = solution_normalise(x, lopt.eps)
    time = solution_time_features(t, num_steps, lopt.fractions)
    x = np.concatenate([x, np.broadcast_to(time, x.shape[:-1] + time.shape)], axis=-1)
    h = np.maximum(x @ np.asarray(theta["layer_0"]["w"]) + np.asarray(theta["layer_0"]["b"]), 0.0)
    out = h @ np.asarray(theta["layer_1"]["w"]) + np.asarray(theta["layer_1"]["b"])
    delta = solution_step(out[..., 0], out[..., 1], lopt.exp_mult, lopt.step_mult)
    return -delta, m_new, v_new


CHECKS = [L.check_normalise, L.check_time_features, L.check_step, L.check_tensor_update]


def test_hand_written_answers_pass():
    L.check_normalise(solution_normalise)
    L.check_time_features(solution_time_features)
    L.check_step(solution_step)
    L.check_tensor_update(solution_tensor_update)


def test_references_agree_with_the_hand_written_answers():
    x = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_allclose(L.normalise_reference(x), solution_normalise(x), rtol=1e-5)
    np.testing.assert_allclose(L.time_features_reference(3, 9, [0.2, 0.5]), solution_time_features(3, 9, [0.2, 0.5]),
                               rtol=1e-5)
    np.testing.assert_allclose(L.step_reference(x, -x, 0.3, 0.01), solution_step(x, -x, 0.3, 0.01), rtol=1e-5)


@pytest.mark.parametrize("check", CHECKS)
def test_blank_answers_fail_usefully(check):
    assert_blank_answers_fail(check)


def test_normalising_the_whole_array_at_once_fails_with_a_hint():
    wrong = lambda x: x / np.sqrt(1e-5 + np.mean(x ** 2))
    with pytest.raises(ExerciseError, match="(?s)expected.*got.*hint.*except the last"):
        L.check_normalise(wrong)


def test_time_features_without_the_sharpness_fail():
    wrong = lambda t, T, fr: np.tanh(t / T - np.asarray(fr))
    with pytest.raises(ExerciseError, match="(?s)time features at t=0.*expected.*got.*factor 10"):
        L.check_time_features(wrong)


def test_step_without_exp_mult_fails():
    wrong = lambda d, mu, c1, c2: d * np.exp(mu) * c2
    with pytest.raises(ExerciseError, match="(?s)expected.*got.*scaled by exp_mult"):
        L.check_step(wrong)


def test_tensor_update_from_stale_accumulators_fails():
    def stale(lopt, theta, g, p, m, v, t, T):
        return solution_tensor_update(lopt, theta, g, p, m, v, t, T, use_old_accumulators=True)
    with pytest.raises(ExerciseError, match="(?s)update \\(shape.*expected.*got.*FIRST"):
        L.check_tensor_update(stale)


def test_tensor_update_with_the_wrong_sign_fails():
    def plus(*args):
        update, m, v = solution_tensor_update(*args)
        return -update, m, v
    with pytest.raises(ExerciseError, match="(?s)update \\(shape.*expected.*got.*MINUS"):
        L.check_tensor_update(plus)


def test_tensor_update_returning_a_pair_fails():
    with pytest.raises(ExerciseError, match="triple"):
        L.check_tensor_update(lambda *a: (jnp.zeros(3), jnp.zeros(3)))


# The investigative exercise: make the learned optimizer fail.
def test_a_far_start_makes_the_learned_optimizers_fail_and_a_blank_fails():
    from minilopt import tasks
    L.check_failing_task(lambda: tasks.quadratic(dim=10, condition=10.0, init_scale=100.0))
    assert_blank_answers_fail(L.check_failing_task)


def test_a_hard_task_that_the_learned_optimizer_solves_fails():
    from minilopt import tasks   # ill-conditioned, but the learned optimizer still gains 10x: not a failure
    with pytest.raises(ExerciseError, match=r"(?s)solved your task.*expected.*got.*normalised over the tensor"):
        L.check_failing_task(lambda: tasks.quadratic(dim=10, condition=1e4))


def test_a_task_that_defeats_sgd_too_fails():
    from minilopt import tasks
    with pytest.raises(ExerciseError, match=r"(?s)does not solve your task either.*expected.*got.*every optimizer"):
        L.check_failing_task(lambda: tasks.noisy_quadratic(dim=10, condition=10.0, noise=1.0))


def test_a_task_that_is_not_a_quadratic_fails():
    from minilopt import tasks
    with pytest.raises(ExerciseError, match=r"(?s)must return a quadratic.*expected.*got.*hint"):
        L.check_failing_task(lambda: tasks.digits_mlp())
