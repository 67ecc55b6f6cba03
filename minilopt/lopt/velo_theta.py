"""VeLO's meta-parameters: the tree's layout, as the released weights have it (so
`checkpoint.load_velo` reads them), a random start, an Adam-like start, and the
check that names a wrong key or shape. The update that reads them is `velo`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import nn

NUM_LSTM_INPUTS = 30
# (name, width) of the 14 input groups of the per-parameter MLP, in order.
MLP_GROUPS = (
    ("g", 1), ("clip_g", 1), ("p", 1), ("m", 3), ("rms", 1), ("m_rsqrt_rms", 3),
    ("rsqrt_rms", 1), ("fac_g", 3), ("g_rsqrt_rms", 1), ("row", 3), ("col", 3),
    ("rsqrt_row", 3), ("rsqrt_col", 3), ("fac_m", 3),
)
MLP_HIDDEN = 4
MLP_OUTPUTS = 3


def theta_shapes(hidden: int, mixtures: int) -> dict:
    """The meta-parameter tree's shapes, as the released weights lay them out; `rnn/linear` is ONE key."""
    H, P = hidden, mixtures
    ff = {f"w0__{k}": (P, width, MLP_HIDDEN) for k, (_, width) in enumerate(MLP_GROUPS)}
    ff.update(w1=(P, MLP_HIDDEN, MLP_HIDDEN), w2=(P, MLP_HIDDEN, MLP_OUTPUTS),
              b0=(P, MLP_HIDDEN), b1=(P, MLP_HIDDEN), b2=(P, MLP_OUTPUTS))
    lin = lambda n_in, n_out: {"w": (n_in, n_out), "b": (n_out,)}  # noqa: E731
    return {"ff_mod_stack": {"~": ff}, "lstm_init_state": {"hidden": (1, H), "cell": (1, H)},
            "rnn_params": {"linear": lin(NUM_LSTM_INPUTS, H),      # present in the weights, unused
                           "linear_1": lin(NUM_LSTM_INPUTS, H), "linear_2": lin(NUM_LSTM_INPUTS, H),
                           "rnn/linear": lin(2 * H, 4 * H), "rnn_to_controls": lin(H, P), "step_size": lin(H, 1)}}


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def init_theta(key, hidden: int = 512, mixtures: int = 256) -> dict:
    """A from-scratch theta: every weight `w…` ~ TN(0, 1/fan_in), with fan_in its
    second-to-last dimension; biases `b…` and the initial LSTM state are zero. All
    weights are cut from ONE draw (one call per leaf would compile a sampler per shape)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(theta_shapes(hidden, mixtures), is_leaf=_is_shape)
    sizes = [int(np.prod(shape)) if path[-1].key.startswith("w") else 0 for path, shape in flat]
    noise, starts = nn.truncated_normal(key, (sum(sizes),), 1.0), np.cumsum([0] + sizes)
    return jax.tree.unflatten(treedef, [
        noise[a:a + n].reshape(shape) / np.sqrt(shape[-2]) if n else jnp.zeros(shape, jnp.float32)
        for (_, shape), a, n in zip(flat, starts, sizes)])


def adam_like_theta(key, hidden: int, mixtures: int, lr_mult: float = 10.0) -> dict:
    """A theta that starts meta-training from a stable optimizer, not from noise:

        Δ = lr_mult · 0.001 · sqrt(mean(p²)) · n(m_0.9 · rsqrt(rms))

    n(·) normalises over the tensor: a per-tensor normalised Adam direction whose
    step is a fixed fraction of the tensor's scale. It is built from `init_theta`:
    every control is 1 (`rnn_to_controls`: w = 0, b = 1) and `lr_mult` is constant
    (`step_size`: w = 0, b = lr_mult), so the LSTM starts silent; every one of the
    P MLPs is W*/100 plus noise 1000x smaller than `init_theta`'s, where W* passes
    the channel through two ReLU pairs (d = relu(x) − relu(−x) = x, μ = 0). A random
    theta instead makes updates of random sign and size, and training diverges.
    """
    theta = init_theta(key, hidden, mixtures)
    quiet = jax.tree.map(lambda x: 1e-3 * x, theta["ff_mod_stack"]["~"])
    group = [name for name, _ in MLP_GROUPS].index("m_rsqrt_rms")
    w0 = quiet[f"w0__{group}"].at[:, 0, 0].add(0.01).at[:, 0, 1].add(-0.01)   # units 0, 1 = ±x
    w1 = quiet["w1"].at[:, 0, 0].add(0.01).at[:, 1, 1].add(0.01)
    w2 = quiet["w2"].at[:, 0, 0].add(0.01).at[:, 1, 0].add(-0.01)             # d = unit 0 − unit 1
    theta["ff_mod_stack"]["~"] = {**quiet, f"w0__{group}": w0, "w1": w1, "w2": w2}
    theta["rnn_params"] = {**theta["rnn_params"],
                           "rnn_to_controls": {"w": jnp.zeros((hidden, mixtures)), "b": jnp.ones((mixtures,))},
                           "step_size": {"w": jnp.zeros((hidden, 1)), "b": jnp.full((1,), float(lr_mult))}}
    return theta


def theta_config(theta) -> tuple[int, int]:
    """`(hidden, mixtures)` read off a theta's shapes."""
    return int(theta["lstm_init_state"]["hidden"].shape[-1]), int(
        theta["rnn_params"]["rnn_to_controls"]["b"].shape[-1])


def check_theta(theta, hidden: int, mixtures: int) -> None:
    """ValueError naming the first key whose shape differs from `theta_shapes`."""
    def walk(exp, got, path):
        if _is_shape(exp):
            if tuple(jnp.shape(got)) != exp:
                raise ValueError(f"theta[{path}] has shape {tuple(jnp.shape(got))}, expected {exp} "
                                 f"for VeLO(hidden={hidden}, mixtures={mixtures})")
            return
        if not isinstance(got, dict):
            raise ValueError(f"theta[{path}] should be a dict with keys {sorted(exp)}")
        missing, extra = set(exp) - set(got), set(got) - set(exp)
        if missing or extra:
            raise ValueError(f"theta[{path}]: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")
        for k in exp:
            walk(exp[k], got[k], f"{path}/{k}" if path else k)
    walk(theta_shapes(hidden, mixtures), theta, "")
