"""Forward mode: the paper's hypergradient, computed as dot products with tangents.

    hyperoptimize(inner, by, mode="forward")   # or mode="auto", the default

Reverse mode (`tower`) pulls today's gradient back through yesterday's update:

    ∂f_t/∂h_j = ⟨g_t, ∂U_{t−1}/∂h_j⟩,   U_{t−1} = U(g_{t−1}, s_{t−1}; h_{t−1}).

That is a dot product, and ∂U/∂h_j can be taken when U itself runs, at step t−1,
with one `jax.jvp` per scalar hyperparameter (the shared primal is computed once).
A level then stores those k tangents, each shaped like the parameters, instead of
yesterday's inputs, and step t's hypergradient is k dot products with g_t. No vjp
is re-run. Steps 2 and 3 (the hyper-step, then the update with the new h) are
reverse mode's; step 3 now also writes the next step's tangents.

The tangents start at zero, so the first hypergradient is zero without a flag; a
non-finite gradient at the first step makes it 0·inf = NaN, and the level counts it
in `state.nonfinite` and keeps h.

Memory: k parameter-sized tangents, against reverse mode's gradient, inner state
(and weights, if the rule reads them). `mode="auto"` picks forward mode when its
tangents take no more: e.g. forward for Adam's α, β1, β2 (3 tangents against g, m, v),
reverse for `sgd_per_param` (one tangent per leaf against one gradient).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from . import fast
from .rules import check_params
from .tower import (HyperState, all_finite, check_grads, hyper_step, learned_names, reads_params, select,
                    unless_skipped, with_hyperparams)


@functools.partial(jax.tree_util.register_dataclass, meta_fields=["learned"],
                   data_fields=["inner", "by", "hypergrad", "nonfinite", "skipped", "tangents"])
@dataclasses.dataclass(frozen=True)
class ForwardState(HyperState):
    tangents: Any  # (∂U_{t−1}/∂h_j for each learned scalar j), each like the updates


def dot_products(tangents, grads, dtype) -> jax.Array:
    """[⟨t_j, g⟩ for each tangent tree t_j], a vector of `dtype`: the hypergradient,
    raveled like h. (The tower runs `fast.dot_products`, the same numbers.)"""
    g = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, dtype), grads))[0]
    return jnp.stack([jnp.dot(ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, dtype), t))[0], g)
                      for t in tangents])


def update_and_tangents(inner, grads, inner_state, h, params, extra_args):
    """Δ = U(g, s; h), the new inner state, and (∂Δ/∂h_j for every learned scalar j).

    One jvp per scalar, each differentiating in that hyperparameter alone: the others
    are closed over, so their tangents are symbolic zeros, and a scalar's tangent is 1."""
    leaves, treedef = jax.tree.flatten(h)
    result, tangents = None, []
    for i, leaf in enumerate(leaves):
        leaf = jnp.asarray(leaf)

        def run(x, i=i):
            h_i = jax.tree.unflatten(treedef, [*leaves[:i], x, *leaves[i + 1:]])
            return inner.update(grads, with_hyperparams(inner_state, h_i), params, **extra_args)

        for e in range(leaf.size):
            one_hot = (jnp.ones_like(leaf) if leaf.size == 1
                       else jnp.zeros(leaf.size, leaf.dtype).at[e].set(1).reshape(leaf.shape))
            result, (d_updates, _) = jax.jvp(run, (leaf,), (one_hot,))
            tangents.append(d_updates)
    updates, new_inner = result
    return updates, new_inner, tuple(tangents)


def _nbytes(tree) -> int:
    return int(sum(np.prod(np.shape(x)) * jnp.result_type(x).itemsize for x in jax.tree.leaves(tree)))


def stores_less(inner, params, learn=None) -> bool:
    """Do forward mode's k tangents take no more memory than reverse mode's stored inputs?"""
    inner_state = inner.init(params)
    k = sum(int(np.size(x)) for name in learned_names(inner_state, learn)
            for x in jax.tree.leaves(inner_state.hyperparams[name]))
    stored = _nbytes(params) * (2 if reads_params(inner, params, inner_state) else 1) + _nbytes(inner_state)
    return k * _nbytes(params) <= stored


def hyperoptimize(inner, by, *, learn=None, reverse=None) -> optax.GradientTransformationExtraArgs:
    """`tower.hyperoptimize` in forward mode; given `reverse` (the same level in reverse
    mode), "auto": `init` picks forward mode where it stores no more, and `update`
    follows the state it is given."""
    inner, by = optax.with_extra_args_support(inner), optax.with_extra_args_support(by)
    learned = lambda state: {name: state.hyperparams[name] for name in learned_names(state, learn)}  # noqa: E731

    def init(params):
        check_params(params)
        if reverse is not None and not stores_less(inner, params, learn):
            return reverse.init(params)
        inner_state = inner.init(params)
        h = learned(inner_state)
        weights = params if reads_params(inner, params, inner_state) else None
        shapes = jax.eval_shape(lambda g, s: update_and_tangents(inner, g, s, learned(s), weights, {})[2],
                                params, inner_state)
        return ForwardState(inner=inner_state, by=by.init(h), hypergrad=jnp.zeros_like(ravel_pytree(h)[0]),
                            nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
                            learned=tuple(h), tangents=jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))

    def update(grads, state, params=None, **extra_args):
        if not isinstance(state, ForwardState):
            return reverse.update(grads, state, params, **extra_args)
        check_grads(grads, state.tangents[0])
        grads_ok = all_finite(grads)
        h = learned(state.inner)

        # 1. the hypergradient: ⟨g_t, ∂U_{t−1}/∂h_j⟩ from the stored tangents
        flat_h, unravel = ravel_pytree(h)
        raveled = fast.dot_products(state.tangents, grads, flat_h.dtype)
        hypergrad = unravel(raveled)

        # 2. the level above steps first
        new_h, by_state, ok = hyper_step(by, hypergrad, h, state.by, extra_args)

        # 3. this level's update with the new hyperparameters, and its tangents for the next step
        updates, inner_state, tangents = update_and_tangents(inner, grads, state.inner, new_h, params, extra_args)
        updates, inner_state = unless_skipped(grads_ok, updates, inner_state, with_hyperparams(state.inner, new_h))
        return updates, ForwardState(
            inner=inner_state, by=by_state, hypergrad=raveled,
            nonfinite=state.nonfinite + (~ok).astype(jnp.int32), skipped=state.skipped + (~grads_ok).astype(jnp.int32),
            learned=state.learned, tangents=select(grads_ok, tangents, state.tangents))

    return optax.GradientTransformationExtraArgs(init, update)


__all__ = ["ForwardState", "dot_products", "update_and_tangents", "stores_less", "hyperoptimize"]
