"""Features that learned optimizers read: accumulators, the loss buffer, the
training-fraction embedding and per-tensor normalisers.

Every function here is small, pure and works on one array (or one scalar loss), so a
learned optimizer maps it over the parameter tree with `jax.tree.map`. Accumulators
keep several decays at once, with the decay axis LAST: a momentum over decays
(0.9, 0.99, 0.999) of a parameter of shape (8, 5) has shape (8, 5, 3). None of them
is bias-corrected: the learned network is trained to read the raw values.

All the math is float32, whatever the parameter dtype.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The 9 points of VeLO's training-fraction embedding tanh(10·(t/T − τ)).
VELO_FRACTIONS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)


def _decays(decays) -> jax.Array:
    return jnp.asarray(decays, jnp.float32)


# ---------------------------------------------------------------------------
# Accumulators over several decays
# ---------------------------------------------------------------------------
def accumulator_init(p, num_decays: int) -> jax.Array:
    """Zeros of shape `p.shape + (num_decays,)`, float32."""
    return jnp.zeros(jnp.shape(p) + (num_decays,), jnp.float32)


def momentum_update(m, g, decays: Sequence[float]):
    """One step of momentum for every decay β at once (decay axis last):

        m ← β·m + (1−β)·g
    """
    b = _decays(decays)
    return b * m + (1.0 - b) * jnp.asarray(g, jnp.float32)[..., None]


def rms_update(v, g, decays: Sequence[float]):
    """One step of the second-moment average for every decay β (decay axis last):

        v ← β·v + (1−β)·g²
    """
    g = jnp.asarray(g, jnp.float32)
    b = _decays(decays)
    return b * v + (1.0 - b) * jnp.square(g)[..., None]


# ---------------------------------------------------------------------------
# Factored (Adafactor-style) second moment
# ---------------------------------------------------------------------------
def factored_dims(shape) -> tuple[int, int] | None:
    """`(d0, d1)`: the axes of the largest and second largest dimensions, or None
    for rank < 2. Ties follow numpy's stable argsort, so shape (4, 4) gives
    d0 = 1, d1 = 0."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    return int(order[-1]), int(order[-2])


def factored_init(p, num_decays: int) -> dict:
    """The factored state of one parameter.

    rank ≥ 2: `{"v_row": shape without d0, "v_col": shape without d1}` (+ decay axis);
    rank < 2: `{"v_diag": shape}` (+ decay axis). All zeros, float32.
    """
    shape = jnp.shape(p)
    dims = factored_dims(shape)
    if dims is None:
        return {"v_diag": accumulator_init(p, num_decays)}
    d0, d1 = dims
    row = tuple(s for i, s in enumerate(shape) if i != d0)
    col = tuple(s for i, s in enumerate(shape) if i != d1)
    return {"v_row": jnp.zeros(row + (num_decays,), jnp.float32),
            "v_col": jnp.zeros(col + (num_decays,), jnp.float32)}


def factored_update(state: dict, g, decays: Sequence[float]) -> dict:
    """One step of the factored second moment, with `gsq = g² + 1e-30`:

        rank ≥ 2:  v_row ← β·v_row + (1−β)·mean(gsq, axis=d0)
                   v_col ← β·v_col + (1−β)·mean(gsq, axis=d1)
        rank < 2:  v_diag ← β·v_diag + (1−β)·gsq
    """
    g = jnp.asarray(g, jnp.float32)
    b = _decays(decays)
    dims = factored_dims(g.shape)
    gsq = jnp.square(g) + 1e-30
    if dims is None:
        return {"v_diag": b * state["v_diag"] + (1.0 - b) * gsq[..., None]}
    d0, d1 = dims
    return {"v_row": b * state["v_row"] + (1.0 - b) * jnp.mean(gsq, axis=d0)[..., None],
            "v_col": b * state["v_col"] + (1.0 - b) * jnp.mean(gsq, axis=d1)[..., None]}


def rsqrt_safe(x):
    """1 / sqrt(max(x, 1e-9))."""
    return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


def factored_factors(state: dict, shape) -> tuple:
    """The row and column factors, expanded so they broadcast against `shape + (k,)`:

        rank ≥ 2:  row = rsqrt_safe(v_row / (mean(v_row over the d1 axis) + 1e-9))  at d0
                   col = rsqrt_safe(v_col)                                          at d1
        rank < 2:  row = rsqrt_safe(v_diag + 1e-9), col = 1

    "The d1 axis" of v_row is d1 − 1 when d1 > d0, because v_row lost axis d0.
    """
    dims = factored_dims(shape)
    if dims is None:
        row = rsqrt_safe(state["v_diag"] + 1e-9)
        return row, jnp.ones_like(row)
    d0, d1 = dims
    v_row, v_col = state["v_row"], state["v_col"]
    d1_in_row = d1 - 1 if d1 > d0 else d1
    row = rsqrt_safe(v_row / (jnp.mean(v_row, axis=d1_in_row, keepdims=True) + 1e-9))
    col = rsqrt_safe(v_col)
    return jnp.expand_dims(row, d0), jnp.expand_dims(col, d1)


def factored_precondition(state: dict, g):
    """The Adafactor-preconditioned gradient, one channel per decay:

        fac_g = g · row · col      (factors from `factored_factors`)
    """
    g = jnp.asarray(g, jnp.float32)
    row, col = factored_factors(state, g.shape)
    return g[..., None] * row * col


