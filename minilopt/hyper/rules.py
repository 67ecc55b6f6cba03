"""The paper's update rules, with their hyperparameters in the state, raw and differentiable.

Every rule is an optax `GradientTransformation` whose state is a `RuleState`:

    RuleState(hyperparams={raw name: value}, count, slots)

`hyperparams` holds only the hyperparameters the rule can learn, stored *raw*: the
variables a hyper-step acts on (Chandra et al. 2022, as in their released code):

| rule                      | raw hyperparameters                     | state (slots) at init |
|---------------------------|-----------------------------------------|-----------------------|
| `sgd(α)`                  | alpha                                   | –                     |
| `sgd(α, μ)`, μ ≠ 0        | alpha, mu                               | momentum buffer       |
| `sgd_per_param(α)`        | alpha: one per parameter leaf           | –                     |
| `adagrad(α)`              | alpha                                   | G = 0.1               |
| `rmsprop(α, γ)`           | sqrt_alpha = √α, atanh_gamma = atanh(2γ−1) | s = 0              |
| `adam(α, β1, β2)`         | alpha, atanh_beta1, atanh_beta2         | m = 0, v = ε          |

The prefix of a raw name says how it maps back to the value (`values`):
`sqrt_` squares, `atanh_` maps onto (0, 1) with (tanh r + 1)/2, `log_` exponentiates.
Anything else is the value itself, so the read-out also works for the
hyperparameters of `optax.inject_hyperparams` optimizers.

Hyperparameters that are not learned (RMSProp's γ with `learn_gamma=False`, Adam's
betas with `learn_betas=False`, ε) are Python constants closed over by `update`.

Deviation from the paper, off by default: `log_alpha=True` stores log α, so α can
never go negative (the paper's α may, see lesson 02).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import fast


class RuleState(NamedTuple):
    hyperparams: dict  # raw, differentiable hyperparameters, e.g. {"alpha": 0.01}
    count: jax.Array   # steps taken (int32)
    slots: Any         # per-parameter state: momentum buffer, G, s or (m, v); () if none


# ---- raw parameterisations --------------------------------------------------------

_FROM_RAW = {
    "sqrt": jnp.square,                        # α = a²
    "atanh": lambda r: (jnp.tanh(r) + 1) / 2,  # β = (tanh β̃ + 1) / 2, always in (0, 1)
    "log": jnp.exp,                            # α = exp(log α), always > 0
}
_TO_RAW = {
    "sqrt": jnp.sqrt,
    "atanh": lambda v: jnp.arctanh(2 * v - 1),
    "log": jnp.log,
}


def _split_name(raw_name: str) -> tuple[str | None, str]:
    how, _, name = raw_name.partition("_")
    return (how, name) if how in _FROM_RAW and name else (None, raw_name)


def values(raw: dict) -> dict:
    """The hyperparameters' values from their raw form: {"sqrt_alpha": 0.1} -> {"alpha": 0.01}."""
    out = {}
    for raw_name, r in raw.items():
        how, name = _split_name(raw_name)
        out[name] = r if how is None else jax.tree.map(_FROM_RAW[how], r)
    return out


def _hyper_dtype(params):
    # As optax.inject_hyperparams: the parameters' widest float dtype, but never below float32.
    floats = [jnp.result_type(x) for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return jnp.promote_types(jnp.result_type(*floats) if floats else jnp.float32, jnp.float32)


def _concrete(x):
    """x as a NumPy value, or None when it is traced (e.g. vmapped over initial α)."""
    try:
        return np.asarray(x, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_positive(rule: str, name: str, value):
    v = _concrete(value)
    if v is not None and not (np.all(v > 0) and np.all(np.isfinite(v))):
        raise ValueError(f"{rule}: initial {name} must be finite and > 0, got {v.tolist()}; "
                         f"pass a positive {name} (e.g. {name}=0.01)")


def check_params(params, who: str = "hyperoptimize") -> None:
    """A ValueError unless every parameter leaf is a real floating-point array: an
    integer or bool leaf would truncate the update, a complex one lose its imaginary part."""
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{who}: parameter leaf {jax.tree_util.keystr(path) or '(the root)'} has dtype "
                             f"{dtype}; the optimizer needs real floating-point parameters: convert it with "
                             "jnp.asarray(x, jnp.float32), or keep it out of the optimized tree")


def _check_unit(rule: str, name: str, value, allow_zero: bool = False):
    v = _concrete(value)
    if v is None:
        return
    low_ok = v >= 0 if allow_zero else v > 0
    if not (np.all(low_ok) and np.all(v < 1)):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{rule}: initial {name} must lie in {interval}, got {v.tolist()}; "
                         f"pass e.g. {name}=0.9")


def _alpha(log_alpha: bool) -> tuple[str, str | None]:
    return ("log_alpha", "log") if log_alpha else ("alpha", None)


