"""A per-parameter MLP learned optimizer, in the style of small_fc_lopt.

One tiny MLP, shared by every parameter of every tensor, reads a handful of
statistics of that parameter and writes its update:

    inputs (per parameter, each channel normalised over its tensor):
        g, p, m_β for β in (0.5, 0.9, 0.99, 0.999), v (the rms average, β = 0.999),
        m_β·rsqrt(v + ε), rsqrt(v + ε), g·rsqrt(v + ε)
    inputs (shared by the whole tree):
        tanh(10·(t/T − τ)) for a few fractions τ            (where we are in training)

    d, μ = MLP(inputs)
    Δ    = d · exp(μ·c1) · c2          p ← p − Δ

Normalising a channel x over its tensor, `x · rsqrt(ε + mean(x²))`, makes the
network blind to the overall scale of gradients and parameters, so one set of
meta-parameters can serve tensors and tasks of very different scales. The price:
the step size must come from the network (c2 and exp(μ·c1)), not from |g|.

`MLPLOpt.init` returns a network that starts as per-tensor normalised momentum

    Δ = c2 · m_0.9 / sqrt(ε + mean(m_0.9²))

(two ReLU units wired to +m and −m, d = relu(m) − relu(−m), every other output
weight zero), so meta-training starts from a plain, stable optimizer rather than
from noise. The other hidden units have random input weights: they are what
meta-training recruits.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import nn
from . import features

GRAD_CLIP = 1000.0   # gradients are clipped to ±GRAD_CLIP (NaN → 0) before anything else


def clean_gradient(g, bound: float = GRAD_CLIP):
    """float32 `clip(g, −bound, bound)` with NaN replaced by 0 (±inf become ±bound).

    A learned optimizer must never turn one bad gradient into NaN parameters: this
    is the only place a non-finite number could enter.
    """
    g = jnp.asarray(g, jnp.float32)
    return jnp.clip(jnp.where(jnp.isnan(g), 0.0, g), -bound, bound)


def check_num_steps(num_steps) -> None:
    """A ValueError unless `num_steps` (the training horizon T) is a positive int
    (Python or numpy, not bool; a string, a bool or 2.5 is refused). A traced integer
    array cannot be checked for its value and is let through."""
    if isinstance(num_steps, jax.core.Tracer):
        if jnp.issubdtype(num_steps.dtype, jnp.integer) and num_steps.shape == ():
            return
        ok = False
    else:
        ok = (isinstance(num_steps, (int, np.integer)) and not isinstance(num_steps, (bool, np.bool_))
              and num_steps > 0)
    if not ok:
        raise ValueError(f"num_steps (the training horizon T) must be a positive int, got {num_steps!r}; "
                         "pass the number of steps you will train for, e.g. optimizer(theta, num_steps=1000)")


def require_params(params, name: str) -> None:
    if params is None:
        raise ValueError(f"{name}.update needs the current parameters: call update(grads, state, params) "
                         "(optax.apply_updates alone is not enough; the parameters are one of its inputs)")


class MLPLOptState(NamedTuple):
    count: jax.Array      # t, the number of updates so far (int32)
    momentum: object      # tree of float32, p.shape + (len(momentum_decays),)
    rms: object           # tree of float32, p.shape + (1,)


class MLPLOpt:
    """The per-parameter MLP learned optimizer.

        lopt  = MLPLOpt()
        theta = lopt.init(key)                       # a dict of arrays, the meta-parameters
        opt   = lopt.optimizer(theta, num_steps=T)   # an optax GradientTransformationExtraArgs

    Arguments:
        hidden: widths of the hidden layers (default one layer of 32: two linear layers).
        momentum_decays: the β of the momentum channels.
        rms_decay: the β of the second-moment average.
        fractions: the τ of the training-fraction embedding tanh(10·(t/T − τ)).
        step_mult, exp_mult: c2 and c1 in Δ = d · exp(μ·c1) · c2.
        eps: ε of the per-tensor normaliser x·rsqrt(ε + mean(x²)).
        rms_eps: ε inside rsqrt(v + ε).
    """

    def __init__(self, hidden: Sequence[int] = (32,), momentum_decays: Sequence[float] = (0.5, 0.9, 0.99, 0.999),
                 rms_decay: float = 0.999, fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 step_mult: float = 1e-3, exp_mult: float = 1e-3, eps: float = 1e-5, rms_eps: float = 1e-8):
        if len(hidden) < 1 or min(hidden) < 2:
            raise ValueError(f"hidden must list at least one layer of width >= 2, got {tuple(hidden)}")
        if 0.9 not in tuple(momentum_decays):
            raise ValueError(f"momentum_decays must contain 0.9 (the initial optimizer uses m_0.9), "
                             f"got {tuple(momentum_decays)}")
        self.hidden = tuple(int(h) for h in hidden)
        self.momentum_decays = tuple(float(b) for b in momentum_decays)
        self.rms_decay = float(rms_decay)
        self.fractions = tuple(float(f) for f in fractions)
        self.step_mult, self.exp_mult = float(step_mult), float(exp_mult)
        self.eps, self.rms_eps = float(eps), float(rms_eps)

    # -- the inputs ---------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        """The per-parameter channels, in input order (each normalised over its tensor)."""
        ms = [f"m{b}" for b in self.momentum_decays]
        return (["g", "p"] + ms + ["v"] + [f"{m}*rsqrt(v)" for m in ms] + ["rsqrt(v)", "g*rsqrt(v)"])

    @property
    def num_inputs(self) -> int:
        return len(self.channel_names) + len(self.fractions)

    def parameter_channels(self, g, p, m, v):
        """The raw per-parameter channels, stacked on a new last axis (float32).

        `g` and `p` have the parameter's shape, `m` has `p.shape + (k,)`, `v` has
        `p.shape + (1,)` (the already-updated accumulators)."""
        g, p = jnp.asarray(g, jnp.float32)[..., None], jnp.asarray(p, jnp.float32)[..., None]
        inv = jax.lax.rsqrt(v + self.rms_eps)
        return jnp.concatenate([g, p, m, v, m * inv, inv, g * inv], axis=-1)

    def normalise(self, channels):
        """Each channel (last axis) over all the tensor's elements: x·rsqrt(ε + mean(x²))."""
        return features.second_moment_normalise(channels, axis=tuple(range(channels.ndim - 1)), eps=self.eps)

    def time_features(self, t, num_steps):
        """The training-fraction embedding tanh(10·(t/T − τ)), one per τ."""
        return features.fraction_embedding(t, num_steps, self.fractions)

    # -- the network --------------------------------------------------------
    def network(self, theta, x):
        """The MLP: x (..., num_inputs) → (d, μ), ReLU between layers."""
        layers = [theta[f"layer_{i}"] for i in range(len(self.hidden) + 1)]
        out = nn.mlp(layers, x, jax.nn.relu)
        return out[..., 0], out[..., 1]

    def step(self, d, mu):
        """Δ = d · exp(μ·c1) · c2 (subtracted from the parameters)."""
        return d * jnp.exp(mu * self.exp_mult) * self.step_mult

    def init(self, key) -> dict:
        """Meta-parameters that start as per-tensor normalised momentum (see the module doc).

        {"layer_0": {"w": (num_inputs, h0), "b": (h0,)}, ..., "layer_L": {"w": (h_last, 2), "b": (2,)}}
        """
        sizes = (self.num_inputs,) + self.hidden + (2,)
        layers = nn.mlp_init(key, sizes)
        m_index = self.channel_names.index("m0.9")
        # units 0 and 1 of every hidden layer carry +x and −x (x = m_0.9 at the input)
        first = layers[0]
        w = first["w"].at[:, :2].set(0.0).at[m_index, 0].set(1.0).at[m_index, 1].set(-1.0)
        layers[0] = {"w": w, "b": first["b"]}
        for i in range(1, len(layers) - 1):
            eye = jnp.zeros_like(layers[i]["w"][:, :2]).at[0, 0].set(1.0).at[1, 1].set(1.0)
            layers[i] = {"w": layers[i]["w"].at[:, :2].set(eye), "b": layers[i]["b"]}
        # the output: d = relu(+x) − relu(−x) = x, μ = 0; the random units start silent
        out = jnp.zeros_like(layers[-1]["w"]).at[0, 0].set(1.0).at[1, 0].set(-1.0)
        layers[-1] = {"w": out, "b": jnp.zeros_like(layers[-1]["b"])}
        return {f"layer_{i}": layer for i, layer in enumerate(layers)}

    # -- the optimizer ------------------------------------------------------
    def optimizer(self, theta, num_steps: int) -> optax.GradientTransformationExtraArgs:
        """An optax transformation stepping with meta-parameters `theta` over a run of `num_steps`.

        It needs `params` in `update`; it ignores `value=` (no loss features)."""
        check_num_steps(num_steps)
        decays, rms_decays = self.momentum_decays, (self.rms_decay,)

        def init_fn(params):
            features.check_params(params)
            return MLPLOptState(
                count=jnp.zeros((), jnp.int32),
                momentum=jax.tree.map(lambda p: features.accumulator_init(p, len(decays)), params),
                rms=jax.tree.map(lambda p: features.accumulator_init(p, 1), params))

        def update_fn(updates, state, params=None, **extra_args):
            del extra_args  # the loss (value=) is not an input of this optimizer
            require_params(params, "MLPLOpt")
            features.check_params(params)
            time = self.time_features(state.count, num_steps)

            def one_tensor(g, p, m, v):
                g = clean_gradient(g)
                m = features.momentum_update(m, g, decays)
                v = features.rms_update(v, g, rms_decays)
                x = self.normalise(self.parameter_channels(g, p, m, v))
                x = jnp.concatenate([x, jnp.broadcast_to(time, x.shape[:-1] + time.shape)], axis=-1)
                d, mu = self.network(theta, x)
                return (-self.step(d, mu)).astype(jnp.result_type(p)), m, v

            treedef = jax.tree.structure(updates)
            out = [one_tensor(*leaves) for leaves in zip(
                treedef.flatten_up_to(updates), treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.momentum), treedef.flatten_up_to(state.rms))]
            new_updates, m, v = (treedef.unflatten([leaf[i] for leaf in out]) for i in range(3))
            return new_updates, MLPLOptState(state.count + 1, m, v)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def __repr__(self):
        return (f"MLPLOpt(hidden={self.hidden}, momentum_decays={self.momentum_decays}, "
                f"step_mult={self.step_mult}, exp_mult={self.exp_mult})")


def num_meta_parameters(theta) -> int:
    """How many numbers `theta` holds."""
    return sum(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(theta))
