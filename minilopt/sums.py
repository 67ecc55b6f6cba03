"""Several sums in one pass over memory, with a derivative that always works.

    row_sums([x_1, …, x_k]) = [Σ_j x_1[:, j], …, Σ_j x_k[:, j]]     each x_i (rows, n)

One variadic `lax.reduce`: XLA reads every operand once, in one kernel, where k
separate sums would be k passes (or k kernels). VeLO's statistics and the
hypergradient's dot products use it.

jax differentiates a variadic reduction with a generic rule that breaks when one
operand's tangent is a symbolic zero, i.e. when that operand does not depend on what
is being differentiated (a TypeError about `ad_util.Zero` passed to reshape): the
gradient of VeLO's statistics with respect to p and g alone hit it, for the channels
of m and rms. Sums are linear, so the derivative here is the sums of the tangents,
each its own `jnp.sum`, with jax filling in any zero tangent first.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _add(a, b):
    return [x + y for x, y in zip(a, b)]


@jax.custom_jvp
def row_sums(operands: list) -> list:
    """Σ along axis 1 of each (rows, n) operand (all the same shape and dtype), in one reduction."""
    zeros = [jnp.zeros((), x.dtype) for x in operands]
    return jax.lax.reduce(list(operands), zeros, _add, (1,))


@row_sums.defjvp
def _row_sums_jvp(primals, tangents):
    (operands,), (d_operands,) = primals, tangents
    return row_sums(operands), [jnp.sum(t, axis=1) for t in d_operands]


__all__ = ["row_sums"]
