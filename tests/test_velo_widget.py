"""The lesson-05 VeLO explorer: its callback redraws, and its surface is VeLO's update."""
import jax
import jax.numpy as jnp
import numpy as np

from minilopt.lopt import velo
from minilopt.widgets import velo_explorer


def test_velo_explorer_callback_draws_the_update_surface():
    theta = velo.init_theta(jax.random.PRNGKey(3), 8, 4)
    explorer = velo_explorer(theta, num_steps=50, n=9)
    first = explorer.png
    png = explorer.update(fraction=0.8, log10_rms=-1.0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png != first
    assert explorer.values() == {"fraction": 0.8, "log10_rms": -1.0}

    # the surface is what the optax transformation does to the same tensor
    g, m, update, _ = explorer.surface(0.8, -1.0)
    G, M = np.meshgrid(np.asarray(g), np.asarray(m))
    opt = velo.velo_optimizer(theta, 50)
    params = {"w": jnp.full((9, 9), 0.1)}
    state = opt.init(params)
    level = 10.0 ** -1.0
    state = state._replace(m={"w": (jnp.asarray(M),) * 3}, rms={"w": jnp.full((9, 9), level)},
                           fac={"w": {"v_row": jnp.full((9, 3), level), "v_col": jnp.full((9, 3), level)}},
                           iteration=jnp.asarray(40, jnp.int32))
    direct, _ = opt.update({"w": jnp.asarray(G)}, state, params, value=1.0)
    # eager vs jitted float32: sums may be ordered differently; 1e-4 is the parity tolerance
    np.testing.assert_allclose(update, direct["w"], rtol=1e-4, atol=1e-10)
    assert np.abs(update).max() > 0
