"""hyper.scaled: a learned optimizer's global step multiplier, learned online by hyperoptimize.

- scaled(opt, s) is s times opt's update, exactly, and keeps dtypes;
- the hypergradient hyperoptimize computes for log s is the closed form ⟨g_t, Δ_{t−1}⟩, in both modes;
- the read-out names the value "scale" (log_scale is the raw variable);
- a too-timid optimizer (SGD at 1e-3 on a quadratic) gets its scale grown and trains further;
- bad input: a non-positive scale.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import hyper, tasks
from minilopt.lopt.mlp import MLPLOpt

PARAMS = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array(0.3, jnp.bfloat16)}
GRADS = jax.tree.map(lambda p: jnp.cos(5 * p.astype(jnp.float32) + 0.2).astype(p.dtype), PARAMS)


def test_scaled_is_the_scale_times_the_update():
    lopt = MLPLOpt()
    inner = lopt.optimizer(lopt.init(jax.random.key(0)), 20)
    for s in (1.0, 2.5):
        opt = hyper.scaled(inner, s)
        u, _ = opt.update(GRADS, opt.init(PARAMS), PARAMS)
        ref, _ = inner.update(GRADS, inner.init(PARAMS), PARAMS)
        for k in PARAMS:
            assert u[k].dtype == PARAMS[k].dtype
            np.testing.assert_allclose(np.asarray(u[k], np.float32), s * np.asarray(ref[k], np.float32), rtol=1e-2)
    # and s = 1 is the optimizer itself, bit for bit
    u, _ = hyper.scaled(inner).update(GRADS, hyper.scaled(inner).init(PARAMS), PARAMS)
    np.testing.assert_array_equal(u["a"], inner.update(GRADS, inner.init(PARAMS), PARAMS)[0]["a"])


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_the_hypergradient_of_log_scale_is_the_last_step_dotted_with_todays_gradient(mode):
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    opt = hyper.hyperoptimize(hyper.scaled(optax.sgd(0.1, momentum=0.5), 2.0), by=optax.sgd(0.0), mode=mode)
    state = opt.init(params)
    g1, g2 = {"w": jnp.array([0.3, -0.1, 0.2])}, {"w": jnp.array([-0.5, 0.4, 0.1])}
    d1, state = opt.update(g1, state, params)
    params = optax.apply_updates(params, d1)
    _, state = opt.update(g2, state, params)
    # f_t = L(w_{t−1} + s Δ_{t−1}):  ∂f/∂ log s = ⟨g_t, s Δ_lopt⟩ = ⟨g_t, d1⟩
    np.testing.assert_allclose(hyper.hypergrads(state)[0]["log_scale"], jnp.vdot(g2["w"], d1["w"]), rtol=1e-6)
    assert hyper.hyperparams(state)[0] == pytest.approx({"scale": 2.0})       # by=sgd(0): s unchanged
    assert set(hyper.hyperparams(state, raw=True)[0]) == {"log_scale"}


def test_a_timid_optimizer_gets_its_scale_grown_and_trains_further():
    task = tasks.quadratic(dim=5, condition=10.0)
    timid = optax.sgd(1e-3)
    tuned = hyper.hyperoptimize(hyper.scaled(timid), by=optax.adam(0.05))
    traj = hyper.trajectory(task, tuned, 200, jax.random.key(0))
    alone = hyper.trajectory(task, hyper.scaled(timid), 200, jax.random.key(0))
    scale = np.asarray(traj.hyperparams[0]["scale"])
    assert scale[-1] > 10 and np.all(np.isfinite(scale))
    assert traj.loss[-1] < 0.1 * alone.loss[-1]


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_a_non_positive_scale_is_rejected(scale):
    with pytest.raises(ValueError, match="scale must be a positive"):
        hyper.scaled(optax.sgd(0.1), scale)
