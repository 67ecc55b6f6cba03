"""Safeguards for learned optimizers: a loss guard (LGL2O) and a nominal descent term.

    opt = loss_guarded(minilopt.pretrained(T), optax.adam(1e-2), loss_fn)   # LGL2O
    opt = nominal(minilopt.pretrained(T), optax.adam(1e-3), weight=0.5)     # Harrison et al. 2022

Both are optax `GradientTransformationExtraArgs` over any pair of optax or minilopt
optimizers; extra arguments (`value=`) are passed on to both.

**The loss guard** (Prémont-Schwarz et al. 2022). A learned optimizer is fast early
and may stall, or diverge, later; a generic optimizer keeps converging. Every step
both propose an update from the same gradient, and the guard keeps the one whose
candidate point has the lower loss:

    θ_L = θ + Δ_learned,   θ_F = θ + Δ_fallback
    Δ = Δ_learned   if L(θ_L) ≤ L(θ_F)             (ties go to the learned step)
        Δ_fallback  otherwise
        0           if neither candidate is finite

So each step lowers the guard's loss at least as much as the fallback step would
have from the same point. The rule needs the loss at two candidate points that
training has not visited, which the gradient and `value=` cannot give: the guard
takes `loss_fn(params) -> scalar`, and costs **two extra loss evaluations** (forward
only, no gradient) per step. For minibatch tasks, close `loss_fn` over a fixed
batch. Both optimizers' states advance every step, fed the guard's gradients.
`branch_counts(state)` reads how often each branch was taken.

**The nominal term** (Harrison et al. 2022). A black-box learned update can be
unstable outside its meta-training distribution; adding a hand-designed descent
direction keeps a floor of progress under it:

    Δ = Δ_learned + w · Δ_nominal

`weight` may be a traced array, so meta-training can differentiate through it;
`WithNominal(lopt)` makes it a meta-parameter of a learned optimizer.

Non-finite gradients: NaN becomes 0 and ±inf the largest float of the dtype
before either optimizer sees them, so NaN never reaches the parameters.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .lopt.mlp import check_num_steps


def clean_gradients(grads):
    """NaN → 0, ±inf → ± the dtype's largest finite value (finite values unchanged)."""
    return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0), grads)


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _loss_at(loss_fn, params, updates):
    """L(θ + Δ) as a float32 scalar; +inf where Δ or the loss is not finite."""
    candidate = optax.apply_updates(params, updates)
    loss = jnp.asarray(loss_fn(candidate), jnp.float32)
    if loss.shape != ():
        raise ValueError(f"loss_guarded: loss_fn must return a scalar, got shape {loss.shape}; "
                         "reduce it with jnp.mean or jnp.sum")
    return jnp.where(_all_finite(updates) & jnp.isfinite(loss), loss, jnp.inf)


class GuardState(NamedTuple):
    learned: Any            # the learned optimizer's state
    fallback: Any           # the fallback optimizer's state
    learned_steps: jax.Array    # steps that took the learned update (int32)
    fallback_steps: jax.Array   # steps that took the fallback update (int32)
    skipped_steps: jax.Array    # steps where neither candidate was finite (no update)
    took_learned: jax.Array     # did the last step take the learned update (bool)


def loss_guarded(learned, fallback, loss_fn: Callable | None = None) -> optax.GradientTransformationExtraArgs:
    """LGL2O: the learned update where its candidate's loss is no higher than the fallback's
    (see the module doc for the exact rule; two extra loss evaluations per step).

    learned:  the learned optimizer (any optax transformation, e.g. `minilopt.pretrained(T)`).
    fallback: a generic optimizer, e.g. `optax.adam(1e-2)`.
    loss_fn:  `loss_fn(params) -> scalar`, the loss the guard compares candidates by (required)."""
    if loss_fn is None or not callable(loss_fn):
        raise ValueError(
            "loss_guarded needs loss_fn=: the rule compares the loss at the two candidate points θ + Δ, "
            "which the gradient and value= do not give. Pass loss_guarded(learned, fallback, "
            "loss_fn=lambda params: task.loss(params, fixed_batch))"
            + ("" if loss_fn is None else f"; got a {type(loss_fn).__name__}, not a function"))
    learned = optax.with_extra_args_support(learned)
    fallback = optax.with_extra_args_support(fallback)

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return GuardState(learned.init(params), fallback.init(params), zero, zero, zero, jnp.zeros((), bool))

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("loss_guarded.update needs params: update(grads, state, params), because the guard "
                             "evaluates loss_fn at params + each candidate update")
        grads = clean_gradients(grads)
        d_learned, s_learned = learned.update(grads, state.learned, params, **extra_args)
        d_fallback, s_fallback = fallback.update(grads, state.fallback, params, **extra_args)
        loss_learned = _loss_at(loss_fn, params, d_learned)
        loss_fallback = _loss_at(loss_fn, params, d_fallback)
        take_learned = jnp.isfinite(loss_learned) & (loss_learned <= loss_fallback)
        take_fallback = ~take_learned & jnp.isfinite(loss_fallback)

        def choose(dl, df, p):
            dl, df = jnp.asarray(dl, p.dtype), jnp.asarray(df, p.dtype)
            return jnp.where(take_learned, dl, jnp.where(take_fallback, df, jnp.zeros_like(p)))

        updates = jax.tree.map(choose, d_learned, d_fallback, params)
        as_int = lambda b: b.astype(jnp.int32)
        return updates, GuardState(
            s_learned, s_fallback,
            state.learned_steps + as_int(take_learned),
            state.fallback_steps + as_int(take_fallback),
            state.skipped_steps + as_int(~take_learned & ~take_fallback),
            take_learned)

    return optax.GradientTransformationExtraArgs(init, update)


