"""Checkers for lesson 11: what did it learn? (probes of an optimizer's behaviour)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from .. import probe
from . import ExerciseError, call, expect_close, fail


def impulse_response_reference(opt, steps):
    """r_t = −Δ_t for one coordinate w = 0 fed the gradient 1 at t = 0, then zeros."""
    params = {"w": jnp.zeros((1,), jnp.float32)}
    state, out = opt.init(params), []
    for t in range(steps):
        updates, state = opt.update({"w": jnp.full((1,), 1.0 if t == 0 else 0.0)}, state, params)
        params = optax.apply_updates(params, updates)
        out.append(-float(updates["w"][0]))
    return np.array(out)


def check_impulse_response(impulse_response):
    """impulse_response(opt, steps) -> array (steps,): −Δ_t after one unit spike at t = 0."""
    hint = ("params = {'w': jnp.zeros(1)}; state = opt.init(params); at step t feed {'w': [1.0]} if t == 0 else "
            "{'w': [0.0]}, apply the update, and record -updates['w'][0] (descent counts as positive)")
    cases = [(optax.sgd(0.1, momentum=0.9), 12, "SGD, momentum 0.9"),
             (optax.sgd(0.05, momentum=0.5, nesterov=True), 8, "SGD, Nesterov momentum 0.5"),
             (optax.adam(0.01), 10, "Adam(0.01)")]
    for opt, steps, what in cases:
        want = impulse_response_reference(opt, steps)
        got = call(impulse_response, opt, steps, what="impulse_response", hint=hint)
        if got is not None and np.shape(got) == want.shape:
            got_arr = np.asarray(got, np.float64)
            if np.allclose(got_arr, -want, rtol=1e-4, atol=1e-8):
                fail(f"impulse_response of {what}: the sign is flipped", want, got,
                     "return -update: a descent step (against the gradient) must come out positive")
            if np.allclose(got_arr[0], want[0], rtol=1e-4) and np.all(np.abs(got_arr[1:]) > np.abs(want[1:]) + 1e-6):
                fail(f"impulse_response of {what}: every step is too large; is the spike fed more than once?",
                     want, got, "the gradient is 1 at t = 0 only, then 0: an impulse, not a step input")
        expect_close(f"impulse_response of {what} ({steps} steps)", want, got, hint, rtol=1e-4, atol=1e-8)
    print("impulse_response: correct for momentum, Nesterov and Adam")


def saturation_point_reference(scales, step, tol=0.1):
    """The smallest scale from which every step is within tol of the last one; nan if only the last is."""
    close = np.abs(np.asarray(step, np.float64) / step[-1] - 1) <= tol
    first = len(close)
    while first > 0 and close[first - 1]:
        first -= 1
    return float(scales[first]) if first < len(close) - 1 else float("nan")


def _saturation_cases():
    s = np.logspace(-6, 6, 25)
    return [(s, 0.1 * s, "SGD (linear: never saturates)"),
            (s, 0.1 * np.minimum(s, 1.0), "clipped at 1"),
            (s, np.full_like(s, 1e-3), "Adam (invariant: saturated everywhere)"),
            (s, np.where((s > 1e-3) & (s < 1e-1), 0.5, 1.0), "a dip in the middle of the range")]


def check_saturation_point(saturation_point):
    """saturation_point(scales, step, tol=0.1) -> float (nan if it never saturates)."""
    hint = ("walk back from the largest scale while |step/step[-1] - 1| <= tol; the answer is the scale where that "
            "run starts, and nan if the run is only the last scale itself")
    for scales, step, what in _saturation_cases():
        want = saturation_point_reference(scales, step)
        got = call(saturation_point, scales, step, what="saturation_point", hint=hint)
        if got is None:
            fail(f"saturation_point for {what}", want, got, hint)
        try:
            got_f = float(got)
        except (TypeError, ValueError):
            fail(f"saturation_point for {what} must be one number", want, got, hint)
        if np.isnan(want) and np.isnan(got_f):
            continue
        if what.startswith("a dip") and np.isclose(got_f, scales[0]):
            fail(f"saturation_point for {what}", want, got,
                 "the steps must stay within tol from the answer on, all the way to the largest scale: the first "
                 "close scale is not enough when a dip follows it")
        if np.isnan(want) or not np.isclose(got_f, want, rtol=1e-9):
            fail(f"saturation_point for {what}", want, got, hint)
    print("saturation_point: correct on 4 curves")


def check_mimic(make_mimic, target_tau: float, tol: float = 0.25):
    """make_mimic() -> an optax optimizer with momentum time scale within `tol` (relative) of `target_tau`
    under probe.impulse, and scale invariant (probe.gradient_scale invariance < 1.5 over 1e-3 … 1e3)."""
    hint = ("probe a scale-invariant optimizer (optax.adam) at a few b1 with minilopt.probe.impulse and keep the b1 "
            "whose time_scale is closest to the target; a larger b1 means a longer memory")
    opt = call(make_mimic, what="make_mimic", hint=hint)
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        fail("make_mimic() must return an optax optimizer (with init and update)", "an optax transformation",
             opt, hint)
    try:
        tau = probe.impulse(opt).time_scale
        scale = probe.gradient_scale(opt, scales=np.logspace(-3, 3, 13))
    except ExerciseError:
        raise
    except Exception as e:  # noqa: BLE001 - the learner's optimizer may fail in any way
        fail(f"probing your optimizer failed: {type(e).__name__}: {e}", "an optimizer the probes can run", opt, hint)
    if not abs(tau - target_tau) <= tol * target_tau:
        fail(f"momentum time scale of your optimizer (within {tol:.0%} of the target)", target_tau, tau, hint)
    if not scale.invariance < 1.5:
        fail("your optimizer is not scale invariant: max/min update over gradients 1e-3 … 1e3", 1.0,
             scale.invariance, "divide by a running rms of the gradient, as Adam does; SGD's step grows with |g|")
    print(f"make_mimic: time scale {tau:.2f} (target {target_tau:.2f}), scale invariant "
          f"(max/min update {scale.invariance:.3f})")
