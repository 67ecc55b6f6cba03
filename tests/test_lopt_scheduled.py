"""ScheduledLOpt against closed forms: at init it is Adam; the schedule scales the step
by exactly exp(s); its loss features are scale free; bad gradients never reach the
parameters. Also the registry that names every learned optimizer, VeLO's Adam-like
start, and the log meta-loss of the unroll."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import tasks
from minilopt.lopt import VeLO, registry
from minilopt.lopt.scheduled import ScheduledLOpt
from minilopt.meta.unroll import LOG_FLOOR, TruncatedUnroll

KEY = jax.random.key(0)


def run(opt, steps, grad_fn, params, loss_fn=lambda t: 1.0 / (t + 1)):
    state = opt.init(params)
    for t in range(steps):
        updates, state = opt.update(grad_fn(params, t), state, params, value=jnp.float32(loss_fn(t)))
        params = optax.apply_updates(params, updates)
    return params, state


def grads(params, t):
    return jax.tree.map(lambda x: jnp.sin(3.0 * x + t) + 0.1 * t, params)


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4), "s": jnp.asarray(0.3)}


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_at_init_it_is_adam(lr):
    lopt = ScheduledLOpt(lr=lr)
    ours, _ = run(lopt.optimizer(lopt.init(KEY), 50), 8, grads, PARAMS)
    ref, _ = run(optax.adam(lr), 8, grads, PARAMS)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_schedule_scales_every_step_by_exp_s():
    lopt = ScheduledLOpt()
    theta = lopt.init(KEY)
    bias = theta["schedule"]["layer_1"]["b"]
    doubled = {**theta, "schedule": {**theta["schedule"], "layer_1": {
        **theta["schedule"]["layer_1"], "b": bias + jnp.log(2.0)}}}
    opt, opt2 = lopt.optimizer(theta, 20), lopt.optimizer(doubled, 20)
    s1, s2 = opt.init(PARAMS), opt2.init(PARAMS)
    for t in range(3):
        g = grads(PARAMS, t)
        u1, s1 = opt.update(g, s1, PARAMS, value=1.0)
        u2, s2 = opt2.update(g, s2, PARAMS, value=1.0)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(b, 2.0 * a, rtol=1e-6)


def test_loss_features_are_scale_free_and_read_the_trend():
    lopt = ScheduledLOpt()
    theta = jax.tree.map(lambda x: x + 0.05, lopt.init(KEY))   # every weight in use
    falling = lambda t: 2.0 * 0.9 ** t
    a, sa = run(lopt.optimizer(theta, 30), 6, grads, PARAMS, falling)
    b, sb = run(lopt.optimizer(theta, 30), 6, grads, PARAMS, lambda t: 1e4 * falling(t))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5)
    # the relative log loss of step t is t·log 0.9; both averages start at step 0's value and follow
    # e ← β e + (1 − β) r: the fast one falls faster, so the trend (fast − slow) is negative
    relative = np.arange(6) * np.log(0.9)
    for k, beta in enumerate((0.9, 0.99)):
        e = relative[0]
        for r in relative[1:]:
            e = beta * e + (1 - beta) * r
        np.testing.assert_allclose(sa.trends[0, k], e, rtol=1e-5)
    assert sa.trends[0, 0] - sa.trends[0, 1] < 0
    np.testing.assert_allclose(sa.first[0], np.log(2.0), rtol=1e-6)


def test_non_finite_gradients_and_losses_never_reach_the_parameters():
    lopt = ScheduledLOpt()
    opt = lopt.optimizer(lopt.init(KEY), 10)
    state = opt.init(PARAMS)
    bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan).at[...].set(jnp.inf) if x.ndim == 0 else
                       x.at[0].set(jnp.nan).at[-1].set(-jnp.inf), PARAMS)
    for value in (jnp.nan, jnp.inf, -1.0, None):
        updates, state = opt.update(bad, state, PARAMS, value=value)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    # and with no loss at all it still trains
    task = tasks.quadratic(dim=5)
    p = task.init(KEY)
    start = float(task.loss(p, task.batch(KEY)))
    opt = ScheduledLOpt(lr=0.1).optimizer(ScheduledLOpt(lr=0.1).init(KEY), 100)
    state = opt.init(p)
    for _ in range(100):
        u, state = opt.update(jax.grad(task.loss)(p, task.batch(KEY)), state, p)
        p = optax.apply_updates(p, u)
    assert float(task.loss(p, task.batch(KEY))) < 0.05 * start


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="b1=0.8 must be one of momentum_decays"):
        ScheduledLOpt(b1=0.8)
    with pytest.raises(ValueError, match="lr > 0"):
        ScheduledLOpt(lr=0.0)


def test_the_registry_names_every_learned_optimizer():
    assert set(registry.LOPTS) == {"mlp", "scheduled", "velo", "lstm", "sgd", "adam"}
    for name, cls in registry.LOPTS.items():
        assert registry.canonical(cls.__name__) == name == registry.canonical(name)
    velo = registry.make("velo", {"hidden": 8, "mixtures": 4})
    assert isinstance(velo, VeLO) and registry.name_of(velo) == "velo"
    assert registry.name_of(registry.make("scheduled")) == "scheduled"     # not its base class, MLPLOpt
    with pytest.raises(ValueError, match=r"unknown learned optimizer 'nope'.*'velo'"):
        registry.make("nope")
    with pytest.raises(ValueError, match=r"MLPLOpt has no argument\(s\) \['width'\]; it accepts .*hidden"):
        registry.make("mlp", {"width": 3})
    with pytest.raises(ValueError, match=r"must be a dict of keyword arguments, got \[32\]"):
        registry.make("mlp", [32])


def test_velo_adam_start_steps_along_the_normalised_adam_direction():
    # Δ = lr_mult · 0.001 · sqrt(mean p²) · n(m/sqrt(rms)): on the first step m/sqrt(rms) = 0.1 g / sqrt(0.001 g²)
    # = sign(g)·sqrt(10), normalised over the tensor to sign(g) (up to the 1e-3 noise of the other weights)
    velo = VeLO(hidden=8, mixtures=4, start="adam")
    opt = velo.optimizer(velo.init(KEY), 100)
    p = {"w": jax.random.normal(jax.random.key(1), (6, 5))}
    g = {"w": jax.random.normal(jax.random.key(2), (6, 5))}
    u, _ = opt.update(g, opt.init(p), p, value=1.0)
    want = -10.0 * 0.001 * np.sqrt(np.mean(np.square(p["w"]))) * np.sign(g["w"])
    # every other first-layer weight starts 1000x smaller than init_theta's, but the P-way mixing multiplies
    # by 100: they move each element's step by ~10% (the mean step by less), never its sign
    assert np.all(np.sign(u["w"]) == np.sign(want))
    np.testing.assert_allclose(u["w"], want, rtol=0.3)
    np.testing.assert_allclose(np.mean(np.abs(u["w"])), np.abs(want).mean(), rtol=0.1)
    with pytest.raises(ValueError, match="start='warm'"):
        VeLO(hidden=8, mixtures=4, start="warm")
    # a random start has no such structure: its first step is far from this one
    rand = VeLO(hidden=8, mixtures=4)
    u_rand, _ = rand.optimizer(rand.init(KEY), 100).update(g, rand.optimizer(rand.init(KEY), 100).init(p), p, value=1.0)
    assert not np.allclose(u_rand["w"], want, rtol=0.5)


def test_the_log_meta_loss_is_the_log_of_the_clipped_ratio():
    task = tasks.quadratic(dim=3)
    unroll = TruncatedUnroll(registry.make("sgd"), task, 10, 5, clip=2.0, log_loss=True)
    plain = TruncatedUnroll(registry.make("sgd"), task, 10, 5, clip=2.0)
    loss = jnp.asarray([4.0, 1.0, 0.5, 1e-12, jnp.nan])
    np.testing.assert_allclose(unroll.meta_losses(loss, 2.0),
                               [np.log(2.0), np.log(0.5), np.log(0.25), LOG_FLOOR, np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(plain.meta_losses(loss, 2.0), [2.0, 0.5, 0.25, 5e-13, 2.0], rtol=1e-6)
    assert unroll.config()["log_loss"] and not plain.config()["log_loss"]