def _find(state, kind):
    if isinstance(state, kind):
        return state
    if isinstance(state, (tuple, list)):   # e.g. inside optax.chain's tuple of states
        for s in state:
            found = _find(s, kind)
            if found is not None:
                return found
    return None


def branch_counts(state) -> dict:
    """How often the guard took each branch: {"learned", "fallback", "skipped"} (they sum to
    the steps taken). Works on a GuardState or any state holding one (optax.chain); inside jit too."""
    guard = _find(state, GuardState)
    if guard is None:
        raise ValueError(f"branch_counts: no loss_guarded state found in a {type(state).__name__}; "
                         "pass the state of a loss_guarded(...) optimizer")
    return {"learned": guard.learned_steps, "fallback": guard.fallback_steps, "skipped": guard.skipped_steps}


class NominalState(NamedTuple):
    learned: Any
    nominal: Any


def nominal(learned, nominal=None, weight=1.0) -> optax.GradientTransformationExtraArgs:
    """Δ = Δ_learned + weight · Δ_nominal (Harrison et al. 2022).

    nominal: a hand-designed optimizer whose update is a descent direction (default optax.adam(1e-3)).
    weight:  a float or a (traced, differentiable) scalar array."""
    if nominal is None:
        nominal = optax.adam(1e-3)
    learned = optax.with_extra_args_support(learned)
    nominal = optax.with_extra_args_support(nominal)
    if not isinstance(weight, jax.Array):
        try:
            if not jnp.isfinite(float(weight)):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"nominal: weight must be a finite number, got {weight!r}") from None

    def init(params):
        return NominalState(learned.init(params), nominal.init(params))

    def update(grads, state, params=None, **extra_args):
        grads = clean_gradients(grads)
        d_learned, s_learned = learned.update(grads, state.learned, params, **extra_args)
        d_nominal, s_nominal = nominal.update(grads, state.nominal, params, **extra_args)
        updates = jax.tree.map(lambda a, b: (a + weight * b).astype(jnp.result_type(a)), d_learned, d_nominal)
        return updates, NominalState(s_learned, s_nominal)

    return optax.GradientTransformationExtraArgs(init, update)


class WithNominal:
    """A learned optimizer plus a nominal term whose weight is a meta-parameter:

        theta = WithNominal(MLPLOpt()).init(key)   # {"lopt": θ of the MLP, "nominal_weight": w0}
        opt   = WithNominal(MLPLOpt()).optimizer(theta, num_steps=T)

    Same interface as the classes of `minilopt.lopt`, so the meta-trainer can learn w."""

    def __init__(self, lopt, nominal_fn: Callable[[], Any] = lambda: optax.adam(1e-3), init_weight: float = 0.1):
        self.lopt, self.nominal_fn, self.init_weight = lopt, nominal_fn, float(init_weight)

    def init(self, key) -> dict:
        return {"lopt": self.lopt.init(key), "nominal_weight": jnp.asarray(self.init_weight, jnp.float32)}

    def optimizer(self, theta, num_steps: int) -> optax.GradientTransformationExtraArgs:
        check_num_steps(num_steps)
        return nominal(self.lopt.optimizer(theta["lopt"], num_steps), self.nominal_fn(), theta["nominal_weight"])

    def __repr__(self):
        return f"WithNominal({self.lopt!r}, init_weight={self.init_weight})"


__all__ = ["loss_guarded", "branch_counts", "GuardState", "nominal", "NominalState", "WithNominal",
           "clean_gradients"]
