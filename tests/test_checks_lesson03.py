import numpy as np
import optax
import pytest

from minilopt import hyper
from minilopt.checks import ExerciseError, lesson03 as L
from helpers import assert_blank_answers_fail


def test_reference_answers_pass():
    L.check_level2_hypergradient(L.level2_hypergradient_reference)
    L.check_tower(L.tower_reference)
    L.check_hyper_adam(L.hyper_adam_reference)


def test_level2_reference_is_the_closed_form_of_the_package():
    # independent of the checker: minilopt's SGD/SGD/SGD reports this hypergradient at level 2
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(3, 4))
    opt = hyper.stack(hyper.sgd(0.1), hyper.sgd(0.01), hyper.sgd(0.001))
    state = opt.init(np.zeros(4))
    for g in grads:
        _, state = opt.update(g, state, np.zeros(4))
    level2 = float(hyper.hypergrads(state)[1]["alpha"])
    assert level2 == pytest.approx(L.level2_hypergradient_reference(*grads[::-1]), rel=1e-4)


@pytest.mark.parametrize("check", [L.check_level2_hypergradient, L.check_tower, L.check_hyper_adam])
def test_blank_answers_fail_usefully(check):
    assert_blank_answers_fail(check)


def test_sign_error_fails():
    with pytest.raises(ExerciseError, match=r"(?s)expected.*got.*kappa acts through alpha"):
        L.check_level2_hypergradient(lambda a, b, c: float(np.vdot(a, b) * np.vdot(b, c)))


def test_tower_one_level_short_fails():
    with pytest.raises(ExerciseError, match=r"(?s)expected.*got.*h \+ 1"):
        L.check_tower(lambda alpha0, height: hyper.stack(*[hyper.sgd(alpha0) for _ in range(max(height, 1))]))


def test_adam_without_inject_hyperparams_fails_with_the_fix():
    with pytest.raises(ExerciseError, match="inject_hyperparams"):
        L.check_hyper_adam(lambda lr, hyper_lr: hyper.hyperoptimize(optax.adam(lr), by=optax.sgd(hyper_lr)))


# The investigative exercise: a tower that survives alpha0 = 1.
def test_survivor_references_pass_and_a_blank_fails():
    assert L.check_survivor(lambda a: [hyper.sgd(a)] * 3) < L.SURVIVED                         # taller
    assert L.check_survivor(lambda a: [hyper.sgd(a, log_alpha=True), hyper.sgd(a)]) < L.SURVIVED  # log alpha
    assert_blank_answers_fail(L.check_survivor)


def test_the_sensitivity_experiments_tower_of_height_one_fails_with_a_hint():
    with pytest.raises(ExerciseError, match=r"(?s)2 levels.*test error.*expected.*got.*damps or re-scales"):
        L.check_survivor(lambda a: [hyper.sgd(a), hyper.sgd(a)])


def test_a_smaller_start_higher_up_fails():
    with pytest.raises(ExerciseError, match=r"(?s)level 2's step size must start at alpha0.*expected.*got.*hint"):
        L.check_survivor(lambda a: [hyper.sgd(a), hyper.sgd(1e-3)])


def test_plain_sgd_is_not_a_tower():
    with pytest.raises(ExerciseError, match=r"(?s)at least two.*expected.*got.*not a tower"):
        L.check_survivor(lambda a: [hyper.sgd(a)])
