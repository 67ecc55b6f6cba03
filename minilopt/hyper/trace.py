"""Every level's hyperparameters and hypergradients, read out of a tower's state, and
training runs that record them at every step.

`minilopt.train.fit` returns losses; lessons on hyperoptimizers also want to watch α,
κ, β move. `run` is the same jitted-scan loop, plus the read-out of
`hyperparams(state)` after each step:

    traj = trajectory(task, stack(rules.sgd(0.01), rules.sgd(1e-4)), steps=500, key=key)
    traj.hyperparams[0]["alpha"]      # (steps,): α after each step
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax
from jax.flatten_util import ravel_pytree

from .rules import values
from .tower import HyperState


def _find_levels(state):
    if isinstance(state, HyperState) or isinstance(getattr(state, "hyperparams", None), dict):
        return state
    if isinstance(state, (tuple, list)) and not hasattr(state, "_fields"):
        for s in state:  # e.g. the state of optax.chain(hyperoptimize(...), clip)
            found = _find_levels(s)
            if found is not None:
                return found
    return None


def hyperparams(state, raw: bool = False) -> list[dict]:
    """Every level's current hyperparameters, bottom-up: [level 1, level 2, ...].

    Values by default ({"alpha": 0.01}); raw=True gives the variables the hyper-steps
    act on ({"sqrt_alpha": 0.1}). Works on any state, inside jit and scan: record it
    every step to plot the trajectories."""
    state, levels = _find_levels(state), []
    while isinstance(state, HyperState):
        levels.append(state.inner.hyperparams)
        state = state.by
    if isinstance(getattr(state, "hyperparams", None), dict):
        levels.append(state.hyperparams)  # the top level: constant
    return levels if raw else [values(h) for h in levels]


def hypergrads(state) -> list[dict]:
    """The last hypergradient of every learning level, bottom-up (raw variables)."""
    state, out = _find_levels(state), []
    while isinstance(state, HyperState):
        h = {name: state.inner.hyperparams[name] for name in state.learned}
        out.append(ravel_pytree(h)[1](state.hypergrad))
        state = state.by
    return out


class Trajectory(NamedTuple):
    loss: Any          # (steps,) the minibatch loss before each step
    hyperparams: list  # per level, bottom-up: {name: (steps, ...)} after each step
    hypergrads: list   # per learning level: {raw name: (steps, ...)}
    params: Any        # the final weights
    state: Any         # the final optimizer state


def run(loss_fn, params, optimizer, xs, *, raw: bool = False) -> Trajectory:
    """Train from `params`, one step per element of `xs` (a pytree with a leading step
    axis), with loss `loss_fn(params, x)`. Pure: jit it, or vmap it over anything the
    optimizer closes on (e.g. its initial α). raw=True records raw hyperparameters."""
    opt = optax.with_extra_args_support(optimizer)

    def step(carry, x):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        updates, state = opt.update(grads, state, params, value=loss)
        return (optax.apply_updates(params, updates), state), (loss, hyperparams(state, raw), hypergrads(state))

    (params, state), (loss, hps, hgs) = jax.lax.scan(step, (params, opt.init(params)), xs)
    return Trajectory(loss, hps, hgs, params, state)


def trajectory(task, optimizer, steps: int, key, *, params=None, raw: bool = False) -> Trajectory:
    """Train `task` for `steps` minibatch steps (jitted) and record the hyperparameters.

    `key` seeds the initial weights (unless `params` is given) and the batches, the
    same way for every optimizer, so runs are comparable."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    k_init, k_run = jax.random.split(key)
    params = task.init(k_init) if params is None else params
    loss_fn = lambda p, k: task.loss(p, task.batch(k))
    return jax.jit(lambda p, ks: run(loss_fn, p, optimizer, ks, raw=raw))(params, jax.random.split(k_run, steps))


__all__ = ["hyperparams", "hypergrads", "Trajectory", "run", "trajectory"]
