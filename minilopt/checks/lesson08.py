"""Checkers for lesson 08: sharding the particle axis, a safe meta-update, and where truncated
meta-training settles."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import call, expect_close, fail


def shard_particles_reference(x, mesh: Mesh):
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("particles")))


def safe_meta_update_reference(theta, grad, opt_state, meta_optimizer):
    """Zero the non-finite entries of `grad`, count them, then one optax step on θ."""
    bad = sum(int(jnp.sum(~jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    grad = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
    updates, opt_state = meta_optimizer.update(grad, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, bad


def check_shard_particles(shard_particles):
    """shard_particles(x, mesh) -> x placed with its leading axis split over the mesh axis "particles"."""
    hint = ("place the array with a sharding of this mesh whose partition spec splits only the LEADING array axis, "
            "over the mesh axis the particles live on; the other axes stay whole (an empty spec would replicate "
            "the array instead of splitting it)")
    mesh = Mesh(np.array(jax.devices()), ("particles",))
    for shape in [(len(jax.devices()) * 4, 3), (len(jax.devices()) * 2,)]:
        x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
        got = call(shard_particles, x, mesh, what="shard_particles", hint=hint)
        expected = shard_particles_reference(x, mesh)
        if not isinstance(got, jax.Array):
            fail("shard_particles must return a jax.Array", repr(expected.sharding), repr(got), hint)
        expect_close(f"shard_particles: the values of an array of shape {shape}", x, got, hint)
        if not isinstance(got.sharding, NamedSharding) or got.sharding.spec != expected.sharding.spec:
            fail(f"shard_particles: the sharding of an array of shape {shape}", repr(expected.sharding),
                 repr(got.sharding), hint)
    print(f"shard_particles: the particle axis is split over {len(jax.devices())} device(s)")


def check_safe_meta_update(safe_meta_update):
    """safe_meta_update(theta, grad, opt_state, meta_optimizer) -> (theta, opt_state, num_non_finite)."""
    hint = ("count the non-finite entries over every leaf of the gradient, replace them by 0 with an elementwise "
            "select, then take the ordinary optax step (update, then apply the updates) with the cleaned gradient")
    theta = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array(0.5)}
    for grad in [{"w": jnp.array([0.1, jnp.nan, -0.2]), "b": jnp.array(jnp.inf)},
                 {"w": jnp.array([0.3, 0.1, -0.2]), "b": jnp.array(-1.0)}]:
        opt = optax.sgd(0.1)
        t_ref, _, bad_ref = safe_meta_update_reference(theta, grad, opt.init(theta), opt)
        out = call(safe_meta_update, theta, grad, opt.init(theta), opt, what="safe_meta_update", hint=hint)
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            fail("safe_meta_update must return (theta, opt_state, num_non_finite); the expected theta['w'] is",
                 t_ref["w"], repr(out), hint)
        new_theta, _, bad = out
        if not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(new_theta)):
            fail("safe_meta_update applied a non-finite gradient: θ now holds NaN or inf", t_ref["w"],
                 new_theta["w"], hint)
        expect_close("safe_meta_update: θ['w'] after the step", t_ref["w"], new_theta["w"], hint)
        expect_close("safe_meta_update: θ['b'] after the step", t_ref["b"], new_theta["b"], hint)
        expect_close("safe_meta_update: the number of non-finite entries", bad_ref, bad, hint)
    print("safe_meta_update: non-finite entries are zeroed, counted, and never applied")


# ---------------------------------------------------------------------------
# Exercise 3: where truncated meta-training settles
# ---------------------------------------------------------------------------
HORIZON = 40


def bias_task():
    """Lesson 06's ill-conditioned quadratic (dimension 10, condition 100), started at 0."""
    from .. import tasks
    return tasks.quadratic(dim=10, condition=100.0, init_scale=0.0)


@functools.lru_cache(maxsize=8)
def episode_meta_gradient(K: int):
    """A jitted log_lr -> the truncated meta-gradient of SGD on `bias_task()`, averaged over one episode.

    x_0 = 0, ℓ(x) = ½ Σ h_i (x_i − 1)², x ← x − e^{log_lr} ∇ℓ(x). Truncation j runs K steps from x_{jK};
    its loss L_j is the mean of ℓ over the K iterates after each step, and its gradient dL_j/dlog_lr treats
    x_{jK} as a constant (truncated backprop). The result is the mean of the HORIZON // K gradients."""
    h = jnp.asarray(bias_task().curvatures, jnp.float32)

    def truncation(log_lr, x):
        def step(x, _):
            x = x - jnp.exp(log_lr) * h * (x - 1.0)
            return x, 0.5 * jnp.sum(h * (x - 1.0) ** 2)
        x, losses = jax.lax.scan(step, x, None, length=K)
        return jnp.mean(losses), x

    @jax.jit
    def mean_gradient(log_lr):
        def body(x, _):
            grad, x = jax.grad(truncation, has_aux=True)(log_lr, jax.lax.stop_gradient(x))
            return x, grad
        return jax.lax.scan(body, jnp.zeros_like(h), None, length=HORIZON // K)[1].mean()

    return mean_gradient


def check_settled_lr(settled_lr, truncations=(1, 4), width=0.02):
    """settled_lr(K) -> the learning rate at which truncated meta-training with K-step truncations stops moving:
    the episode-mean truncated meta-gradient changes sign there. Checked by that property (negative just below
    the returned rate, positive just above), not against a stored number."""
    hint = ("meta-training stops where its meta-gradient is zero: evaluate the episode-mean truncated "
            "meta-gradient (each truncation differentiated from a constant start, averaged over the T/K truncations "
            "of one episode) at several rates, and close in on the rate where its sign changes from negative (raise "
            "the rate) to positive (lower it)")
    found = {}
    for K in truncations:
        lr = call(settled_lr, K, what="settled_lr", hint=hint)
        if lr is None or np.ndim(lr) != 0 or not np.isfinite(float(lr)) or not 0 < float(lr) < 2:
            fail(f"settled_lr(K={K}) must return one learning rate between 0 and 2 (SGD diverges on this quadratic "
                 "above 2)", "0 < lr < 2", lr, hint)
        lr = float(lr)
        grad = episode_meta_gradient(K)
        below, above = (float(grad(jnp.log(jnp.float32(lr * (1 + s * width))))) for s in (-1, 1))
        if below >= 0:
            fail(f"settled_lr(K={K}): {1 - width:.0%} of your rate {lr:.4g} the meta-gradient is already "
                 f"{below:+.3g}, so truncated training would LOWER the rate from there: it settles lower than yours",
                 "a negative meta-gradient just below the rate", below,
                 "use the TRUNCATED meta-gradient of K-step truncations, not the whole episode's; " + hint)
        if above <= 0:
            fail(f"settled_lr(K={K}): {1 + width:.0%} of your rate {lr:.4g} the meta-gradient is still "
                 f"{above:+.3g}, so truncated training would RAISE the rate from there: it settles higher",
                 "a positive meta-gradient just above the rate", above, hint)
        found[K] = lr
    print("settled_lr: " + ", ".join(f"K={K} settles at {lr:.3f}" for K, lr in found.items())
          + f" (the meta-gradient changes sign within ±{width:.0%} of it)")
    return found
