"""Hyperoptimizers: an optimizer's hyperparameters learned online by another optimizer.

    hyperoptimize(inner, by=hyper)    # an optax GradientTransformationExtraArgs

`inner` is any optimizer whose state carries its hyperparameters in
`state.hyperparams`: a rule from `minilopt.hyper.rules`, or any optax optimizer
wrapped with `optax.inject_hyperparams`. `by` is any optax optimizer, including
another `hyperoptimize(...)`, so a tower has any height:

    stack(rules.adam(1e-3), rules.sgd(1e-5), rules.sgd(1e-6))     # Adam / SGD / SGD
    == hyperoptimize(rules.adam(1e-3), by=hyperoptimize(rules.sgd(1e-5), by=rules.sgd(1e-6)))

One step of a level whose update is Δ = U(g, s; h) (Chandra et al. 2022):

    1. Hypergradient. Pull today's gradient back through *yesterday's* update:
           ∂f_t/∂h = vjp of  h ↦ U(g_{t−1}, s_{t−1}; h)  at h_{t−1}, cotangent g_t,
       since w_t = w_{t−1} + U(g_{t−1}, s_{t−1}; h_{t−1}). Yesterday's inputs
       (g_{t−1}, s_{t−1}, and the weights if U reads them) are stored constants: one
       cheap vjp, no second-order terms. At the first step nothing has used h yet,
       so the hypergradient is exactly 0 (and the hyper-optimizer still steps on it).
    2. h_t = h_{t−1} + by.update(∂f_t/∂h). In a taller tower this call first computes
       the next level's hypergradient from this one (bottom-up), and updates the
       level above before this one (top-down).
    3. Δ_t = U(g_t, s_t; h_t), with the new h.

Memory: one gradient-sized copy and one inner state (yesterday's) per level.

Forward mode (`mode="forward"`) computes the very same number the other way round.
∂f_t/∂h_j = ⟨g_t, ∂U/∂h_j⟩ is a dot product, and ∂U/∂h_j can be taken when U itself
runs, at step t−1, with one `jax.jvp` per scalar hyperparameter (XLA computes the
shared primal once). The level stores those k tangents, parameter-sized, instead
of yesterday's inputs, and step t's hypergradient is k dot products with g_t. No
vjp is re-run, and no buffer is copied from one step's state to the next (in a
`lax.scan` loop XLA must copy yesterday's inputs; the tangents are written fresh).
What a level adds is memory traffic: k tangent writes in the rule's own pass, and
one pass reading them with g_t (GPU); XLA (CPU) writes each output in a loop of
its own, rereading what they share, so there it costs several passes.
`mode="auto"` (the default) picks forward mode when its k tangents take no more
memory than yesterday's gradient, inner state (and weights); e.g. forward for
Adam's α, β1, β2 (3 tangents against g, m, v), reverse for `sgd_per_param` (one
tangent per leaf against one gradient).

Faults: if the hypergradient or the new h is not finite, the level keeps its
previous hyperparameters and its hyper-optimizer's state, and counts the step in
`state.nonfinite`. NaN never reaches the weights through h. A non-finite gradient
g_t skips the whole step, at every level:

    ok = all(isfinite(g_t)),   Δ_t = where(ok, U(g_t, s_t; h_t), 0),   s_{t+1} = where(ok, s_t', s_t)

so the weights and the inner state (but for h, which the rule above already kept
unless it stepped on a zero hypergradient), the stored inputs or tangents stay as
they were, and the step counts in `state.skipped`. No non-finite value reaches the
weights. Parameters must be real floating point, and gradients must have the
parameters' tree and shapes: anything else is a ValueError that names the leaf.

One hyper-step size per hyperparameter: use a per-leaf SGD level,
`stack(rules.adam(), rules.sgd_per_param({"alpha": 1e-5, "atanh_beta1": 1e-3, "atanh_beta2": 1e-3}))`.

The wrapper must see raw gradients: put it first in an `optax.chain`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ..sums import row_sums
from .rules import RuleState, check_params, values


@functools.partial(jax.tree_util.register_dataclass, meta_fields=["learned"],
                   data_fields=["inner", "by", "prev_grads", "prev_inner", "prev_params", "tangents", "valid",
                                "hypergrad", "nonfinite", "skipped"])
@dataclasses.dataclass(frozen=True)
class HyperState:
    inner: Any             # the inner state; its .hyperparams are those used at the last step
    by: Any                # the hyper-optimizer's state (a HyperState again in a taller tower)
    prev_grads: Any        # reverse mode: g_{t−1} (None in forward mode)
    prev_inner: Any        # reverse mode: the inner state the last update started from
    prev_params: Any       # reverse mode: the weights of the last update, or None if the rule never reads them
    tangents: Any          # forward mode: (∂U_{t−1}/∂h_j for each learned scalar j), each like the
                           # updates (None in reverse mode)
    valid: jax.Array       # reverse mode: False before the first step, when there is no previous update
                           # yet (None in forward mode: its tangents start at zero, so its first
                           # hypergradient is zero without a flag)
    hypergrad: jax.Array   # the last hypergradient ∂f_t/∂h, raveled like ravel_pytree(h); read it as a
                           # dict with `hypergrads(state)`. One vector, because XLA (GPU) stored each
                           # scalar sliced out of it with a device-to-device copy (3 us a step at k=3)
    nonfinite: jax.Array   # steps whose hypergradient was not finite and were skipped (int32)
    skipped: jax.Array     # steps whose gradient was not finite: no update, the state kept (int32)
    learned: tuple         # static: the names of the learned hyperparameters, h's keys


_WRAP_HINT = ("wrap it with optax.inject_hyperparams, e.g. "
              "hyperoptimize(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), by=optax.sgd(1e-5)), "
              "or use a rule from minilopt.hyper.rules")


def learned_names(inner_state, learn=None) -> tuple[str, ...]:
    """The names of the hyperparameters `hyperoptimize` learns, checked against the state.

    learn=None: all of a minilopt rule's (raw) hyperparameters; "learning_rate" for an
    optax optimizer (its other hyperparameters, such as eps, are rarely meant to move)."""
    hp = getattr(inner_state, "hyperparams", None)
    if not isinstance(hp, dict) or not hasattr(inner_state, "_replace"):
        raise ValueError(f"hyperoptimize: the inner optimizer's state ({type(inner_state).__name__}) does not "
                         f"carry its hyperparameters; {_WRAP_HINT}")
    if learn is None:
        if isinstance(inner_state, RuleState):
            names = tuple(hp)
        elif "learning_rate" in hp:
            names = ("learning_rate",)
        else:
            raise ValueError(f"hyperoptimize: say which hyperparameters to learn, e.g. learn={tuple(hp)[:1]}; "
                             f"this optimizer has {sorted(hp)}")
    else:
        names = (learn,) if isinstance(learn, str) else tuple(learn)
    for name in names:
        if name not in hp:
            raise ValueError(f"hyperoptimize: unknown hyperparameter {name!r} in learn=; "
                             f"this optimizer has {sorted(hp)}")
        if not all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(hp[name])):
            raise ValueError(f"hyperoptimize: hyperparameter {name!r} is not floating point, so it has no "
                             "gradient; integer hyperparameters are static: leave it out of learn=")
    if not names:
        raise ValueError("hyperoptimize: nothing to learn (learn=() or a rule without hyperparameters)")
    return names


def _reads_params(inner, params, state) -> bool:
    """Does `inner.update` need the weights (e.g. weight decay)? Then they are stored too."""
    try:
        jax.eval_shape(lambda g, s: inner.update(g, s, None), params, state)
        return False
    except Exception:  # optax raises a ValueError when an update needs params it was not given
        return True


def check_grads(grads, like, who: str = "hyperoptimize") -> None:
    """A ValueError unless `grads` has `like`'s tree structure and leaf shapes (checked
    when tracing: it costs nothing at run time). A (3, 1) gradient for a (3,)
    parameter would otherwise broadcast into a wrong (3, 3) update."""
    if jax.tree.structure(grads) != jax.tree.structure(like):
        raise ValueError(f"{who}: the gradients have tree structure {jax.tree.structure(grads)}, but the "
                         f"parameters have {jax.tree.structure(like)}; pass gradients of the same tree "
                         "(e.g. jax.grad(loss)(params))")
    for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(like)):
        if np.shape(g) != np.shape(p) or not jnp.issubdtype(jnp.result_type(g), jnp.floating):
            raise ValueError(f"{who}: gradient leaf {jax.tree_util.keystr(path) or '(the root)'} has shape "
                             f"{np.shape(g)} and dtype {jnp.result_type(g)}; its parameter has shape "
                             f"{np.shape(p)}: pass a real floating-point gradient of the parameter's shape")


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _select(ok, new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _nbytes(tree) -> int:
    return int(sum(np.prod(np.shape(x)) * jnp.result_type(x).itemsize for x in jax.tree.leaves(tree)))


ROW = 256  # the row length of the tree of row sums in `_dots`


def _in_rows(x) -> jax.Array:
    """A vector zero-padded to whole rows of ROW, as (rows, ROW)."""
    return jnp.pad(x, (0, -x.size % ROW)).reshape(-1, ROW)


def _dots(tangents, grads, dtype) -> jax.Array:
    """[Σ over all leaves and elements of t_j · g, for each tangent tree t_j].

    A tree of row sums, whatever the number of leaves: every leaf's products t_j · g
    are laid end to end (zero-padded to whole rows of ROW) and ONE variadic reduction
    sums all k of them row by row, reading g once; the k vectors of row sums are
    summed in rows of ROW again until at most ROW are left. Left to itself, XLA (GPU) makes
    a kernel per leaf and per j, and ends each with a tiny kernel of its own: at about
    a microsecond each, that was most of a level's cost; a reduction over one (k, ...)
    stacked array instead reads g k times. On an H200, for a 1.86M-parameter model
    (k = 3): the main pass takes 8.3 us with rows of 256 and 9.1 us with rows of 128
    (rows of 1024 or more: 10.2 us, even with one round fewer after it). The two
    small rounds after it take about 1.4 us each; summing the row sums in one go
    instead took 4.5 us (one block per j)."""
    k = len(tangents)
    t_leaves = [jax.tree.leaves(t) for t in tangents]
    rows = [[] for _ in range(k)]
    for i, g in enumerate(jax.tree.leaves(grads)):
        g = jnp.ravel(jnp.asarray(g, dtype))
        for j in range(k):
            product = jnp.ravel(jnp.asarray(t_leaves[j][i], dtype)) * g
            rows[j].append(_in_rows(product))
    sums = row_sums(tuple(jnp.concatenate(r) for r in rows))
    while sums[0].size > ROW:
        sums = row_sums(tuple(_in_rows(x) for x in sums))
    return jnp.sum(jnp.stack(sums), axis=1)


def _dots_per_leaf(tangents, grads, dtype) -> jax.Array:
    """`_dots` as one jnp.sum per leaf and tangent: what XLA (CPU) runs fastest, and
    on any backend for a few scalars (the levels above the first), where XLA fuses
    the sums into the hyper-step's arithmetic and a tree of row sums would add two
    kernels (GPU: Adam/SGD/SGD 1-2 us a step less)."""
    g_leaves = [jnp.asarray(g, dtype) for g in jax.tree.leaves(grads)]
    return jnp.stack([sum(jnp.sum(jnp.asarray(t, dtype) * g) for t, g in zip(jax.tree.leaves(tj), g_leaves))
                      for tj in tangents])


MODES = ("auto", "forward", "reverse")


def hyperoptimize(inner, by, *, learn: str | Sequence[str] | None = None,
                  mode: str = "auto") -> optax.GradientTransformationExtraArgs:
    """Learn `inner`'s hyperparameters online with the optimizer `by` (see the module doc).

    inner: a minilopt rule, or an optax optimizer built with optax.inject_hyperparams.
    by:    any optax optimizer, e.g. optax.sgd(1e-5), optax.adam(1e-3), or another hyperoptimize(...).
    learn: names of the hyperparameters to learn (default: all of a rule's; an optax
           optimizer's "learning_rate").
    mode:  "reverse" (the paper's: jax.vjp through yesterday's update, from stored
           inputs), "forward" (one jax.jvp per hyperparameter at the update, stored
           tangents: the same hypergradient), or "auto" (forward when it stores no more)."""
    if mode not in MODES:
        raise ValueError(f"hyperoptimize: mode must be one of {MODES}, got {mode!r}")
    inner = optax.with_extra_args_support(inner)
    by = optax.with_extra_args_support(by)

    def learned(state):
        return {name: state.hyperparams[name] for name in learned_names(state, learn)}

    def with_hyperparams(state, h):
        return state._replace(hyperparams={**state.hyperparams, **h})

    def update_and_tangents(grads, inner_state, h, params, extra_args):
        """Δ = U(g, s; h), the new inner state, and ∂Δ/∂h_j for every learned scalar j.

        One jvp per scalar, each differentiating in that hyperparameter alone (the
        others are closed over, so their tangents are symbolic zeros, and a scalar's
        tangent is the constant 1). XLA computes the shared primal once. A single
        jax.linearize with a one-hot basis gives the same numbers, but carries every
        basis vector's zeros through the scalar work: on GPU that was a dozen more
        tiny kernels per step."""
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

    def init(params):
        check_params(params)
        inner_state = inner.init(params)
        h = learned(inner_state)
        reads_params = _reads_params(inner, params, inner_state)
        forward = mode == "forward"
        if mode == "auto":
            k = sum(int(np.size(x)) for x in jax.tree.leaves(h))
            stored = _nbytes(params) * (2 if reads_params else 1) + _nbytes(inner_state)
            forward = k * _nbytes(params) <= stored
        tangents = None
        if forward:
            shapes = jax.eval_shape(
                lambda g, s: update_and_tangents(g, s, learned(s), params if reads_params else None, {})[2],
                params, inner_state)
            tangents = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        return HyperState(
            inner=inner_state,
            by=by.init(h),
            prev_grads=None if forward else jax.tree.map(jnp.zeros_like, params),
            prev_inner=None if forward else inner_state,
            prev_params=params if reads_params and not forward else None,
            tangents=tangents,
            valid=None if forward else jnp.zeros((), bool),
            hypergrad=jnp.zeros_like(ravel_pytree(h)[0]),
            nonfinite=jnp.zeros((), jnp.int32),
            skipped=jnp.zeros((), jnp.int32),
            learned=tuple(h),
        )

    def update(grads, state, params=None, **extra_args):
        h = learned(state.inner)
        forward = state.tangents is not None
        check_grads(grads, state.tangents[0] if forward else state.prev_grads)
        grads_ok = _all_finite(grads)  # else the step is skipped: nothing non-finite reaches the weights

        # 1. the hypergradient: g_t pulled back through the previous update, in h only
        if forward:  # ⟨g_t, ∂U_{t−1}/∂h_j⟩ from the stored tangents
            flat_h, unravel = ravel_pytree(h)
            dtype = flat_h.dtype
            if sum(np.size(g) for g in jax.tree.leaves(grads)) <= ROW:
                raveled = _dots_per_leaf(state.tangents, grads, dtype)
            else:
                raveled = jax.lax.platform_dependent(state.tangents, grads,
                                                     cpu=lambda t, g: _dots_per_leaf(t, g, dtype),
                                                     default=lambda t, g: _dots(t, g, dtype))
            hypergrad = unravel(raveled)
        else:
            def previous_update(h):
                return inner.update(state.prev_grads, with_hyperparams(state.prev_inner, h), state.prev_params)[0]

            _, pullback = jax.vjp(previous_update, h)
            (hypergrad,) = pullback(grads)
            hypergrad = jax.tree.map(lambda x: jnp.where(state.valid, x, jnp.zeros_like(x)), hypergrad)
            raveled = ravel_pytree(hypergrad)[0]
        finite = _all_finite(hypergrad)
        safe = jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), hypergrad)

        # 2. the level above steps first (and, in a tower, the levels above it before that)
        dh, by_state = by.update(safe, state.by, h, **extra_args)
        new_h = optax.apply_updates(h, dh)
        ok = finite & _all_finite(new_h)
        new_h, by_state = _select(ok, new_h, h), _select(ok, by_state, state.by)

        # 3. this level's update, with the new hyperparameters
        inner_in = with_hyperparams(state.inner, new_h)
        tangents = None
        if forward:
            updates, inner_state, tangents = update_and_tangents(grads, state.inner, new_h, params, extra_args)
            tangents = _select(grads_ok, tangents, state.tangents)
        else:
            updates, inner_state = inner.update(grads, inner_in, params, **extra_args)
        # a non-finite gradient: no update, and the state as before (one where per leaf,
        # fused into the pass that computes it)
        updates = jax.tree.map(lambda u: jnp.where(grads_ok, u, jnp.zeros((), u.dtype)), updates)
        inner_state = _select(grads_ok, inner_state, inner_in)
        keep = lambda new, old: None if forward else _select(grads_ok, new, old)
        return updates, HyperState(
            inner=inner_state,
            by=by_state,
            prev_grads=keep(grads, state.prev_grads),
            prev_inner=keep(inner_in, state.prev_inner),
            prev_params=None if state.prev_params is None else _select(grads_ok, params, state.prev_params),
            tangents=tangents,
            valid=None if forward else state.valid | grads_ok,
            hypergrad=raveled,
            nonfinite=state.nonfinite + (~ok).astype(jnp.int32),
            skipped=state.skipped + (~grads_ok).astype(jnp.int32),
            learned=state.learned,
        )

    return optax.GradientTransformationExtraArgs(init, update)


def stack(*levels, mode: str = "auto") -> optax.GradientTransformationExtraArgs:
    """A tower, written bottom-up like the paper: stack(adam(), sgd(1e-5)) is Adam / SGD.

    The first level trains the weights, each next level trains the one below, and the
    top level's hyperparameters stay constant. The top may be any optax optimizer.
    `mode` is every level's (see `hyperoptimize`)."""
    if not levels:
        raise ValueError("stack needs at least one optimizer, e.g. stack(rules.sgd(0.01), rules.sgd(1e-4))")
    tower = levels[-1]
    for level in reversed(levels[:-1]):
        tower = hyperoptimize(level, by=tower, mode=mode)
    return optax.with_extra_args_support(tower)


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


__all__ = ["HyperState", "hyperoptimize", "stack", "hyperparams", "hypergrads", "learned_names"]