# ---------------------------------------------------------------------------
# Loss buffer: exponential moving averages of the training loss
# ---------------------------------------------------------------------------
def loss_buffer_init(horizon: int, num: int = 10) -> dict:
    """`num` loss averages with half-lives `logspace(1, log10(horizon), num)`.

        decays = exp(−1 / halflife),  means = 0,  running_min = 1e12,  iteration = 0

    VeLO as released uses `horizon = num_steps`; the legacy "bugged loss features"
    mode uses `horizon = 10` for every run length.
    """
    if horizon <= 0:
        raise ValueError(f"loss buffer horizon must be positive, got {horizon}")
    halflife = np.logspace(1.0, np.log10(float(horizon)), num)
    return {
        "means": jnp.zeros((num,), jnp.float32),
        "running_min": jnp.full((num,), 1e12, jnp.float32),
        "decays": jnp.asarray(np.exp(-1.0 / halflife), jnp.float32),
        "iteration": jnp.zeros((), jnp.int32),
    }


def loss_buffer_update(buf: dict, loss) -> dict:
    """Add one loss `L` at buffer iteration `i` (0-based):

        cm          = means / (1 − decays^(i+1))
        approx_max  = max(cm), or L itself when i = 0
        L           ← min(2·|approx_max|, L)          (a loss spike is clipped)
        means       ← decays·means + (1−decays)·L
        running_min ← min(running_min, means / (1 − decays^(i+1)))
        i           ← i + 1

    A non-finite loss is treated as the largest loss the clip allows,
    2·|approx_max| (0 on the very first step), so NaN never enters the buffer.
    """
    decays, means, i = buf["decays"], buf["means"], buf["iteration"]
    loss = jnp.asarray(loss, jnp.float32).reshape(())
    debias = 1.0 - decays ** (i + 1).astype(jnp.float32)
    approx_max = jnp.where(i == 0, loss, jnp.max(means / debias))
    ceiling = jnp.where(jnp.isfinite(approx_max), 2.0 * jnp.abs(approx_max), 0.0)
    loss = jnp.where(jnp.isfinite(loss), jnp.minimum(ceiling, loss), ceiling)
    means = decays * means + (1.0 - decays) * loss
    return {
        "means": means,
        "running_min": jnp.minimum(buf["running_min"], means / debias),
        "decays": decays,
        "iteration": i + 1,
    }


def loss_buffer_features(buf: dict):
    """Nine features comparing neighbouring loss averages, after an update:

        cm  = means / (1 − decays^i)
        f_k = clip((cm_k − min_k) / max(1e-8, cm_{k+1} − min_k) − 1, −1, 1),  k = 0..8

    with `min_k = running_min[k]`. All zero while i ≤ 2 (too little history).
    """
    i = buf["iteration"]
    cm = buf["means"] / (1.0 - buf["decays"] ** i.astype(jnp.float32))
    lo = buf["running_min"][:-1]
    f = jnp.clip((cm[:-1] - lo) / jnp.maximum(1e-8, cm[1:] - lo) - 1.0, -1.0, 1.0)
    return jnp.where(i <= 2, jnp.zeros_like(f), f)


# ---------------------------------------------------------------------------
# Training-fraction embedding
# ---------------------------------------------------------------------------
def fraction_embedding(t, num_steps, fractions: Sequence[float] = VELO_FRACTIONS,
                       sharpness: float = 10.0):
    """Where we are in training, as soft steps: `tanh(sharpness·(t/T − τ))` for each τ.

    Each feature flips from −1 to +1 as the fraction t/T passes τ.
    """
    frac = jnp.asarray(t, jnp.float32) / jnp.asarray(num_steps, jnp.float32)
    return jnp.tanh(sharpness * (frac - jnp.asarray(fractions, jnp.float32)))


# ---------------------------------------------------------------------------
# Per-tensor normalisers
# ---------------------------------------------------------------------------
def normaliser_from_sum_sq(sum_sq, count, eps: float = 1e-5):
    """The per-channel scale `rsqrt(eps + sum_sq / count)`.

    Taking a reduction (the sum of squares of a channel) rather than the channel
    itself lets a fast optimizer fold the scale into the next layer's weights
    instead of materialising a normalised copy of every channel.
    """
    return jax.lax.rsqrt(eps + jnp.asarray(sum_sq, jnp.float32) / count)


def second_moment_normalise(x, axis=None, eps: float = 1e-5):
    """`x · rsqrt(eps + mean(x², axis))`: unit second moment over `axis`.

    With `axis=None` the whole array is one channel. VeLO normalises each feature
    channel over all the elements of its tensor.
    """
    x = jnp.asarray(x, jnp.float32)
    sum_sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    count = x.size if axis is None else np.prod([x.shape[a] for a in np.atleast_1d(axis)])
    return x * normaliser_from_sum_sq(sum_sq, count, eps)


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------
def check_params(params) -> None:
    """Raise a ValueError naming every leaf that is not a floating-point array.

    Learned optimizers add float updates; an integer (or bool) leaf would be
    silently truncated, so it is rejected up front.
    """
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            bad.append(f"{jax.tree_util.keystr(path) or '<root>'} ({dtype})")
    if bad:
        raise ValueError(
            "learned optimizers need floating-point parameters; integer/non-float leaves: "
            + ", ".join(bad) + ". Cast them with .astype(jnp.float32) or keep them out of "
            "the optimized tree (e.g. optax.masked)."
        )
