import jax
import jax.numpy as jnp
import numpy as np

from minilopt import nn


def test_truncated_normal_has_the_requested_std():
    x = nn.truncated_normal(jax.random.key(0), (200_000,), 0.3)
    assert abs(float(x.std()) - 0.3) < 0.005 and float(jnp.abs(x).max()) <= 0.3 / 0.8796 * 2 + 1e-6


def test_lstm_cell_closed_form_with_zero_weights():
    params = {"w": jnp.zeros((5, 8)), "b": jnp.zeros((8,))}
    c0 = jnp.array([1.0, -2.0])
    h, (h2, c) = nn.lstm_cell(params, jnp.ones(3), (jnp.zeros(2), c0))
    sig = lambda v: 1 / (1 + np.exp(-v))
    np.testing.assert_allclose(c, sig(1.0) * np.asarray(c0), rtol=1e-6)  # i·tanh(g) = 0.5·0
    np.testing.assert_allclose(h, 0.5 * np.tanh(np.asarray(c)), rtol=1e-6)
    assert jnp.array_equal(h, h2)


def test_softmax_cross_entropy_matches_the_definition():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 0])
    expected = np.mean([-np.log(np.exp(3) / np.exp([1, 2, 3]).sum()), np.log(3)])
    np.testing.assert_allclose(nn.softmax_cross_entropy(logits, labels), expected, rtol=1e-6)


def test_mlp_shapes():
    params = nn.mlp_init(jax.random.key(0), (4, 8, 3))
    assert nn.mlp(params, jnp.ones((2, 4))).shape == (2, 3)
