"""Probes: what an optimizer does, measured from the outside on synthetic gradient streams.

Maheswaranathan et al. 2021 reverse-engineered learned optimizers and found momentum,
gradient clipping, learning-rate schedules and adaptation. Each is a response to a
controlled input, so each has a probe here that works for any optax transformation:

| probe            | input stream                                  | what it reads out                         |
|------------------|-----------------------------------------------|-------------------------------------------|
| `impulse`        | noise, plus one spike at t = 0 on coordinate 0 | response r_t; time scale τ = Σ_t r_t / r_0 |
| `gradient_scale` | a fixed direction times s, s = 1e-6 … 1e6      | |Δ| against s: slope, clipping, invariance |
| `schedule`       | stationary noise for the whole run            | |Δ_t| / |g_t| against t/T                 |
| `loss_trend`     | the same noise, with loss ∝ exp(ρ · t/T)        | step size against the loss trend ρ        |

Momentum with decay β answers a spike with r_t = r_0 β^t, so τ = 1/(1 − β) (over a
finite window of n steps, (1 − β^n)/(1 − β)). A response is the difference between
the run with the spike and the same run without it, so background noise cancels
for a linear optimizer and only the spike's effect is left for a nonlinear one.
The background matters: an optimizer that normalises per tensor sees the spike
only relative to the other coordinates.

Every probe runs the optimizer on a one-leaf parameter vector `{"w": zeros(size)}`,
applies its updates, and is one `lax.scan` under `jit`. The updates are returned
as sign-flipped step sizes, so descent is positive. An optimizer that cannot update
without a loss (`value=`) gets a synthetic, steadily decreasing one,
`value_t = exp(−t / steps)`; the result's `note` says so, and a warning too.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

SYNTHETIC_LOSS_NOTE = ("this optimizer needs value= (the loss), which a synthetic gradient stream does not have: "
                       "the probe passed a synthetic, steadily decreasing loss value_t = exp(-t/steps)")


def needs_value(opt, size: int = 4) -> bool:
    """Does `opt.update` fail without `value=`? (Checked by tracing one update.)"""
    params = {"w": jnp.zeros((size,), jnp.float32)}
    try:
        jax.eval_shape(lambda p: opt.update(p, opt.init(p), p), params)
        return False
    except (TypeError, ValueError, KeyError):
        return True


def _note(opt, size) -> str:
    if needs_value(opt, size):
        warnings.warn(SYNTHETIC_LOSS_NOTE, UserWarning, stacklevel=3)
        return SYNTHETIC_LOSS_NOTE
    return ""


def _run(opt, grads, values):
    """Updates of `opt` over a gradient stream (steps, size), applied to w = 0: (steps, size)."""
    opt = optax.with_extra_args_support(opt)
    params = {"w": jnp.zeros(grads.shape[1:], jnp.float32)}

    def step(carry, inputs):
        p, s = carry
        g, v = inputs
        u, s = opt.update({"w": g}, s, p, value=v)
        return (optax.apply_updates(p, u), s), u["w"]

    _, updates = jax.lax.scan(step, (params, opt.init(params)), (grads, values))
    return updates


def _synthetic_loss(steps):
    return jnp.exp(-jnp.arange(steps, dtype=jnp.float32) / steps)


def _rms(x, axis=-1):
    return jnp.sqrt(jnp.mean(jnp.square(x), axis=axis))


# ---- impulse response: momentum ------------------------------------------------------------

class Impulse(NamedTuple):
    response: np.ndarray     # r_t: how much the spike moved coordinate 0 at step t (descent > 0), mean over trials
    time_scale: float        # τ = Σ_t r_t / r_0: 1/(1 − β) for momentum β
    half_life: int           # first t with |r_t| ≤ |r_0| / 2 (len(response) if never)
    note: str                # non-empty if the probe had to pass a synthetic loss


def impulse(opt, *, steps: int = 100, size: int = 64, spike: float = 1.0, background: float = 0.1,
            trials: int = 8, key=None) -> Impulse:
    """The response to one gradient spike (on coordinate 0 at t = 0) over a noise background.

    r_t = −(Δ_t[0] with the spike − Δ_t[0] without), averaged over `trials` noise draws."""
    key = jax.random.key(0) if key is None else key
    note = _note(opt, size)
    values = _synthetic_loss(steps)

    @jax.jit
    def one(k):
        base = background * jax.random.normal(k, (steps, size))
        spiked = base.at[0, 0].add(spike)
        return -(_run(opt, spiked, values)[:, 0] - _run(opt, base, values)[:, 0])

    r = np.asarray(jnp.mean(jax.vmap(one)(jax.random.split(key, trials)), axis=0), np.float64)
    r0 = r[0]
    tau = float(np.sum(r) / r0) if r0 != 0 else float("nan")
    small = np.flatnonzero(np.abs(r) <= abs(r0) / 2)
    return Impulse(r, tau, int(small[0]) if small.size else steps, note)


# ---- response to the gradient's scale: clipping, invariance ---------------------------------

class ScaleResponse(NamedTuple):
    scales: np.ndarray       # gradient rms s
    step: np.ndarray         # update rms at the last step
    slope: np.ndarray        # d log|Δ| / d log s between neighbouring scales: 1 linear (SGD), 0 invariant
    invariance: float        # max(step) / min(step): 1 for a scale-invariant optimizer
    saturates_at: float      # smallest s from which |Δ| stays within 10% of its value at the largest s (nan if
                             # only the largest): where clipping starts, or the whole range if scale invariant
    note: str


def gradient_scale(opt, *, scales=None, steps: int = 5, size: int = 64, key=None) -> ScaleResponse:
    """Update magnitude against gradient magnitude: `steps` steps of the constant gradient s·u,
    u a fixed ±1 pattern (rms 1), from a fresh state, for each s in `scales` (default 1e-6 … 1e6)."""
    scales = np.logspace(-6, 6, 25) if scales is None else np.asarray(scales, np.float64)
    key = jax.random.key(0) if key is None else key
    note = _note(opt, size)
    u = jnp.where(jax.random.bernoulli(key, 0.5, (size,)), 1.0, -1.0)
    values = _synthetic_loss(steps)
    run = jax.jit(jax.vmap(lambda s: _rms(_run(opt, jnp.broadcast_to(s * u, (steps, size)), values)[-1])))
    step = np.asarray(run(jnp.asarray(scales, jnp.float32)), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.diff(np.log(step)) / np.diff(np.log(scales))
        invariance = float(step.max() / step.min())
    close = np.abs(step / step[-1] - 1) <= 0.1
    tail = len(close) - (np.argmin(close[::-1]) if not close.all() else len(close))
    saturates_at = float(scales[tail]) if tail < len(scales) - 1 else float("nan")
    return ScaleResponse(scales, step, slope, invariance, saturates_at, note)


# ---- step size against the training fraction: the schedule -----------------------------------

class Schedule(NamedTuple):
    fraction: np.ndarray     # t / T
    step: np.ndarray         # rms(Δ_t) / rms(g_t), mean over trials
    peak_fraction: float     # t/T of the largest smoothed step (from t/T = BURN_IN on)
    start_to_peak: float     # smoothed step at t/T = BURN_IN / at the peak: < 1 means a warm-up
    end_to_peak: float       # smoothed step at the end / at the peak: 1 constant, near 0 decayed to nothing
    note: str


BURN_IN = 0.05   # the first 5% of the run: accumulators (momentum, Adam's bias correction) settle there


def schedule(opt, num_steps: int, *, size: int = 256, trials: int = 4, window: int | None = None,
             key=None) -> Schedule:
    """The step size rms(Δ_t)/rms(g_t) over a run of `num_steps` on stationary N(0, 1) gradients.

    For SGD with a learning-rate schedule η_t this is exactly η_t. Pass the `num_steps`
    the optimizer was built with (a learned optimizer reads t / T). The read-outs use a
    moving average over `window` steps (default T/20) and skip the first BURN_IN of the
    run, where even a schedule-free optimizer's steps change while its averages fill."""
    key = jax.random.key(0) if key is None else key
    note = _note(opt, size)
    values = _synthetic_loss(num_steps)

    @jax.jit
    def one(k):
        g = jax.random.normal(k, (num_steps, size))
        return _rms(_run(opt, g, values)) / _rms(g)

    step = np.asarray(jnp.mean(jax.vmap(one)(jax.random.split(key, trials)), axis=0), np.float64)
    window = window or max(1, num_steps // 20)
    smooth = np.convolve(step, np.ones(window) / window, mode="valid")
    centre = (np.arange(len(smooth)) + (window - 1) / 2) / num_steps
    start = min(int(np.searchsorted(centre, BURN_IN)), len(smooth) - 1)
    peak = start + int(np.argmax(smooth[start:]))
    return Schedule(np.arange(num_steps) / num_steps, step, float(centre[peak]),
                    float(smooth[start] / smooth[peak]), float(smooth[-1] / smooth[peak]), note)


# ---- step size against the loss trend: adaptation --------------------------------------------

class LossTrend(NamedTuple):
    rates: np.ndarray        # ρ: the loss follows exp(ρ · t / steps); < 0 falling, 0 flat, > 0 rising
    step: np.ndarray         # mean rms(Δ) / rms(g) over the second half of the run, per ρ
    relative: np.ndarray     # step / step at ρ = 0 (all 1: the optimizer ignores the loss)


def loss_trend(opt, *, rates=(-4.0, -1.0, 0.0, 1.0), steps: int = 100, size: int = 64, key=None) -> LossTrend:
    """Step size against the trend of the loss passed as `value=`, on the same gradient stream.

    Only the loss differs between the runs, so an optimizer that ignores `value=`
    gives the same steps for every ρ."""
    rates = np.asarray(rates, np.float64)
    if not np.any(rates == 0):
        raise ValueError(f"loss_trend: rates must include 0 (the flat loss every other trend is compared with), "
                         f"got {rates.tolist()}")
    key = jax.random.key(0) if key is None else key
    g = jax.random.normal(key, (steps, size))
    t = jnp.arange(steps, dtype=jnp.float32) / steps

    @jax.jit
    def one(rate):
        return jnp.mean((_rms(_run(opt, g, jnp.exp(rate * t))) / _rms(g))[steps // 2:])

    step = np.asarray(jax.vmap(one)(jnp.asarray(rates, jnp.float32)), np.float64)
    return LossTrend(rates, step, step / step[np.flatnonzero(rates == 0)[0]])


__all__ = ["impulse", "gradient_scale", "schedule", "loss_trend", "needs_value", "Impulse", "ScaleResponse",
           "Schedule", "LossTrend", "SYNTHETIC_LOSS_NOTE", "BURN_IN"]
