import jax
import jax.numpy as jnp
import optax
import pytest

from minilopt import guard, tasks
from minilopt.checks import ExerciseError, lesson10 as L
from minilopt.lopt.pretrained import pretrained
from helpers import assert_blank_answers_fail


def solution_guarded_step(params, d_learned, d_fallback, loss_fn, strict=False, nan_safe=True):
    def loss_at(d):
        value = loss_fn(optax.apply_updates(params, d))
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(d)]))
        return jnp.where(finite & jnp.isfinite(value), value, jnp.inf) if nan_safe else value

    l_learned, l_fallback = loss_at(d_learned), loss_at(d_fallback)
    take = (l_learned < l_fallback) if strict else (l_learned <= l_fallback)
    take = bool(take & jnp.isfinite(l_learned))
    if take:
        return d_learned, True
    if bool(jnp.isfinite(l_fallback)) or not nan_safe:
        return d_fallback, False
    return jax.tree.map(jnp.zeros_like, params), False


def solution_max_stable_lr(h, beta, with_momentum=True):
    return 2 * (1 + beta) / h if with_momentum else 2 / h


def solution_make_rescue(num_steps):
    task = tasks.quadratic(dim=10, condition=100.0)
    batch = task.batch(jax.random.key(0))
    return guard.loss_guarded(pretrained(num_steps), optax.adam(0.1), lambda p: task.loss(p, batch))


def test_reference_answers_pass():
    L.check_guarded_step(solution_guarded_step)
    L.check_max_stable_lr(solution_max_stable_lr)
    L.check_rescue(solution_make_rescue)


@pytest.mark.parametrize("check", [L.check_guarded_step, L.check_max_stable_lr, L.check_rescue])
def test_blank_answers_fail_helpfully(check):
    assert_blank_answers_fail(check)


def test_typical_wrong_answers_fail_with_expected_got_and_hint():
    with pytest.raises(ExerciseError, match=r"(?s)a tie.*expected: True.*got:.*False.*use <=, not <"):
        L.check_guarded_step(lambda *a: solution_guarded_step(*a, strict=True))
    with pytest.raises(ExerciseError, match=r"(?s)both steps hold NaN.*expected.*got.*NaN must never reach"):
        L.check_guarded_step(lambda *a: solution_guarded_step(*a, nan_safe=False))
    with pytest.raises(ExerciseError, match=r"(?s)plain SGD's limit.*expected.*got.*2\(1 \+ beta\)/h"):
        L.check_max_stable_lr(lambda h, b: solution_max_stable_lr(h, b, with_momentum=False))
    with pytest.raises(ExerciseError, match=r"(?s)final loss.*a tenth.*expected.*got.*loss_guarded"):
        L.check_rescue(lambda n: optax.sgd(1e-4))       # no rescue: a step too timid to move in 300 steps
