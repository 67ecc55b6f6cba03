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

This module is the paper's method, reverse mode. `mode="forward"` (module
`forward`) computes the same hypergradient as k dot products with tangents taken
at the update; `mode="auto"` (the default) uses it when its k tangents take no
more memory than yesterday's inputs.

Faults: if the hypergradient or the new h is not finite, the level keeps its
previous hyperparameters and its hyper-optimizer's state, and counts the step in
`state.nonfinite`. A non-finite gradient g_t skips the whole step, at every level:

    ok = all(isfinite(g_t)),   Δ_t = where(ok, U(g_t, s_t; h_t), 0),   s_{t+1} = where(ok, s_t', s_t)

and counts in `state.skipped`. No non-finite value reaches the weights. Parameters must be
real floating point, and gradients of the parameters' tree and shapes: else a ValueError names the leaf.

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

from .rules import RuleState, check_params


@dataclasses.dataclass(frozen=True)
class HyperState:
    """What every level's state holds, in either mode (`ReverseState`, `forward.ForwardState`)."""
    inner: Any            # the inner state; its .hyperparams are those used at the last step
    by: Any               # the hyper-optimizer's state (a HyperState again in a taller tower)
    hypergrad: jax.Array  # the last ∂f_t/∂h, raveled like ravel_pytree(h): read it with `hypergrads`
    nonfinite: jax.Array  # steps whose hypergradient or new h was not finite: h kept (int32)
    skipped: jax.Array    # steps whose gradient was not finite: no update, the state kept (int32)
    learned: tuple        # static: the names of the learned hyperparameters, h's keys


@functools.partial(jax.tree_util.register_dataclass, meta_fields=["learned"],
                   data_fields=["inner", "by", "hypergrad", "nonfinite", "skipped",
                                "prev_grads", "prev_inner", "prev_params", "valid"])
@dataclasses.dataclass(frozen=True)
class ReverseState(HyperState):
    prev_grads: Any       # g_{t−1}
    prev_inner: Any       # the inner state the last update started from
    prev_params: Any      # the weights of the last update, or None if the rule never reads them
    valid: jax.Array      # False before the first step, when there is no previous update yet


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


def reads_params(inner, params, state) -> bool:
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


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def select(ok, new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def with_hyperparams(state, h):
    return state._replace(hyperparams={**state.hyperparams, **h})


def hyper_step(by, hypergrad, h, by_state, extra_args):
    """Step 2: h + by.update(∂f/∂h), and by's new state; both kept unless the
    hypergradient and the new h are finite. Returns (h, by_state, ok)."""
    finite = all_finite(hypergrad)
    safe = jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), hypergrad)
    dh, new_by = by.update(safe, by_state, h, **extra_args)
    new_h = optax.apply_updates(h, dh)
    ok = finite & all_finite(new_h)
    return select(ok, new_h, h), select(ok, new_by, by_state), ok


def unless_skipped(grads_ok, updates, inner_state, inner_in):
    """Step 3's guard: no update and the inner state as it was when the gradient is not finite."""
    updates = jax.tree.map(lambda u: jnp.where(grads_ok, u, jnp.zeros((), u.dtype)), updates)
    return updates, select(grads_ok, inner_state, inner_in)


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
    inner, by = optax.with_extra_args_support(inner), optax.with_extra_args_support(by)
    learned = lambda state: {name: state.hyperparams[name] for name in learned_names(state, learn)}  # noqa: E731

    def init(params):
        check_params(params)
        inner_state = inner.init(params)
        h = learned(inner_state)
        return ReverseState(inner=inner_state, by=by.init(h), hypergrad=jnp.zeros_like(ravel_pytree(h)[0]),
                            nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
                            learned=tuple(h), prev_grads=jax.tree.map(jnp.zeros_like, params),
                            prev_inner=inner_state, valid=jnp.zeros((), bool),
                            prev_params=params if reads_params(inner, params, inner_state) else None)

    def update(grads, state, params=None, **extra_args):
        check_grads(grads, state.prev_grads)
        grads_ok = all_finite(grads)
        h = learned(state.inner)

        # 1. the hypergradient: g_t pulled back through the previous update, in h only
        def previous_update(h):
            return inner.update(state.prev_grads, with_hyperparams(state.prev_inner, h), state.prev_params)[0]

        _, pullback = jax.vjp(previous_update, h)
        (hypergrad,) = pullback(grads)
        hypergrad = jax.tree.map(lambda x: jnp.where(state.valid, x, jnp.zeros_like(x)), hypergrad)

        # 2. the level above steps first (and, in a tower, the levels above it before that)
        new_h, by_state, ok = hyper_step(by, hypergrad, h, state.by, extra_args)

        # 3. this level's update, with the new hyperparameters
        inner_in = with_hyperparams(state.inner, new_h)
        updates, inner_state = inner.update(grads, inner_in, params, **extra_args)
        updates, inner_state = unless_skipped(grads_ok, updates, inner_state, inner_in)
        return updates, ReverseState(
            inner=inner_state, by=by_state, hypergrad=ravel_pytree(hypergrad)[0],
            nonfinite=state.nonfinite + (~ok).astype(jnp.int32), skipped=state.skipped + (~grads_ok).astype(jnp.int32),
            learned=state.learned, prev_grads=select(grads_ok, grads, state.prev_grads),
            prev_inner=select(grads_ok, inner_in, state.prev_inner), valid=state.valid | grads_ok,
            prev_params=None if state.prev_params is None else select(grads_ok, params, state.prev_params))

    reverse = optax.GradientTransformationExtraArgs(init, update)
    if mode == "reverse":
        return reverse
    from . import forward  # forward mode builds on this module, so it is imported here
    return forward.hyperoptimize(inner, by, learn=learn, reverse=None if mode == "forward" else reverse)


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


__all__ = ["HyperState", "ReverseState", "hyperoptimize", "stack", "learned_names", "check_grads"]
