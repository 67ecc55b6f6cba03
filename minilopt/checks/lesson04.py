"""Checkers for lesson 04: a per-parameter MLP learned optimizer, built from scratch.

The references are `minilopt.lopt.mlp.MLPLOpt` and `minilopt.lopt.features`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..lopt import features
from ..lopt.mlp import MLPLOpt, MLPLOptState
from . import call, expect_close, fail

_RNG = np.random.default_rng(4)


def normalise_reference(x, eps=1e-5):
    """Each channel (last axis) over all the tensor's elements: x · rsqrt(eps + mean(x²))."""
    return np.asarray(MLPLOpt(eps=eps).normalise(jnp.asarray(x, jnp.float32)))


def time_features_reference(t, num_steps, fractions):
    """tanh(10·(t/T − τ)) for each τ in `fractions`."""
    return np.asarray(features.fraction_embedding(t, num_steps, fractions))


def step_reference(d, mu, exp_mult, step_mult):
    """Δ = d · exp(μ·c1) · c2 with c1 = exp_mult and c2 = step_mult."""
    return np.asarray(MLPLOpt(exp_mult=exp_mult, step_mult=step_mult).step(jnp.asarray(d), jnp.asarray(mu)))


def tensor_update_reference(lopt: MLPLOpt, theta, g, p, m, v, t, num_steps):
    """One tensor's (update, new_m, new_v), from the package's optax transformation."""
    opt = lopt.optimizer(theta, num_steps)
    state = MLPLOptState(jnp.asarray(t, jnp.int32), {"x": jnp.asarray(m)}, {"x": jnp.asarray(v)})
    updates, state = opt.update({"x": jnp.asarray(g)}, state, {"x": jnp.asarray(p)})
    return np.asarray(updates["x"]), np.asarray(state.momentum["x"]), np.asarray(state.rms["x"])


def check_normalise(normalise):
    """normalise(x) -> x with each channel (last axis) scaled to unit mean square over the tensor."""
    hint = ("one scale per channel: average x**2 over every axis except the last (keepdims=True), "
            "then multiply x by 1/sqrt(1e-5 + that mean)")
    for shape in [(4, 3), (2, 5, 6), (7,)]:
        x = _RNG.normal(size=shape) * _RNG.uniform(0.1, 10.0, size=shape[-1])
        got = call(normalise, x, what="normalise", hint=hint)
        expect_close(f"normalise of an array of shape {shape}", normalise_reference(x), got, hint,
                     rtol=1e-4, atol=1e-6)
    print("normalise: correct on 3 shapes")


def check_time_features(time_features):
    """time_features(t, num_steps, fractions) -> tanh(10·(t/T − τ)) for each τ."""
    hint = "fraction = t / num_steps; each feature is tanh(10 * (fraction - tau)), one per tau in fractions"
    fractions = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    for t, num_steps in [(0, 100), (50, 100), (100, 100), (3, 7)]:
        got = call(time_features, t, num_steps, fractions, what="time_features", hint=hint)
        expect_close(f"time features at t={t}, T={num_steps}", time_features_reference(t, num_steps, fractions),
                     got, hint, rtol=1e-4, atol=1e-6)
    print("time_features: correct at the start, the middle and the end of training")


def check_step(step):
    """step(d, mu, exp_mult, step_mult) -> Δ = d · exp(μ·exp_mult) · step_mult."""
    hint = "Δ = d * exp(mu * exp_mult) * step_mult: the magnitude output mu is scaled by exp_mult inside exp"
    for exp_mult, step_mult in [(1e-3, 1e-3), (1.0, 0.1), (0.5, 2.0)]:
        d, mu = _RNG.normal(size=6), 3.0 * _RNG.normal(size=6)
        got = call(step, d, mu, exp_mult, step_mult, what="step", hint=hint)
        expect_close(f"step with exp_mult={exp_mult}, step_mult={step_mult}",
                     step_reference(d, mu, exp_mult, step_mult), got, hint, rtol=1e-4, atol=1e-9)
    print("step: correct for 3 settings of (c1, c2)")


def check_tensor_update(tensor_update):
    """tensor_update(lopt, theta, g, p, m, v, t, num_steps) -> (update, new_m, new_v) for one tensor,
    exactly what `lopt.optimizer(theta, num_steps).update` does to that tensor."""
    hint = ("update m and v with g FIRST, build the channels from the new m and v, normalise them per tensor, "
            "append the time features, run the network, and return MINUS the step")
    lopt = MLPLOpt(step_mult=0.1, exp_mult=0.5)
    theta = lopt.init(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(theta)
    theta = treedef.unflatten([x + 0.2 * _RNG.normal(size=x.shape).astype(np.float32) for x in leaves])
    for shape, t in [((3, 4), 0), ((5,), 7), ((2, 2, 3), 19)]:
        g, p = _RNG.normal(size=shape).astype(np.float32), _RNG.normal(size=shape).astype(np.float32)
        m = 0.3 * _RNG.normal(size=shape + (4,)).astype(np.float32)
        v = _RNG.uniform(0.01, 1.0, size=shape + (1,)).astype(np.float32)
        got = call(tensor_update, lopt, theta, g, p, m, v, t, 20, what="tensor_update", hint=hint)
        if not (isinstance(got, tuple) and len(got) == 3):
            fail("tensor_update must return (update, new_m, new_v)", "a triple of arrays", got, hint)
        want = tensor_update_reference(lopt, theta, g, p, m, v, t, 20)
        expect_close(f"new momentum (shape {shape}, t={t})", want[1], got[1], hint, rtol=1e-5, atol=1e-7)
        expect_close(f"new rms (shape {shape}, t={t})", want[2], got[2], hint, rtol=1e-5, atol=1e-7)
        expect_close(f"update (shape {shape}, t={t})", want[0], got[0], hint, rtol=1e-4, atol=1e-7)
    print("tensor_update: matches MLPLOpt on 3 tensors")
