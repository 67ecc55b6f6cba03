import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from minilopt.checks import ExerciseError, lesson08 as L
from helpers import assert_blank_answers_fail


def solution_shard_particles(x, mesh, spec=PartitionSpec("particles")):
    return jax.device_put(x, NamedSharding(mesh, spec))


def solution_safe_meta_update(theta, grad, opt_state, meta_optimizer, clean=True):
    bad = sum(int(jnp.sum(~jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    if clean:
        grad = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
    updates, opt_state = meta_optimizer.update(grad, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, bad


def test_reference_answers_pass():
    L.check_shard_particles(solution_shard_particles)
    L.check_safe_meta_update(solution_safe_meta_update)


@pytest.mark.parametrize("check", [L.check_shard_particles, L.check_safe_meta_update])
def test_blank_answers_fail_helpfully(check):
    assert_blank_answers_fail(check)


def test_typical_wrong_answers_fail_with_expected_got_and_hint():
    with pytest.raises(ExerciseError, match=r"(?s)the sharding.*expected.*got.*hint: place the array.*LEADING.*empty spec"):
        L.check_shard_particles(lambda x, mesh: solution_shard_particles(x, mesh, PartitionSpec()))
    with pytest.raises(ExerciseError, match=r"(?s)non-finite gradient.*expected.*got.*hint: count"):
        L.check_safe_meta_update(lambda *a: solution_safe_meta_update(*a, clean=False))


# Exercise 3, an investigation: where truncated meta-training settles

def solution_settled_lr(K):
    """Bisection on log lr for the sign change of the episode-mean truncated meta-gradient, written as a
    learner would: a Python loop over the truncations, each differentiated from a constant start."""
    import numpy as np
    h = jnp.asarray(L.bias_task().curvatures)

    def truncation_loss(log_lr, x):
        losses = []
        for _ in range(K):
            x = x - jnp.exp(log_lr) * h * (x - 1.0)
            losses.append(0.5 * jnp.sum(h * (x - 1.0) ** 2))
        return jnp.mean(jnp.stack(losses)), x

    @jax.jit
    def mean_gradient(log_lr):
        x, grads = jnp.zeros(10), []
        for _ in range(L.HORIZON // K):
            grad, x = jax.grad(truncation_loss, has_aux=True)(log_lr, jax.lax.stop_gradient(x))
            grads.append(grad)
        return jnp.mean(jnp.stack(grads))

    lo, hi = np.log(0.1), np.log(1.99)
    for _ in range(25):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_gradient(jnp.float32(mid)) < 0 else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def test_settled_lr_reference_passes():
    L.check_settled_lr(solution_settled_lr)


def test_settled_lr_blank_fails():
    assert_blank_answers_fail(L.check_settled_lr)


@pytest.mark.parametrize("wrong, pattern", [
    (lambda K: 1.476, r"K=1\).*LOWER the rate.*hint: use the TRUNCATED"),   # the whole episode's rate
    (lambda K: 0.3, r"RAISE the rate"),
    (lambda K: 5.0, r"between 0 and 2"),
])
def test_settled_lr_fails_typical_wrong_answers(wrong, pattern):
    with pytest.raises(ExerciseError, match=r"(?s)" + pattern) as err:
        L.check_settled_lr(wrong)
    assert "expected:" in str(err.value) and "got:" in str(err.value)