def _raw_init(spec: dict, dtype) -> dict:
    """{raw name: (value, how)} -> {raw name: raw array of `dtype`}."""
    return {k: (jnp.asarray(v, dtype) if how is None else _TO_RAW[how](jnp.asarray(v, dtype)))
            for k, (v, how) in spec.items()}


def _same_dtype(tree, like):
    # A float64 hyperparameter must not silently widen float32 weights or slots.
    return jax.tree.map(lambda x, l: x.astype(jnp.result_type(l)), tree, like)


def ema(old, new, beta):
    """β·old + (1 − β)·new: the moving averages m, v (Adam) and s (RMSProp).

    The rules run `fast.ema`: the same value, with its derivative in β, old − new,
    written by hand so that forward mode need not keep yesterday's average."""
    return beta * old + (1 - beta) * new


def adam_step(alpha, m, v, c1, c2, eps):
    """Adam's step Δ = −α · m̂ / (sqrt(v̂) + ε), with m̂ = m / c1, v̂ = v / c2.

    `adam` runs `fast.adam_step`: the same number, in the form XLA runs fastest."""
    return -alpha * (m / c1) / (jnp.sqrt(v / c2) + eps)


# ---- the rules ---------------------------------------------------------------------

def sgd(alpha=0.01, mu=0.0, *, log_alpha: bool = False) -> optax.GradientTransformation:
    """SGD, with learnable momentum when μ ≠ 0.

        buf = g                 at the first step,
        buf = μ·buf + g         later;
        Δ   = −α·buf            (Δ = −α·g when μ = 0: then μ is neither used nor learned)
    """
    _check_positive("sgd", "alpha", alpha)
    _check_unit("sgd", "mu", mu, allow_zero=True)
    momentum = _concrete(mu) is None or float(_concrete(mu)) != 0.0
    alpha_name, alpha_how = _alpha(log_alpha)
    spec = {alpha_name: (alpha, alpha_how), **({"mu": (mu, None)} if momentum else {})}

    def init(params):
        check_params(params, "sgd")
        slots = jax.tree.map(jnp.zeros_like, params) if momentum else ()
        return RuleState(_raw_init(spec, _hyper_dtype(params)), jnp.zeros((), jnp.int32), slots)

    def update(grads, state, params=None):
        h = values(state.hyperparams)
        slots = ()
        if momentum:
            first = state.count == 0
            slots = jax.tree.map(lambda b, g: jnp.where(first, g, b * h["mu"] + g), state.slots, grads)
            slots = _same_dtype(slots, grads)
        direction = slots if momentum else grads
        updates = jax.tree.map(lambda d: -(d * h["alpha"]), direction)
        return _same_dtype(updates, grads), RuleState(state.hyperparams, state.count + 1, slots)

    return optax.GradientTransformation(init, update)


def sgd_per_param(alpha=0.01, *, log_alpha: bool = False) -> optax.GradientTransformation:
    """SGD with one learnable α per parameter leaf (tensor): Δ_i = −α_i·g_i.

    `alpha` is a number (every leaf starts there) or a pytree with one number per leaf."""
    alpha_name, alpha_how = _alpha(log_alpha)
    for a in jax.tree.leaves(alpha):
        _check_positive("sgd_per_param", "alpha", a)

    def init(params):
        check_params(params, "sgd_per_param")
        dtype = _hyper_dtype(params)
        scalar = jax.tree_util.treedef_is_leaf(jax.tree.structure(alpha))
        per_leaf = jax.tree.map(lambda _: alpha, params) if scalar else alpha
        if jax.tree.structure(per_leaf) != jax.tree.structure(params):
            raise ValueError("sgd_per_param: alpha must be a number or a pytree with one number per "
                             f"parameter leaf;\n  parameters: {jax.tree.structure(params)}\n"
                             f"  alpha:      {jax.tree.structure(per_leaf)}")
        raw = jax.tree.map(lambda a: _raw_init({"a": (a, alpha_how)}, dtype)["a"], per_leaf)
        return RuleState({alpha_name: raw}, jnp.zeros((), jnp.int32), ())

    def update(grads, state, params=None):
        a = values(state.hyperparams)["alpha"]
        updates = jax.tree.map(lambda g, ai: -(g * ai), grads, a)
        return _same_dtype(updates, grads), RuleState(state.hyperparams, state.count + 1, ())

    return optax.GradientTransformation(init, update)


