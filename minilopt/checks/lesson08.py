"""Checkers for lesson 08: sharding the particle axis, and a safe meta-update."""
from __future__ import annotations

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
    hint = ("put the array on the devices with jax.device_put and a NamedSharding of this mesh; its partition "
            "spec names the mesh axis that the LEADING array axis is split over (\"particles\"); the other axes "
            "stay whole")
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
