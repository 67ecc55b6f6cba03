"""lopt.features against closed forms."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilopt.lopt import features as F

DECAYS = (0.5, 0.9, 0.99)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=12))
def test_momentum_and_rms_are_the_exponential_sums(gs):
    """From zero: m_T = Σ_t (1−β)·β^(T−1−t)·g_t, and the same with g² for rms."""
    m = F.accumulator_init(jnp.zeros(()), len(DECAYS))
    v = F.accumulator_init(jnp.zeros(()), len(DECAYS))
    for g in gs:
        m = F.momentum_update(m, jnp.float32(g), DECAYS)
        v = F.rms_update(v, jnp.float32(g), DECAYS)
    b = np.asarray(DECAYS)[:, None]
    T = len(gs)
    w = (1 - b) * b ** (T - 1 - np.arange(T))
    g32 = np.float32(gs).astype(np.float64)
    np.testing.assert_allclose(m, w @ g32, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v, w @ g32 ** 2, rtol=1e-4, atol=1e-4)


def test_accumulators_keep_the_decay_axis_last():
    g = jnp.ones((4, 3, 2))
    assert F.momentum_update(F.accumulator_init(g, 3), g, DECAYS).shape == (4, 3, 2, 3)
    assert F.rms_update(F.accumulator_init(g, 1), g, (0.999,)).shape == (4, 3, 2, 1)


@pytest.mark.parametrize("shape, dims", [
    ((), None), ((7,), None), ((8, 5), (0, 1)), ((5, 8), (1, 0)), ((4, 4), (1, 0)),
    ((3, 4, 2), (1, 0)), ((2, 7, 3), (1, 2)), ((2, 2, 9, 9), (3, 2)),
])
def test_factored_dims_follow_a_stable_argsort(shape, dims):
    assert F.factored_dims(shape) == dims


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (3, 5, 2), (5, 5)])
def test_factored_preconditioning_is_exact_for_rank_one_squares(shape):
    """If g² is an outer product a_i·b_j over the two factored axes, the row and
    column averages reconstruct it exactly, so one step from zero gives
    fac_g = sign(g) / sqrt(1 − β)."""
    rng = np.random.default_rng(0)
    d0, d1 = F.factored_dims(shape)
    a = rng.uniform(0.5, 2.0, shape[d0])
    b = rng.uniform(0.5, 2.0, shape[d1])
    other = [i for i in range(len(shape)) if i not in (d0, d1)]
    g2 = np.expand_dims(a, [i for i in range(len(shape)) if i != d0]) * \
        np.expand_dims(b, [i for i in range(len(shape)) if i != d1])
    g2 = np.broadcast_to(g2, shape)
    sign = np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0)
    g = jnp.asarray(sign * np.sqrt(g2), jnp.float32)
    state = F.factored_update(F.factored_init(g, 3), g, DECAYS)
    assert set(state) == {"v_row", "v_col"}
    assert other or state["v_row"].shape == (shape[d1], 3)
    fac_g = F.factored_precondition(state, g)
    expected = sign[..., None] / np.sqrt(1 - np.asarray(DECAYS))
    np.testing.assert_allclose(fac_g, expected, rtol=1e-4)


def test_factored_vector_is_rms_normalised_gradient():
    """rank < 2: v_diag is a plain average of g² (+1e-30) and fac_g = g·rsqrt(v + 1e-9)."""
    g = jnp.asarray([3.0, -0.5, 0.0, 2.0])
    state = F.factored_update(F.factored_init(g, 3), g, DECAYS)
    v = (1 - np.asarray(DECAYS)) * (np.asarray(g)[:, None] ** 2 + 1e-30)
    np.testing.assert_allclose(state["v_diag"], v, rtol=1e-6)
    np.testing.assert_allclose(F.factored_precondition(state, g),
                               np.asarray(g)[:, None] / np.sqrt(np.maximum(v + 1e-9, 1e-9)), rtol=1e-5)


def test_loss_buffer_horizons_released_and_legacy():
    released = F.loss_buffer_init(1000)
    halflife = np.logspace(1, 3, 10)
    np.testing.assert_allclose(released["decays"], np.exp(-1 / halflife), rtol=1e-6)
    legacy = F.loss_buffer_init(10)
    np.testing.assert_allclose(legacy["decays"], np.exp(-0.1), rtol=1e-6)
    assert float(released["running_min"][0]) == float(np.float32(1e12))
    with pytest.raises(ValueError):
        F.loss_buffer_init(0)


@pytest.mark.parametrize("loss", [3.0, 0.0])
def test_loss_buffer_debiased_means_track_a_constant_loss(loss):
    """A constant loss L: every debiased mean is L and so is the running min. For
    L = 0 this is exact, and each feature is clip(0 / max(1e-8, 0) − 1) = −1 once
    i > 2 (0 before). (For L ≠ 0 the features are ratios of rounding noise.)"""
    buf = F.loss_buffer_init(100)
    for i in range(1, 6):
        buf = F.loss_buffer_update(buf, loss)
        cm = buf["means"] / (1 - buf["decays"] ** i)
        np.testing.assert_allclose(cm, loss, rtol=1e-5)
        np.testing.assert_allclose(buf["running_min"], loss, rtol=1e-5)
        if loss == 0.0:
            np.testing.assert_array_equal(F.loss_buffer_features(buf), 0.0 if i <= 2 else -1.0)
    assert int(buf["iteration"]) == 5


def test_loss_buffer_clips_a_spike_to_twice_the_largest_average():
    buf = F.loss_buffer_update(F.loss_buffer_update(F.loss_buffer_init(50), 2.0), 2.0)
    spiked = F.loss_buffer_update(buf, 1e6)
    capped = F.loss_buffer_update(buf, 4.0)  # 2·|max debiased mean| = 4
    np.testing.assert_allclose(spiked["means"], capped["means"], rtol=1e-6)
    for bad in (np.nan, np.inf, -np.inf):  # never lets NaN/inf into the buffer
        out = F.loss_buffer_update(buf, bad)
        np.testing.assert_allclose(out["means"], capped["means"], rtol=1e-6)
    assert np.isfinite(F.loss_buffer_features(F.loss_buffer_update(F.loss_buffer_init(5), np.nan))).all()


def test_loss_features_see_a_falling_loss():
    """With a steadily falling loss, short averages sit below long ones relative to
    the running min, so every feature is in [−1, 0]."""
    buf = F.loss_buffer_init(100)
    for i in range(30):
        buf = F.loss_buffer_update(buf, 10.0 * 0.9 ** i)
    f = np.asarray(F.loss_buffer_features(buf))
    assert f.shape == (9,) and np.all(f <= 0) and np.all(f >= -1)


def test_fraction_embedding_crosses_zero_at_each_fraction():
    T = 1000
    for k, tau in enumerate(F.VELO_FRACTIONS):
        emb = F.fraction_embedding(tau * T, T)
        assert abs(float(emb[k])) < 1e-5
    np.testing.assert_allclose(F.fraction_embedding(0, T)[0], np.tanh(-0.3), rtol=1e-6)
    np.testing.assert_allclose(F.fraction_embedding(T, T), np.tanh(10 * (1 - np.asarray(F.VELO_FRACTIONS))),
                               rtol=1e-5, atol=1e-6)


def test_second_moment_normalise_closed_form():
    x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    ms = np.mean(np.asarray(x) ** 2)
    np.testing.assert_allclose(F.second_moment_normalise(x), np.asarray(x) / np.sqrt(1e-5 + ms), rtol=1e-6)
    cols = F.second_moment_normalise(x, axis=0)  # per column
    col_ms = np.mean(np.asarray(x) ** 2, axis=0)
    np.testing.assert_allclose(np.mean(np.asarray(cols) ** 2, axis=0), col_ms / (1e-5 + col_ms), rtol=1e-6)
    np.testing.assert_allclose(F.normaliser_from_sum_sq(jnp.sum(x ** 2), x.size), 1 / np.sqrt(1e-5 + ms), rtol=1e-6)


def test_check_params_names_every_non_float_leaf():
    F.check_params({"w": jnp.zeros(3), "b": jnp.zeros(2, jnp.bfloat16), "s": 1.5})
    with pytest.raises(ValueError) as err:
        F.check_params({"w": jnp.zeros(3), "steps": jnp.zeros((), jnp.int32), "layers": [jnp.zeros(2, bool)]})
    msg = str(err.value)
    assert "['steps']" in msg and "int32" in msg and "['layers'][0]" in msg and "['w']" not in msg
