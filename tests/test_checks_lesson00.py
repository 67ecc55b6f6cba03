import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt.checks import ExerciseError, lesson00 as L
from helpers import assert_blank_answers_fail


# Hand-written answers, as a learner would write them.
def solution_tree_sq_norm(tree):
    return sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree))


def solution_per_example_grads(loss, params, xs, ys):
    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, xs, ys)


def solution_gd_scan(f, x0, lr, steps, record_after=False):
    def step(x, _):
        new_x = x - lr * jax.grad(f)(x)
        return new_x, f(new_x if record_after else x)
    return jax.lax.scan(step, x0, None, length=steps)


def solution_two_normals(key, shape):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, shape), jax.random.normal(k2, shape)


def test_reference_answers_pass():
    L.check_tree_sq_norm(solution_tree_sq_norm)
    L.check_per_example_grads(solution_per_example_grads)
    L.check_gd_scan(solution_gd_scan)
    L.check_two_normals(solution_two_normals)


def test_the_reference_norm_is_the_norm_of_the_flattened_tree():
    tree = {"a": np.arange(3.0), "b": [np.ones((2, 2)), np.array(-1.5)]}
    flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])
    assert L.tree_sq_norm_reference(tree) == pytest.approx(np.linalg.norm(flat) ** 2)


@pytest.mark.parametrize("check", [L.check_tree_sq_norm, L.check_per_example_grads, L.check_gd_scan,
                                   L.check_two_normals])
def test_blank_answers_fail_usefully(check):
    assert_blank_answers_fail(check)


def test_a_norm_of_the_first_leaf_only_fails():
    with pytest.raises(ExerciseError, match=r"(?s)squared norm.*expected.*got.*every leaf"):
        L.check_tree_sq_norm(lambda tree: jnp.sum(jax.tree.leaves(tree)[0] ** 2))


def test_a_tree_of_norms_instead_of_one_number_fails():
    with pytest.raises(ExerciseError, match="return an array or a number"):
        L.check_tree_sq_norm(lambda tree: jax.tree.map(lambda x: jnp.sum(x**2), tree))


def test_the_gradient_of_the_mean_loss_fails():
    def batch_gradient(loss, params, xs, ys):  # one gradient for the batch, not one per example
        return jax.grad(lambda p: jnp.mean(jax.vmap(loss, in_axes=(None, 0, 0))(p, xs, ys)))(params)
    with pytest.raises(ExerciseError, match=r"(?s)per-example gradient of 'w'.*shape.*map it over the examples"):
        L.check_per_example_grads(batch_gradient)


def test_losses_recorded_after_the_step_fail():
    with pytest.raises(ExerciseError, match=r"(?s)losses of 10 steps.*expected.*got.*records the loss at the x it starts from"):
        L.check_gd_scan(lambda f, x0, lr, steps: solution_gd_scan(f, x0, lr, steps, record_after=True))


def test_reusing_the_key_fails():
    def same_key(key, shape):
        return jax.random.normal(key, shape), jax.random.normal(key, shape)
    with pytest.raises(ExerciseError, match=r"(?s)the key was used twice.*derive two new keys"):
        L.check_two_normals(same_key)


def test_numpy_global_random_numbers_fail():
    rng = np.random.default_rng()
    with pytest.raises(ExerciseError, match="same key gave different numbers"):
        L.check_two_normals(lambda key, shape: (rng.normal(size=shape), rng.normal(size=shape)))


# The investigative exercise: where a finite-difference check breaks.
def solution_fd_steps(f, x):
    """Measure the central difference's error over 12 decades of steps and read off the three steps."""
    exact = float(jax.grad(f)(jnp.float32(x)))
    steps = np.logspace(-10, 1, 45)
    x32 = np.float32(x)
    errors = np.array([abs(float((f(x32 + np.float32(e)) - f(x32 - np.float32(e))) / (2 * np.float32(e))) - exact)
                       / abs(exact) for e in steps])
    best = int(np.argmin(errors))
    small = [i for i in range(best) if errors[i] >= 0.1]
    large = [i for i in range(best + 1, len(steps)) if errors[i] >= 0.1]
    return steps[small[-1]], steps[best], steps[large[0]]


def test_the_fd_steps_reference_passes_and_a_blank_fails():
    L.check_fd_steps(solution_fd_steps)
    assert_blank_answers_fail(L.check_fd_steps)


def test_the_fd_problems_derivatives_are_the_closed_forms_and_a_tiny_step_measures_nothing():
    # independent facts: jax.grad in float64 agrees with the closed forms; a step below float32's resolution
    # at x leaves x + eps == x - eps, so the central difference is 0 and its relative error exactly 1
    from helpers import float64
    with float64():
        for f, x, exact, _ in L.fd_problems():
            assert float(jax.grad(f)(jnp.float64(x))) == pytest.approx(exact, rel=1e-12)
    for f, x, exact, _ in L.fd_problems():
        assert L.central_difference_error(f, x, 1e-10, exact) == 1.0


def test_a_too_small_step_that_still_works_fails_with_a_hint():
    # the usual belief: smaller is always better, so 1e-5 must be "too small"; in float32 it is still accurate
    with pytest.raises(ExerciseError, match=r"(?s)too-small step 1e-05.*still accurate.*expected.*got.*Go smaller"):
        L.check_fd_steps(lambda f, x: (1e-5, 1e-3, 1.0))


def test_a_too_large_step_that_still_works_fails_with_a_hint():
    with pytest.raises(ExerciseError, match=r"(?s)too-large step 0\.01.*still accurate.*expected.*got.*Go larger"):
        L.check_fd_steps(lambda f, x: (1e-9, 1e-3, 1e-2))


def test_fd_steps_out_of_order_fail():
    with pytest.raises(ExerciseError, match=r"(?s)increasing order.*expected.*got.*hint"):
        L.check_fd_steps(lambda f, x: (1.0, 1e-3, 1e-9))
