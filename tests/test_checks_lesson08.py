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
    with pytest.raises(ExerciseError, match=r"(?s)the sharding.*expected.*got.*hint: put the array.*LEADING"):
        L.check_shard_particles(lambda x, mesh: solution_shard_particles(x, mesh, PartitionSpec()))
    with pytest.raises(ExerciseError, match=r"(?s)non-finite gradient.*expected.*got.*hint: count"):
        L.check_safe_meta_update(lambda *a: solution_safe_meta_update(*a, clean=False))
