"""Checkers for lesson 05: inside VeLO.

The references are `minilopt.lopt.features` and `minilopt.lopt.velo`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..lopt import features, velo
from . import call, expect_close

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
    hint = ("v_row averages g**2 + 1e-30 over the LONG axis 0 (shape (C,)), v_col over axis 1 (shape (R,)); "
            "fac_g = g * rsqrt_safe(v_row / (mean(v_row) + 1e-9))[None, :] * rsqrt_safe(v_col)[:, None], "
            "with rsqrt_safe(x) = 1 / sqrt(max(x, 1e-9)), using the UPDATED v_row and v_col")
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
    hint = ("s = 1/sqrt(max(1e-9, mean(p**2))); scale m AND rms by s (not s**2); "
            "cliplog(x) = 0.5 * clip(log(1e-8 + |10 x|), -5, 5); mean_rms = cliplog(mean(s*rms)); "
            "var_m = cliplog(mean((s*m - mean(s*m))**2)) per momentum; var_rms uses the MOMENTUM mean: "
            "cliplog(mean((s*rms - mean(s*m))**2)), giving 3 numbers")
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
