"""Mixture: one estimator per fixed-shape family, meta-gradients averaged."""
import jax
import numpy as np
import optax
import pytest

from minilopt import tasks
from minilopt.lopt.hand import LearnableSGD
from minilopt.meta import estimators, trainer
from minilopt.meta.mixture import Mixture
from minilopt.meta.unroll import TruncatedUnroll

LOPT = LearnableSGD(0.1)


def part(dim, condition):
    unroll = TruncatedUnroll(LOPT, tasks.quadratic(dim=dim, condition=condition), 20, 10, stagger=False)
    return estimators.make("full_grad", unroll, 2)


def test_the_mixture_is_the_mean_of_families_of_different_shapes():
    small, large = part(3, 10.0), part(7, 100.0)      # different shapes: no shared vmap possible
    mix = Mixture([small, large])
    theta, key = LOPT.init(), jax.random.PRNGKey(0)
    grad, _, metrics = jax.jit(mix)(theta, mix.init(theta, key), key)
    g_small, _, m_small = jax.jit(small)(theta, small.init(theta, key), jax.random.fold_in(key, 0))
    g_large, _, m_large = jax.jit(large)(theta, large.init(theta, key), jax.random.fold_in(key, 1))
    for a, b, c in zip(jax.tree.leaves(grad), jax.tree.leaves(g_small), jax.tree.leaves(g_large)):
        np.testing.assert_allclose(a, (b + c) / 2, rtol=1e-5)
        assert abs(float(b - c)) > 1e-6 * abs(float(b))       # the families really differ
    np.testing.assert_allclose(metrics["meta_loss"], (m_small["meta_loss"] + m_large["meta_loss"]) / 2, rtol=1e-5)
    assert mix.num_particles == 4


def test_the_trainer_runs_and_resumes_a_mixture(tmp_path):
    mix = Mixture([part(3, 10.0), part(5, 30.0)])
    opt = optax.adam(1e-2)
    full = trainer.meta_train(mix, LOPT.init(), 6, jax.random.PRNGKey(1), meta_optimizer=opt, progress=False)
    trainer.meta_train(mix, LOPT.init(), 3, jax.random.PRNGKey(1), meta_optimizer=opt, out=tmp_path,
                       checkpoint_every=3, progress=False)
    resumed = trainer.meta_train(mix, LOPT.init(), 6, jax.random.PRNGKey(1), meta_optimizer=opt, out=tmp_path,
                                 checkpoint_every=3, resume=True, progress=False)
    for a, b in zip(jax.tree.leaves(full.theta), jax.tree.leaves(resumed.theta)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        Mixture([])
    unroll = TruncatedUnroll(LOPT, tasks.quadratic(dim=3), 20, 10)
    with pytest.raises(ValueError, match="one kind"):
        Mixture([estimators.make("pes", unroll, 2), estimators.make("truncated_es", unroll, 2)])
