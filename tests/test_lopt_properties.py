"""Properties every learned optimizer must have (MLP, LSTM, VeLO), checked with hypothesis.

- any parameter tree (0-d to 4-d leaves), float32 and bfloat16, keeps its shapes and dtypes;
- inf, NaN or 1e30 in the gradients (or the loss) never makes a parameter NaN;
- jit works, and vmap over a batch of thetas gives the same numbers as one theta at a time;
- a Python-float loss and a 0-d array loss give the same update;
- bad input (integer leaves, num_steps <= 0, a missing params/value=) is a clear ValueError.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import poisoned_trees
from minilopt.lopt.lstm import LSTMLOpt
from minilopt.lopt.mlp import MLPLOpt
from minilopt.lopt.velo import VeLO

LOPTS = {"mlp": MLPLOpt(), "lstm": LSTMLOpt(), "velo": VeLO(hidden=8, mixtures=4)}
NEEDS_LOSS = {"velo"}
# Every new tree shape is a new compile, and VeLO's compile is the slow one (seconds):
# few examples keep this file well under its 90 s budget on two busy cores.
SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_theta(name, seed=0):
    """A random theta in which every weight matters: VeLO's init is random already; the MLP
    and the LSTM start from hand-set or zero output layers, so they get noise added."""
    theta = LOPTS[name].init(jax.random.key(seed))
    if name == "velo":
        return theta
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    return treedef.unflatten([x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@functools.cache  # built when a test first needs it: xdist's other worker imports this file too
def theta_for(name):
    return random_theta(name)


def extra(name, loss=1.25):
    return {"value": loss} if name in NEEDS_LOSS else {}


@pytest.mark.parametrize("name", sorted(LOPTS))
@SETTINGS
@given(tree=poisoned_trees(), loss=st.sampled_from([0.7, 1e30, np.inf, np.nan]))
def test_any_tree_keeps_shapes_and_dtypes_and_stays_finite(name, tree, loss):
    params, grads = tree
    opt = LOPTS[name].optimizer(theta_for(name), num_steps=10)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for step in range(2):   # the bad gradient (and loss) enters the state, then is read back
        updates, state = update(grads, state, params, **extra(name, loss))
        for key, p in params.items():
            assert updates[key].shape == p.shape and updates[key].dtype == p.dtype, key
            assert np.all(np.isfinite(np.asarray(updates[key], np.float32))), (key, step)
        params = optax.apply_updates(params, updates)
        for key, p in params.items():
            assert p.dtype == tree[0][key].dtype
            assert not np.any(np.isnan(np.asarray(p, np.float32))), (key, step)


ALL_RANKS = {"scalar": jnp.array(0.3), "mat": jnp.linspace(-1, 1, 6).reshape(2, 3) * 0.5,
             "conv": jnp.linspace(-1, 1, 16).reshape(2, 2, 2, 2)}
ALL_GRADS = jax.tree.map(lambda p: jnp.cos(7.0 * p + jnp.arange(p.size).reshape(p.shape)), ALL_RANKS)


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_vmap_over_thetas_matches_one_theta_at_a_time(name):
    lopt = LOPTS[name]

    def two_steps(theta):
        opt = lopt.optimizer(theta, num_steps=10)
        state, params = opt.init(ALL_RANKS), ALL_RANKS
        for step in range(2):
            grads = jax.tree.map(lambda g: g * (1 + step), ALL_GRADS)
            updates, state = opt.update(grads, state, params, **extra(name, 2.0 - step))
            params = optax.apply_updates(params, updates)
        return jax.tree.map(lambda p, p0: p - p0, params, ALL_RANKS)   # the total change

    thetas = [theta_for(name), random_theta(name, seed=1)]
    batched = jax.jit(jax.vmap(two_steps))(jax.tree.map(lambda *xs: jnp.stack(xs), *thetas))
    one = jax.jit(two_steps)
    for i, theta in enumerate(thetas):
        single = one(theta)
        scale = max(float(jnp.abs(change).max()) for change in single.values())
        assert scale > 0, "the parameters did not move"
        for key in ALL_RANKS:   # (a tensor may legitimately not move: e.g. VeLO's dead ReLUs at init)
            np.testing.assert_allclose(batched[key][i], single[key], rtol=1e-5, atol=1e-5 * scale, err_msg=key)
    assert any(not np.allclose(batched[k][0], batched[k][1]) for k in ALL_RANKS)


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_python_float_and_array_loss_agree(name):
    """Eager calls (no jit to hide the difference): float, 0-d jax array, numpy scalar."""
    opt = LOPTS[name].optimizer(theta_for(name), num_steps=10)
    params = {"w": ALL_RANKS["mat"]}
    for loss in (0.37, -2.5e4):
        results = []
        for value in (float(loss), jnp.asarray(loss, jnp.float32), np.float32(loss)):
            state = opt.init(params)
            for step in range(3):   # VeLO's loss features turn on after more than 2 losses
                updates, state = opt.update({"w": ALL_GRADS["mat"]}, state, params, value=value * (1 + step))
            results.append(updates["w"])
        for other in results[1:]:
            np.testing.assert_allclose(other, results[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_integer_leaves_are_rejected_by_name(name):
    opt = LOPTS[name].optimizer(theta_for(name), num_steps=10)
    with pytest.raises(ValueError, match=r"\['steps_seen'\]"):
        opt.init({"w": jnp.ones(3), "steps_seen": jnp.zeros((), jnp.int32)})
    with pytest.raises(ValueError, match=r"\['mask'\]"):
        opt.init({"mask": jnp.ones(2, bool)})


@pytest.mark.parametrize("name", sorted(LOPTS))
@pytest.mark.parametrize("num_steps", [0, -5])
def test_nonpositive_num_steps_is_rejected(name, num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        LOPTS[name].optimizer(theta_for(name), num_steps=num_steps)


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_missing_value_is_a_clear_error_only_where_the_loss_is_needed(name):
    opt = LOPTS[name].optimizer(theta_for(name), num_steps=10)
    params = {"w": ALL_RANKS["mat"]}
    state = opt.init(params)
    if name in NEEDS_LOSS:
        with pytest.raises(ValueError, match="value="):
            opt.update({"w": ALL_GRADS["mat"]}, state, params)
    else:
        updates, _ = opt.update({"w": ALL_GRADS["mat"]}, state, params)
        assert np.all(np.isfinite(updates["w"]))
    if name != "lstm":   # the LSTM reads only gradients; the others read the parameters
        with pytest.raises(ValueError, match="param"):
            opt.update({"w": ALL_GRADS["mat"]}, state, **extra(name))
