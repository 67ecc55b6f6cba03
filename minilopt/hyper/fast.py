"""The hyperoptimizer's arithmetic in the forms XLA runs fastest, each equal to a plain one.

Each function here computes exactly what its plain counterpart computes, and the
tests check that they agree (values and derivatives):

    fast.ema           = rules.ema          β·old + (1 − β)·new, with its derivative written by hand
    fast.adam_step     = rules.adam_step    −α · m̂ / (sqrt(v̂) + ε)
    fast.dot_products  = forward.dot_products   [⟨t_j, g⟩ for each tangent t_j]

Read the plain ones to learn the method. Why these forms are faster:

- `ema`'s derivative in β is old − new. Forward mode takes it while the update
  overwrites the old average with the new one; read as (ema − new)/β it needs only
  today's average, so yesterday's buffer need not be kept (copied) for it. Zero
  tangents stay symbolic, so no β·0 + (1 − β)·0 is ever computed.
- `adam_step` keeps the sign inside the bias correction, Δ = α · m / (−c1) / ...,
  so Δ's tangent in α is the direction itself, written in the same loop as Δ. On the
  CPU it divides by a scalar as a multiplication by its reciprocal, which XLA's CPU
  backend fuses with the tangents into fewer passes over memory.
- `dot_products`, for more than a few scalars off the CPU, lays every leaf's products
  end to end and sums them in a tree of row sums: one pass over g for all k
  tangents, whatever the number of leaves (a sum per leaf and tangent is a kernel
  each). On the CPU, and for a few scalars (levels above the first), one sum per
  leaf and tangent is fastest.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from ..sums import row_sums


@jax.custom_jvp
def ema(old, new, beta):
    """β·old + (1 − β)·new (`rules.ema`), with ∂/∂β = old − new taken as (ema − new)/β.

    At β = 0 exactly (atanh(2β − 1) < −9 in float32) that quotient is NaN, which
    `hyperoptimize` counts in `state.nonfinite` and skips."""
    return beta * old + (1 - beta) * new


def _ema_jvp(primals, tangents):
    (old, new, beta), (d_old, d_new, d_beta) = primals, tangents
    out = ema(old, new, beta)
    terms = []  # one term per argument that moves: symbolic zero tangents are left out
    if not isinstance(d_old, SymbolicZero):
        terms.append(beta * d_old)
    if not isinstance(d_new, SymbolicZero):
        terms.append((1 - beta) * d_new)
    if not isinstance(d_beta, SymbolicZero):
        terms.append(d_beta * ((out - new) / beta))
    return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


ema.defjvp(_ema_jvp, symbolic_zeros=True)


def adam_step(alpha, m, v, c1, c2, eps):
    """−α · (m / c1) / (sqrt(v / c2) + ε) (`rules.adam_step`), as α · (m / −c1) / (...),
    dividing by the scalars c1, c2 as a product with their reciprocals on the CPU."""
    unbias = lambda x, c: jax.lax.platform_dependent(x, c, cpu=lambda x, c: x * (1 / c),  # noqa: E731
                                                    default=lambda x, c: x / c)
    return alpha * (unbias(m, -c1) / (jnp.sqrt(unbias(v, c2)) + eps))


ROW = 256  # the row length of the tree of row sums


def _in_rows(x) -> jax.Array:
    """A vector zero-padded to whole rows of ROW, as (rows, ROW)."""
    return jnp.pad(x, (0, -x.size % ROW)).reshape(-1, ROW)


def _row_sum_dots(tangents, grads, dtype) -> jax.Array:
    """[Σ over all leaves and elements of t_j · g, for each tangent tree t_j], as a tree of row sums.

    Every leaf's products t_j · g are laid end to end (zero-padded to whole rows of
    ROW) and ONE variadic reduction sums all k of them row by row, reading g once;
    the k vectors of row sums are summed in rows of ROW again until at most ROW are left."""
    k = len(tangents)
    t_leaves = [jax.tree.leaves(t) for t in tangents]
    rows = [[] for _ in range(k)]
    for i, g in enumerate(jax.tree.leaves(grads)):
        g = jnp.ravel(jnp.asarray(g, dtype))
        for j in range(k):
            rows[j].append(_in_rows(jnp.ravel(jnp.asarray(t_leaves[j][i], dtype)) * g))
    sums = row_sums(tuple(jnp.concatenate(r) for r in rows))
    while sums[0].size > ROW:
        sums = row_sums(tuple(_in_rows(x) for x in sums))
    return jnp.sum(jnp.stack(sums), axis=1)


def _per_leaf_dots(tangents, grads, dtype) -> jax.Array:
    """[Σ over leaves of jnp.sum(t_j · g), for each tangent tree t_j]."""
    g_leaves = [jnp.asarray(g, dtype) for g in jax.tree.leaves(grads)]
    return jnp.stack([sum(jnp.sum(jnp.asarray(t, dtype) * g) for t, g in zip(jax.tree.leaves(tj), g_leaves))
                      for tj in tangents])


def dot_products(tangents, grads, dtype) -> jax.Array:
    """[⟨t_j, g⟩ for each tangent tree t_j] (`forward.dot_products`), as a vector of `dtype`:
    one sum per leaf and tangent on the CPU or for at most ROW elements, else a tree of row sums."""
    if sum(np.size(g) for g in jax.tree.leaves(grads)) <= ROW:
        return _per_leaf_dots(tangents, grads, dtype)
    return jax.lax.platform_dependent(tangents, grads, cpu=lambda t, g: _per_leaf_dots(t, g, dtype),
                                      default=lambda t, g: _row_sum_dots(t, g, dtype))


__all__ = ["ema", "adam_step", "dot_products"]
