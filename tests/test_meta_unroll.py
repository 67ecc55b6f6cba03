"""The truncated inner-training state machine: closed forms, resets, staggering, bad input."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt import tasks
from minilopt.lopt.hand import LearnableSGD
from minilopt.meta import estimators
from minilopt.meta.unroll import TruncatedUnroll
from minilopt.tasks.base import TaskFamily


def test_sgd_episode_matches_the_closed_form():
    """SGD on ½Σh(x−1)² from x = 0: x_t = 1 − (1−αh)^t, so loss_t = ½ Σ h (1−αh)^{2t}."""
    lr, T, K = 0.5, 30, 10
    task = tasks.quadratic(dim=5, condition=20.0, init_scale=0.0)
    unroll = TruncatedUnroll(LearnableSGD(lr), task, T, K, stagger=False, clip=10.0)
    meta, losses = jax.jit(unroll.episode)(LearnableSGD(lr).init(), jax.random.PRNGKey(0))
    h = np.asarray(task.curvatures, np.float64)
    t = np.arange(T)[:, None]
    expected = 0.5 * np.sum(h * (1 - lr * h) ** (2 * t), axis=1)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    # meta-loss: mean over truncations of the mean of loss_t / loss_0 over unmasked steps (all but t = 0)
    normalised = (expected / expected[0]).reshape(T // K, K)
    per_truncation = [normalised[0, 1:].mean()] + [row.mean() for row in normalised[1:]]
    np.testing.assert_allclose(float(meta), np.mean(per_truncation), rtol=1e-5)


def test_meta_losses_are_normalised_and_clipped():
    unroll = TruncatedUnroll(LearnableSGD(), tasks.quadratic(dim=2), 4, 2, clip=3.0)
    loss = jnp.array([1.0, 4.0, 10.0, jnp.nan, jnp.inf, -jnp.inf])
    np.testing.assert_allclose(unroll.meta_losses(loss, 2.0), [0.5, 2.0, 3.0, 3.0, 3.0, 3.0])
    raw = TruncatedUnroll(LearnableSGD(), tasks.quadratic(dim=2), 4, 2, clip=3.0, normalise=False)
    np.testing.assert_allclose(raw.meta_losses(loss, 2.0), [1.0, 3.0, 3.0, 3.0, 3.0, 3.0])


def test_runs_reset_at_the_end_of_the_horizon():
    T, K = 20, 5
    family = tasks.QuadraticFamily(dim=3)
    unroll = TruncatedUnroll(LearnableSGD(0.1), family, T, K, stagger=False)
    theta = LearnableSGD(0.1).init()
    step = jax.jit(unroll.unroll)
    state = unroll.init(theta, jax.random.PRNGKey(0))
    first_task = state.task
    assert int(state.step) == 0
    for i in range(T // K):
        state, out = step(theta, state)
        assert int(state.step) == (i + 1) * K
        np.testing.assert_array_equal(out.mask, [i > 0] + [True] * (K - 1))
        np.testing.assert_array_equal(state.task.curvatures, first_task.curvatures)
    assert bool(unroll.episode_over(state))
    state, out = step(theta, state)  # a new episode: a new task, step K, the first loss masked
    assert int(state.step) == K
    assert not np.allclose(state.task.curvatures, first_task.curvatures)
    np.testing.assert_array_equal(out.mask, [False] + [True] * (K - 1))
    # the masked loss is the loss of the fresh parameters (noiseless quadratic: batches are exact)
    np.testing.assert_allclose(out.loss[0], state.init_loss, rtol=1e-6)
    assert out.loss[-1] < out.loss[0]


def test_runs_are_staggered_by_whole_truncations():
    T, K = 40, 10
    family = tasks.QuadraticFamily(dim=3)
    theta = LearnableSGD().init()
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    steps = jax.vmap(TruncatedUnroll(LearnableSGD(), family, T, K).init, in_axes=(None, 0))(theta, keys).step
    assert set(np.asarray(steps).tolist()) == {0, 10, 20, 30}
    flat = jax.vmap(TruncatedUnroll(LearnableSGD(), family, T, K, stagger=False).init, in_axes=(None, 0))(theta, keys)
    assert np.all(np.asarray(flat.step) == 0)


def test_pes_pairs_share_data_and_restart_xi_with_each_episode():
    """ξ sums the ε of the current episode: Var ξ = k σ² after k truncations, and it
    falls back to σ² when a new episode starts. The + and − runs share task and keys."""
    T, K, sigma, pairs = 15, 5, 0.05, 2048
    unroll = TruncatedUnroll(LearnableSGD(0.1), tasks.QuadraticFamily(dim=3), T, K, stagger=False)
    est = estimators.pes(unroll, pairs, sigma)
    theta = LearnableSGD(0.1).init()
    state = est.init(theta, jax.random.PRNGKey(0))
    step = jax.jit(est)
    variances = []
    for i in range(5):
        _, state, _ = step(theta, state, jax.random.PRNGKey(i + 1))
        variances.append(float(jnp.var(state.xi["log_lr"])) / sigma**2)
    np.testing.assert_allclose(variances, [1, 2, 3, 1, 2], rtol=0.15)
    plus, minus = (jax.tree.map(lambda x: x[:, j], state.inner) for j in (0, 1))
    np.testing.assert_array_equal(plus.key, minus.key)
    np.testing.assert_array_equal(plus.task.curvatures, minus.task.curvatures)
    assert not np.allclose(plus.params["x"], minus.params["x"])  # θ+ε and θ−ε trained differently


def test_horizon_must_be_a_multiple_of_the_truncation():
    with pytest.raises(ValueError, match=r"horizon 45 is not a multiple of truncation 10.*horizon 40 or 50"):
        TruncatedUnroll(LearnableSGD(), tasks.quadratic(), 45, 10)
    with pytest.raises(ValueError, match="positive integers"):
        TruncatedUnroll(LearnableSGD(), tasks.quadratic(), 40, 0)


def test_families_whose_tasks_change_shape_are_refused():
    random_family = tasks.RandomFamily(datasets=("digits",), cnn=False)
    with pytest.raises(ValueError, match=r"cannot be sampled inside jit/vmap.*structure\(key\)"):
        TruncatedUnroll(LearnableSGD(), random_family, 20, 10)

    class Shifty(TaskFamily):
        """Picks its dimension with Python state: traceable, but shapes vary between samples."""
        name = "shifty"
        dims = itertools.cycle([3, 4, 5])

        def sample(self, key, split="train"):
            return tasks.QuadraticFamily(dim=next(self.dims)).sample(key, split)

    with pytest.raises(ValueError, match="samples tasks of different shapes"):
        TruncatedUnroll(LearnableSGD(), Shifty(), 20, 10)
    # one fixed-shape draw of the random family is fine
    TruncatedUnroll(LearnableSGD(), random_family.structure(jax.random.PRNGKey(0)), 20, 10)
