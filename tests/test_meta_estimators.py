"""Meta-gradient estimators against the facts of specs/meta_training.md.

The test problem: SGD's log learning rate on a fixed, noiseless, ill-conditioned
quadratic, started at x = 0 (so every episode is the same), horizon T = 100,
truncation K = 10, σ = 0.01. Its meta-loss is a smooth function of one number, so
`jax.grad` of the whole unroll (checked by finite differences) is the truth.

Estimates are repeated over R independent replicas (vmapped), so every comparison
is made within a measured standard error. This is lesson 07's problem, and the lesson's
`widgets.es_spread` runs the replicas (a test run compiles it once, for both).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt import tasks
from minilopt.lopt.hand import LearnableSGD
from minilopt.meta import estimators
from minilopt.meta.unroll import TruncatedUnroll
from minilopt.tasks.base import Task, pytree_dataclass, static
from minilopt.widgets import es_spread

T, K, SIGMA, R = 100, 10, 0.01, 256
LOPT = LearnableSGD(0.3)
THETA = LOPT.init()
UNROLL = TruncatedUnroll(LOPT, tasks.quadratic(dim=10, condition=100.0, init_scale=0.0), T, K, stagger=False,
                         clip=1e6)


def meta_loss(log_lr):
    return UNROLL.episode({"log_lr": jnp.asarray(log_lr, jnp.float32)}, jax.random.PRNGKey(0))[0]


@functools.lru_cache(maxsize=None)
def true_gradient() -> float:
    """jax.grad of the whole unroll: the full_grad estimator (checked by finite differences below)."""
    est = estimators.full_grad(UNROLL, 2)
    grad, _, metrics = jax.jit(est)(THETA, est.init(THETA, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    assert int(metrics["non_finite"]) == 0
    return float(grad["log_lr"])


@functools.lru_cache(maxsize=None)
def truncated_grad_estimate() -> float:
    """Truncated backprop averaged over one whole episode (T/K calls): deterministic here,
    so one replica."""
    est = estimators.truncated_grad(UNROLL, 4)
    episode = jax.jit(lambda keys: estimators.episode_estimates(est, THETA, keys, T // K))
    return float(episode(jax.random.PRNGKey(0)[None])["log_lr"][0])


@functools.lru_cache(maxsize=None)
def episode_estimates(particles: int, seed: int = 0) -> dict:
    """{"ES (full horizon)", "truncated ES", "PES": (R,) estimates of dL/dlog_lr}, each the
    mean of the estimator over one whole episode (1 call for ES, T/K for the truncated
    ones), over R independent replicas. The problem is lesson 07's, so is the program:
    `widgets.es_spread`, R/2 replicas a call (as the lesson), run with two keys."""
    spread = es_spread(K, particles, R // 2)
    halves = [spread(SIGMA, jax.random.PRNGKey(2 * seed + i)) for i in range(2)]
    return {name: np.concatenate([np.asarray(h[name], np.float64) for h in halves])
            for name in ("ES (full horizon)", "truncated ES", "PES")}


def mean_and_se(x):
    return x.mean(), x.std(ddof=1) / np.sqrt(len(x))


def test_full_unroll_gradient_matches_finite_differences():
    h = 1e-2
    losses = jax.jit(jax.vmap(meta_loss))(THETA["log_lr"] + jnp.array([h, -h]))
    fd = float(losses[0] - losses[1]) / (2 * h)
    g = true_gradient()
    assert g < 0, "a larger learning rate must help on this slow, stable quadratic"
    np.testing.assert_allclose(g, fd, rtol=2e-3)


@pytest.mark.parametrize("name", ["ES (full horizon)", "PES"])
def test_es_and_pes_are_unbiased_for_the_whole_horizon(name):
    mean, se = mean_and_se(episode_estimates(4)[name])
    g = true_gradient()
    assert se < 0.1 * abs(g), f"the test has no power: standard error {se} vs gradient {g}"
    assert abs(mean - g) < 4 * se, f"{name}: mean {mean:.5f} ± {se:.5f}, jax.grad of the whole unroll {g:.5f}"


def test_pes_matches_full_horizon_es_within_standard_error():
    (m_pes, se_pes), (m_es, se_es) = (mean_and_se(episode_estimates(4)[name]) for name in ("PES", "ES (full horizon)"))
    assert abs(m_pes - m_es) < 4 * np.hypot(se_pes, se_es), (m_pes, se_pes, m_es, se_es)


@pytest.mark.parametrize("name", ["truncated backprop", "truncated ES"])
def test_truncated_estimators_show_short_horizon_bias(name):
    """Truncated estimators treat the start of each truncation as fixed, so they miss that
    a larger learning rate earlier would have started later truncations closer to the
    optimum. They under-value a larger learning rate: the same sign as the truth but a
    much smaller magnitude, i.e. a bias towards learning rates that are too small
    (the short-horizon bias of Wu et al. 2018)."""
    x = np.array([truncated_grad_estimate()]) if name == "truncated backprop" else episode_estimates(4)[name]
    mean, se = x.mean(), (x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0)
    g = true_gradient()
    assert np.sign(mean) == np.sign(g)
    assert abs(mean) < 0.75 * abs(g), f"{name}: {mean:.5f} ± {se:.5f} is not biased against the truth {g:.5f}"
    assert (mean - g) > 4 * se + 0.1 * abs(g), "the bias must be significant, pointing towards smaller rates"


def _variance_ratio_bounds(n1, n2, z=3.3):
    """A ~99.9% interval for var1/var2 of two normal samples with equal true variance."""
    spread = z * np.sqrt(2.0 / (n1 - 1) + 2.0 / (n2 - 1))
    return np.exp(-spread), np.exp(spread)


@pytest.mark.parametrize("name", ["ES (full horizon)", "PES"])
def test_four_times_the_pairs_quarter_the_variance(name):
    """The estimate is a mean over N independent pairs, so its variance goes as 1/N
    (not 1/√N, ratio 2; nor 1/N², ratio 16)."""
    v4, v16 = episode_estimates(4)[name].var(ddof=1), episode_estimates(16, seed=1)[name].var(ddof=1)
    lo, hi = _variance_ratio_bounds(R, R)
    assert 4 * lo < v4 / v16 < 4 * hi, f"{name}: variance ratio N=4 / N=16 is {v4 / v16:.3f}, expected 4"


# ---------------------------------------------------------------------------
# Antithetic ES on a linear meta-loss
# ---------------------------------------------------------------------------
@pytree_dataclass
class LinearTask(Task):
    """loss(x) = w·x + c + ½ a |x|²: linear when a = 0."""
    w: jnp.ndarray
    c: jnp.ndarray
    a: jnp.ndarray
    name: str = static("linear")

    def init(self, key):
        return {"x": jnp.zeros_like(self.w)}

    def batch(self, key, split="train"):
        return jnp.zeros(())

    def loss(self, params, batch):
        x = params["x"]
        return jnp.dot(self.w, x) + self.c + 0.5 * self.a * jnp.dot(x, x)


class Drift:
    """An "optimizer" that ignores gradients and moves x by θ each step: x_t = t·θ."""
    name = "drift"

    def init(self, key=None):
        return {"v": jnp.zeros(3)}

    def optimizer(self, theta, num_steps=None):
        import optax

        return optax.GradientTransformationExtraArgs(
            lambda params: optax.EmptyState(),
            lambda grads, state, params=None, **kw: ({"x": theta["v"] + 0 * grads["x"]}, state))


W = np.array([1.0, -2.0, 0.5], np.float32)
# (w, c, a) of six meta-losses: the linear base, + a constant, + an even term, and the unit slopes
CASES = [(W, 0.0, 0.0), (W, 123.0, 0.0), (W, 0.0, 5.0)] + [(np.eye(3, dtype=np.float32)[i], 0.0, 0.0) for i in range(3)]


@functools.lru_cache(maxsize=None)
def linear_es(particles: int, num_keys: int = 64, sigma: float = 0.1) -> np.ndarray:
    """(cases, keys, 3): ES estimates for every case in CASES, with the same keys across cases."""
    def one(task, key):
        unroll = TruncatedUnroll(Drift(), task, 4, 4, normalise=False, clip=1e9, stagger=False)
        est = estimators.es(unroll, particles, sigma)
        return est(Drift().init(), (), key)[0]["v"]

    tasks_ = jax.tree.map(lambda *x: jnp.stack(x), *[LinearTask(jnp.asarray(w), jnp.float32(c), jnp.float32(a))
                                                      for w, c, a in CASES])
    keys = jax.random.split(jax.random.PRNGKey(0), num_keys)
    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
    return np.asarray(run(tasks_, keys), np.float64)


@pytest.mark.parametrize("particles", [1, 16])
def test_antithetic_es_on_a_linear_meta_loss(particles):
    """The meta-loss is mean_{t=1..3} w·(tθ) + c = 2 w·θ + c (step 0 is masked), so ∇ = 2w.
    With antithetic pairs the constant and every even term cancel exactly, for any N:
    ĝ = S·∇ with S = Σ εεᵀ/(σ²N), the same S for every linear function (same keys)."""
    est = linear_es(particles)
    base, shifted, curved, units = est[0], est[1], est[2], est[3:]
    np.testing.assert_allclose(shifted, base, atol=2e-3 * np.abs(base).max())  # c = 123 is large next to ĝ
    np.testing.assert_allclose(curved, base, rtol=1e-5, atol=1e-6)
    # ĝ is linear in w with one matrix S per key: the estimate for w is S·2w
    S = np.stack(list(units), axis=-1) / 2.0                     # (keys, 3, 3)
    np.testing.assert_allclose(base, np.einsum("kij,j->ki", S, 2 * W), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S, np.swapaxes(S, 1, 2), rtol=1e-4, atol=1e-5)
    assert np.all(np.linalg.eigvalsh(S) > -1e-5), "S = Σ εεᵀ/(σ²N) is positive semi-definite"
    if particles == 1:  # one pair: S = εεᵀ/σ² has rank one
        assert np.all(np.linalg.matrix_rank(S, tol=1e-3) == 1)


def test_antithetic_es_on_a_linear_meta_loss_is_unbiased():
    est = linear_es(16)[0]  # 64 keys × 16 pairs
    mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(len(est))
    # each pair's ε_j (ε·a)/σ² has variance |a|² + a_j² (Gaussian moments), a = 2w
    np.testing.assert_allclose(se, np.sqrt((np.sum((2 * W) ** 2) + (2 * W) ** 2) / (16 * len(est))), rtol=0.35)
    assert np.all(np.abs(mean - 2 * W) < 4 * se), (mean, se)


# ---------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------
def test_clean_zeroes_and_counts_non_finite_entries():
    grad = {"a": jnp.array([1.0, jnp.nan, 3.0]), "b": jnp.array([[jnp.inf, 4.0]])}
    cleaned, bad, norm = estimators.clean(grad)
    assert int(bad) == 2
    np.testing.assert_array_equal(cleaned["a"], [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(cleaned["b"], [[0.0, 4.0]])
    np.testing.assert_allclose(float(norm), np.sqrt(1 + 9 + 16), rtol=1e-6)


def test_divergent_runs_give_finite_meta_gradients():
    """SGD with a learning rate of e^60 overflows: the losses become inf/NaN, count as
    the clip value, and any non-finite meta-gradient entry is zeroed and counted."""
    unroll = TruncatedUnroll(LOPT, tasks.quadratic(dim=4, condition=10.0), 20, 10, stagger=False)
    est = estimators.truncated_grad(unroll, 2)
    theta = {"log_lr": jnp.asarray(60.0)}
    grad, _, metrics = jax.jit(est)(theta, est.init(theta, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    assert np.isfinite(float(grad["log_lr"]))
    assert int(metrics["non_finite_losses"]) > 0
    np.testing.assert_allclose(float(metrics["meta_loss"]), unroll.clip)  # every unmasked step clipped
    assert int(metrics["non_finite"]) == 1 and float(grad["log_lr"]) == 0.0


def test_estimators_reject_bad_settings():
    with pytest.raises(ValueError, match="sigma"):
        estimators.pes(UNROLL, 4, sigma=0.0)
    with pytest.raises(ValueError, match="particles"):
        estimators.es(UNROLL, 0)
    with pytest.raises(ValueError, match="unknown estimator 'pess'"):
        estimators.make("pess", UNROLL, 4)
