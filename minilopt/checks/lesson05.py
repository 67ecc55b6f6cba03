"""Checkers for lesson 05: inside VeLO.

The references are `minilopt.lopt.features` and `minilopt.lopt.velo`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..lopt import features, velo
from . import call, expect_close, fail

_RNG = np.random.default_rng(5)


def factored_reference(g, v_row, v_col, decay):
    """One factored step for a matrix g of shape (R, C), R > C (so d0 = 0, d1 = 1),
    with one decay: returns (v_row (C,), v_col (R,), fac_g (R, C))."""
    state = {"v_row": jnp.asarray(v_row)[:, None], "v_col": jnp.asarray(v_col)[:, None]}
    state = features.factored_update(state, jnp.asarray(g), (decay,))
    fac_g = features.factored_precondition(state, jnp.asarray(g))
    return np.asarray(state["v_row"][:, 0]), np.asarray(state["v_col"][:, 0]), np.asarray(fac_g[..., 0])


def lstm_statistics_reference(p, m, rms):
    """The 7 per-tensor LSTM statistics [mean_rms, var_m (3), var_rms (3)] from p,
    m (p.shape + (3,)) and rms (p.shape + (1,))."""
    p = jnp.asarray(p, jnp.float32)
    momenta = tuple(jnp.moveaxis(jnp.asarray(m, jnp.float32), -1, 0))   # minilopt keeps one array per decay
    return np.asarray(jax.jit(velo.lstm_statistics)(p, momenta, jnp.asarray(rms, jnp.float32)[..., 0]))


def mix_reference(controls, stacked):
    """100 · mean_k controls[k] · W[k] for one tensor."""
    return np.asarray(velo.mix_weights({"w": jnp.asarray(stacked)}, jnp.asarray(controls)[None])["w"][0])


def check_factored(factored_step):
    """factored_step(g, v_row, v_col, decay) -> (v_row, v_col, fac_g) for a matrix g (R > C)."""
    hint = ("v_row is an average over the LONG axis 0 (one entry per column), v_col over axis 1 (one per row); "
            "fac_g uses the UPDATED averages, and v_row only relative to its own mean(v_row); check which axis "
            "each factor must broadcast along")
    for shape, decay in [((6, 4), 0.9), ((9, 2), 0.99), ((5, 3), 0.5)]:
        g = _RNG.normal(size=shape) * _RNG.uniform(0.1, 3.0, size=shape[1])
        v_row, v_col = _RNG.uniform(0.1, 2.0, size=shape[1]), _RNG.uniform(0.1, 2.0, size=shape[0])
        got = call(factored_step, g, v_row, v_col, decay, what="factored_step", hint=hint)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            expect_close("factored_step should return (v_row, v_col, fac_g)", 0.0, None, hint)
        want = factored_reference(g, v_row, v_col, decay)
        for name, w, x in zip(("v_row", "v_col", "fac_g"), want, got):
            expect_close(f"{name} for g of shape {shape}, decay {decay}", w, x, hint, rtol=1e-4, atol=1e-6)
    print("factored_step: v_row, v_col and fac_g correct for 3 matrices")


def check_lstm_statistics(lstm_statistics):
    """lstm_statistics(p, m, rms) -> [mean_rms, var_m (3), var_rms (3)], 7 numbers."""
    hint = ("scale m AND rms by the same s (not s**2 for rms); every mean runs over the tensor's own axes, never "
            "the decay axis; var_rms is centred on the MOMENTUM mean (the reference's quirk), which is why it "
            "gives 3 numbers")
    for shape in [(5, 4), (7,), (3, 2, 2)]:
        p = _RNG.normal(size=shape)
        m = _RNG.normal(size=shape + (3,)) * [0.3, 0.1, 0.03] + [0.05, -0.02, 0.01]
        rms = _RNG.uniform(0.01, 0.2, size=shape + (1,))
        got = call(lstm_statistics, p, m, rms, what="lstm_statistics", hint=hint)
        expect_close(f"the 7 statistics of a tensor of shape {shape}", lstm_statistics_reference(p, m, rms),
                     got, hint, rtol=1e-4, atol=1e-5)
    print("lstm_statistics: correct on 3 tensors, quirk included")


def check_mix(mix):
    """mix(controls, stacked) -> 100 · mean_k controls[k] · stacked[k]."""
    hint = "weight each of the P copies by its control, AVERAGE over the P axis (not sum), and multiply by 100"
    for P, shape in [(4, (3, 4)), (16, (4,)), (7, (2, 4, 3))]:
        controls, stacked = _RNG.normal(size=P), _RNG.normal(size=(P,) + shape)
        got = call(mix, controls, stacked, what="mix", hint=hint)
        expect_close(f"mixing P={P} copies of shape {shape}", mix_reference(controls, stacked), got, hint,
                     rtol=1e-4, atol=1e-6)
    print("mix: correct for 3 stacks")


# ---------------------------------------------------------------------------
# Exercise 4: how VeLO's step responds to the size of the gradient
# ---------------------------------------------------------------------------
PROBE_STEPS = 1000            # the num_steps the shipped VeLO was meta-trained with
PROBE_SCALES = (1.0, 1e-6, 1e-3, 1e3, 1e6)   # 1 first: the others are compared with it


def velo_probe():
    """(params, grads, loss) of a small two-tensor model: a (16, 8) weight `w` and a zero bias `b`,
    with a fixed gradient. The probe of exercise 4."""
    rng = np.random.default_rng(0)
    params = {"b": jnp.zeros(8, jnp.float32), "w": jnp.asarray(0.3 * rng.normal(size=(16, 8)), jnp.float32)}
    grads = {"b": jnp.asarray(rng.normal(size=8), jnp.float32),
             "w": jnp.asarray(rng.normal(size=(16, 8)) * rng.uniform(0.5, 2, size=8), jnp.float32)}
    return params, grads, jnp.float32(1.0)


@functools.lru_cache(maxsize=1)
def _first_step_rms():
    from ..lopt.pretrained import pretrained

    params, grads, loss = velo_probe()
    opt = pretrained("velo", PROBE_STEPS)
    state = opt.init(params)

    @jax.jit
    def rms(scale):
        updates, _ = opt.update(jax.tree.map(lambda g: scale * g, grads), state, params, value=loss)
        return jnp.sqrt(jnp.mean(updates["w"] ** 2))

    return rms


def first_step_rms_reference(scale):
    """The RMS of the shipped VeLO's first update of `w` (from a fresh state) when every gradient of
    `velo_probe()` is multiplied by `scale`."""
    return float(_first_step_rms()(jnp.float32(scale)))


def check_scale_response(first_step_rms, scales=PROBE_SCALES):
    """first_step_rms(scale) -> the RMS of the shipped VeLO's first update of the probe's `w` when the probe's
    gradient is multiplied by `scale`. Checked against a measurement of the same thing at 12 decades of scale;
    then the spread of those steps is compared with what SGD and Adam would do."""
    hint = ("the shipped VeLO is minilopt.pretrained(\"velo\", num_steps) (an optax transformation whose update "
            "needs value=loss). For each scale: a FRESH state from init, the probe's gradient times the scale, the "
            "probe's parameters unchanged, and the RMS of the UPDATE of w (what VeLO adds to it, not the new w)")
    got = {}
    for scale in scales:
        value = call(first_step_rms, scale, what="first_step_rms", hint=hint)
        expected = first_step_rms_reference(scale)
        if 1.0 in got and value is not None and np.ndim(value) == 0 and np.isfinite(float(value)) and scale != 1.0 \
                and abs(float(value) / got[1.0] - scale) < 0.05 * scale:
            fail(f"first_step_rms({scale:g}) is {scale:g} times first_step_rms(1): a step in proportion to the "
                 "gradient, like SGD's. VeLO's is not", expected, value,
                 "measure the step VeLO returns for the scaled gradient; do not scale a step yourself. " + hint)
        expect_close(f"first_step_rms({scale:g}), the RMS of VeLO's first step on w", expected, value, hint,
                     rtol=0.02, atol=1e-9)
        got[scale] = float(value)
    spread = max(got.values()) / min(got.values())
    print(f"first_step_rms: right at {len(scales)} gradient scales over {np.log10(max(scales) / min(scales)):.0f} "
          f"decades; VeLO's step changes {spread:.1f}x over them, SGD's would change "
          f"{max(scales) / min(scales):.0e}x, Adam's first step not at all")
    return spread
