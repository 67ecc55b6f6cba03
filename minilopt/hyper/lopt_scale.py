"""A learned optimizer's global step multiplier, as a hyperparameter `hyperoptimize` can learn.

    opt = hyper.hyperoptimize(hyper.scaled(minilopt.pretrained(T)), by=optax.adam(0.01))
    hyper.hyperparams(state)[0]        # {"scale": s}: the multiplier learned so far

A learned optimizer has no learning rate to tune, but its whole update can be
scaled: Δ = s · Δ_lopt. `scaled` exposes s in the form the hyperoptimizer tower
expects (a `RuleState` whose `hyperparams` hold it raw, as `log_scale`, so s stays
positive), so the hypergradient of lessons 02-03 tunes it online:

    ∂f_t/∂ log s = ⟨g_t, s · Δ_lopt,t−1⟩ = ⟨g_t, Δ_{t−1}⟩

positive when the last step and today's gradient point the same way (the step was
too short: grow s), negative when the step overshot. With `by=optax.adam(κ)`, log s
moves by about κ a step whatever the loss's scale. Where a learned optimizer
stalls because its steps have become too small, a growing s can rescue it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .rules import RuleState


def scaled(opt, scale: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """Δ = scale · Δ_opt, with `scale` stored as the raw hyperparameter `log_scale`.

    `opt` is any optax transformation (a learned optimizer, typically); its state
    sits in the RuleState's `slots`, and extra arguments (`value=`) reach it."""
    try:
        ok = np.isfinite(float(scale)) and float(scale) > 0
    except (TypeError, ValueError):
        ok = True   # a traced scale (e.g. vmapped) cannot be checked
    if not ok:
        raise ValueError(f"scaled: scale must be a positive number, got {scale!r} (it is stored as log(scale))")
    opt = optax.with_extra_args_support(opt)

    def init(params):
        return RuleState(hyperparams={"log_scale": jnp.log(jnp.asarray(scale, jnp.float32))},
                         count=jnp.zeros((), jnp.int32), slots=opt.init(params))

    def update(grads, state, params=None, **extra_args):
        updates, inner = opt.update(grads, state.slots, params, **extra_args)
        s = jnp.exp(state.hyperparams["log_scale"])
        updates = jax.tree.map(lambda u: (s * u).astype(jnp.result_type(u)), updates)
        return updates, RuleState(state.hyperparams, state.count + 1, inner)

    return optax.GradientTransformationExtraArgs(init, update)


__all__ = ["scaled"]
