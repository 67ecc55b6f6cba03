"""VeLO from an untrained θ: bounded, finite updates for any finite input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt.lopt import velo as V
from minilopt.lopt import velo_fast as VF


def test_bounded_step_is_the_reference_product_below_the_bound():
    d = jnp.array([0.5, -3.0, 0.0, 2.0, -1e10, 1e-3, 0.0])
    mu = jnp.array([10.0, 100.0, 1e6, 9e4, 5.0, 2e4, -1e9])
    got = np.asarray(V.bounded_step(d, mu))
    assert got[2] == 0.0 and got[6] == 0.0  # d = 0 with a huge μ: 0, not 0 · inf = NaN
    nonzero_d = [0, 1, 3, 4, 5]
    got, d, mu = got[nonzero_d], np.asarray(d, np.float64)[nonzero_d], np.asarray(mu, np.float64)[nonzero_d]
    exact = d * np.exp(0.001 * mu)  # float64: no overflow for these
    inside = np.abs(exact) < V.STEP_BOUND
    assert inside.sum() == 2 and (~inside).sum() == 3
    np.testing.assert_allclose(got[inside], exact[inside], rtol=1e-6)
    np.testing.assert_array_equal(got[~inside], np.sign(exact[~inside]) * V.STEP_BOUND)


@pytest.mark.parametrize("path", ["reference", "fast"])
@pytest.mark.parametrize("case", ["outlier", "huge_grads", "tiny_params", "denormal"])
def test_untrained_velo_updates_are_bounded_for_finite_inputs(case, path):
    theta = V.VeLO(hidden=32, mixtures=16).init(jax.random.PRNGKey(3))
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    p = {"w": 0.05 * jax.random.normal(k1, (256, 256)), "b": jnp.zeros(256)}
    g = {"w": jax.random.normal(k2, (256, 256)), "b": jnp.ones(256)}
    if case == "outlier":      # one gradient element 1000x the others
        g["w"] = g["w"].at[7, 9].mul(1000.0)
    elif case == "huge_grads":
        g = jax.tree.map(lambda x: x * 1e30, g)
    elif case == "tiny_params":
        p = jax.tree.map(lambda x: x * 1e-20, p)
    else:
        g = jax.tree.map(lambda x: x * 1e-40, g)
    state = V.velo_init_state(theta, p, 100, False)
    velo_step = V.velo_step if path == "reference" else VF.velo_step
    step = jax.jit(lambda s, g, p: velo_step(theta, s, g, p, 1.0, 100, debug=True))
    for _ in range(3):
        updates, state, info = step(state, g, p)
        for (path, u), x, lr in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(p),
                                    np.asarray(info["lr_mult"])):
            scale = abs(float(lr)) * 0.001 * np.sqrt(np.mean(np.square(np.asarray(x, np.float64))) + 1e-9)
            assert np.all(np.isfinite(u)), (case, path)
            assert np.abs(np.asarray(u)).max() <= V.STEP_BOUND * scale * (1 + 1e-5), (case, path)
        p = jax.tree.map(lambda a, b: a + b, p, updates)