def adagrad(alpha=0.01, *, eps: float = 1e-10, initial_accumulator: float = 0.1,
            log_alpha: bool = False) -> optax.GradientTransformation:
    """AdaGrad with a learnable α.

        G = G + g²          (G starts at 0.1)
        Δ = −α·g / sqrt(G + ε)
    """
    _check_positive("adagrad", "alpha", alpha)
    alpha_name, alpha_how = _alpha(log_alpha)

    def init(params):
        check_params(params, "adagrad")
        G = jax.tree.map(lambda p: jnp.zeros_like(p) + initial_accumulator, params)
        return RuleState(_raw_init({alpha_name: (alpha, alpha_how)}, _hyper_dtype(params)),
                         jnp.zeros((), jnp.int32), G)

    def update(grads, state, params=None):
        a = values(state.hyperparams)["alpha"]
        G = jax.tree.map(lambda G, g: G + jnp.square(g), state.slots, grads)
        updates = jax.tree.map(lambda g, G: -(a * g / jnp.sqrt(G + eps)), grads, G)
        return _same_dtype(updates, grads), RuleState(state.hyperparams, state.count + 1, G)

    return optax.GradientTransformation(init, update)


def rmsprop(alpha=0.01, gamma=0.99, *, eps: float = 1e-8, learn_gamma: bool = True,
            log_alpha: bool = False) -> optax.GradientTransformation:
    """RMSProp with learnable α (stored as √α) and γ (stored as atanh(2γ − 1)).

        s = γ·s + (1 − γ)·g²      (s starts at 0)
        Δ = −α·g / sqrt(s + ε)

    `learn_gamma=False` is the paper's "RMSProp, α only": γ is then a constant."""
    _check_positive("rmsprop", "alpha", alpha)
    _check_unit("rmsprop", "gamma", gamma)
    spec = {"log_alpha" if log_alpha else "sqrt_alpha": (alpha, "log" if log_alpha else "sqrt")}
    if learn_gamma:
        spec["atanh_gamma"] = (gamma, "atanh")

    def init(params):
        check_params(params, "rmsprop")
        s = jax.tree.map(jnp.zeros_like, params)
        return RuleState(_raw_init(spec, _hyper_dtype(params)), jnp.zeros((), jnp.int32), s)

    def update(grads, state, params=None):
        h = values(state.hyperparams)
        a, g_ = h["alpha"], h.get("gamma", gamma)
        s = jax.tree.map(lambda s, g: fast.ema(s, jnp.square(g), g_), state.slots, grads)
        updates = jax.tree.map(lambda g, s: -(a * g / jnp.sqrt(s + eps)), grads, s)
        return _same_dtype(updates, grads), RuleState(state.hyperparams, state.count + 1,
                                                      _same_dtype(s, grads))

    return optax.GradientTransformation(init, update)


def adam(alpha=1e-3, beta1=0.9, beta2=0.999, *, eps: float = 1e-8, learn_betas: bool = True,
         log_alpha: bool = False) -> optax.GradientTransformation:
    """Adam with learnable α and betas (each β stored as atanh(2β − 1)).

        m = β1·m + (1 − β1)·g          (m starts at 0)
        v = β2·v + (1 − β2)·g²         (v starts at ε, not 0: sqrt has an
                                        infinite slope at 0, see below)
        Δ = −α · m̂ / (sqrt(v̂) + ε),   m̂ = m / (1 − β1ⁿ),  v̂ = v / (1 − β2ⁿ)

    With v = 0 on a coordinate whose gradient is always 0 (a blank pixel), d√v̂/dβ2
    would be 0·∞ = NaN. `learn_betas=False` is Baydin et al.'s Adam: α only."""
    _check_positive("adam", "alpha", alpha)
    _check_unit("adam", "beta1", beta1)
    _check_unit("adam", "beta2", beta2)
    alpha_name, alpha_how = _alpha(log_alpha)
    spec = {alpha_name: (alpha, alpha_how)}
    if learn_betas:
        spec.update(atanh_beta1=(beta1, "atanh"), atanh_beta2=(beta2, "atanh"))

    def init(params):
        check_params(params, "adam")
        m = jax.tree.map(jnp.zeros_like, params)
        v = jax.tree.map(lambda p: jnp.zeros_like(p) + eps, params)
        return RuleState(_raw_init(spec, _hyper_dtype(params)), jnp.zeros((), jnp.int32), (m, v))

    def update(grads, state, params=None):
        h = values(state.hyperparams)
        a, b1, b2 = h["alpha"], h.get("beta1", beta1), h.get("beta2", beta2)
        n = state.count + 1
        m, v = state.slots
        m = _same_dtype(jax.tree.map(lambda m, g: fast.ema(m, g, b1), m, grads), grads)
        v = _same_dtype(jax.tree.map(lambda v, g: fast.ema(v, g * g, b2), v, grads), grads)
        c1, c2 = 1 - b1 ** n.astype(a.dtype), 1 - b2 ** n.astype(a.dtype)
        updates = jax.tree.map(lambda m, v: fast.adam_step(a, m, v, c1, c2, eps), m, v)
        return _same_dtype(updates, grads), RuleState(state.hyperparams, n, (m, v))

    return optax.GradientTransformation(init, update)


__all__ = ["RuleState", "check_params", "values", "ema", "adam_step", "sgd", "sgd_per_param", "adagrad", "rmsprop",
           "adam"]
