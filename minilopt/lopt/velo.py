"""VeLO: a per-tensor LSTM hypernetwork that writes a tiny per-parameter MLP.

Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up".
This follows `specs/velo.md` exactly, so the released weights load and reproduce
the reference updates. One update, in order:

1. loss buffer ← loss; 9 loss features.           (features.loss_buffer_*)
2. g ← clip(g, −1000, 1000)  (NaN → 0).
3. per tensor, 30 LSTM inputs from p, OLD m and rms, the loss features and t/T.
4. the LSTM runs once over all tensors as a batch → per tensor: `controls` (P,),
   `lr_mult` and the next LSTM state.
5. accumulators ← g: momentum (0.9, 0.99, 0.999), rms (0.999,), factored.
6. per tensor, mix the P stacked MLP copies ONCE:  W ← 100 · mean_k controls[k]·W[k].
7. per parameter, the MLP 30 → 4 → 4 → 3 reads 30 normalised channels and gives
   direction d and magnitude μ:
       p ← p − lr_mult · d · exp(0.001·μ) · 0.001 · sqrt(mean(p²) + 1e-9)
8. t ← t + 1.

Speed. The per-parameter work is written so XLA can fuse it into few passes over
memory: the 30 channels are never stacked into one (…, 30) array; each channel's
normaliser `rsqrt(1e-5 + mean(x²))` comes from a reduction and is folded into the
(tiny) first-layer weights; and the small matrix products are spelled out as
broadcast multiply-adds, which fuse, instead of `@`, which would not.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import nn
from . import features as F

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.999,)
FACTORED_DECAYS = (0.9, 0.99, 0.999)
GRAD_CLIP = 1000.0
NUM_LSTM_INPUTS = 30
# (name, width) of the 14 input groups of the per-parameter MLP, in order.
MLP_GROUPS = (
    ("g", 1), ("clip_g", 1), ("p", 1), ("m", 3), ("rms", 1), ("m_rsqrt_rms", 3),
    ("rsqrt_rms", 1), ("fac_g", 3), ("g_rsqrt_rms", 1), ("row", 3), ("col", 3),
    ("rsqrt_row", 3), ("rsqrt_col", 3), ("fac_m", 3),
)
MLP_HIDDEN = 4
MLP_OUTPUTS = 3


# ---------------------------------------------------------------------------
# Meta-parameters
# ---------------------------------------------------------------------------
def theta_shapes(hidden: int, mixtures: int) -> dict:
    """The meta-parameter tree's shapes (spec §7); `rnn/linear` is ONE key."""
    H, P = hidden, mixtures
    ff = {f"w0__{k}": (P, width, MLP_HIDDEN) for k, (_, width) in enumerate(MLP_GROUPS)}
    ff.update(w1=(P, MLP_HIDDEN, MLP_HIDDEN), w2=(P, MLP_HIDDEN, MLP_OUTPUTS),
              b0=(P, MLP_HIDDEN), b1=(P, MLP_HIDDEN), b2=(P, MLP_OUTPUTS))

    def lin(n_in, n_out):
        return {"w": (n_in, n_out), "b": (n_out,)}

    return {
        "ff_mod_stack": {"~": ff},
        "lstm_init_state": {"hidden": (1, H), "cell": (1, H)},
        "rnn_params": {
            "linear": lin(NUM_LSTM_INPUTS, H),      # present in the weights, unused
            "linear_1": lin(NUM_LSTM_INPUTS, H),
            "linear_2": lin(NUM_LSTM_INPUTS, H),
            "rnn/linear": lin(2 * H, 4 * H),
            "rnn_to_controls": lin(H, P),
            "step_size": lin(H, 1),
        },
    }


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def init_theta(key, hidden: int = 512, mixtures: int = 256) -> dict:
    """A from-scratch theta: every weight `w…` ~ TN(0, 1/fan_in), with fan_in its
    second-to-last dimension; biases `b…` and the initial LSTM state are zero."""
    shapes = theta_shapes(hidden, mixtures)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    keys = jax.random.split(key, len(flat))
    out = []
    for k, (path, shape) in zip(keys, flat):
        name = path[-1].key
        if name.startswith("w"):
            out.append(nn.truncated_normal(k, shape, 1.0 / np.sqrt(shape[-2])))
        else:
            out.append(jnp.zeros(shape, jnp.float32))
    return jax.tree.unflatten(treedef, out)


def theta_config(theta) -> tuple[int, int]:
    """`(hidden, mixtures)` read off a theta's shapes."""
    return int(theta["lstm_init_state"]["hidden"].shape[-1]), int(
        theta["rnn_params"]["rnn_to_controls"]["b"].shape[-1])


def check_theta(theta, hidden: int, mixtures: int) -> None:
    """ValueError naming the first key whose shape differs from the spec's tree."""
    expected = theta_shapes(hidden, mixtures)

    def walk(exp, got, path):
        if _is_shape(exp):
            shape = tuple(jnp.shape(got))
            if shape != exp:
                raise ValueError(f"theta[{path}] has shape {shape}, expected {exp} "
                                 f"for VeLO(hidden={hidden}, mixtures={mixtures})")
            return
        if not isinstance(got, dict):
            raise ValueError(f"theta[{path}] should be a dict with keys {sorted(exp)}")
        missing, extra = set(exp) - set(got), set(got) - set(exp)
        if missing or extra:
            raise ValueError(f"theta[{path}]: missing keys {sorted(missing)}, "
                             f"unexpected keys {sorted(extra)}")
        for k in exp:
            walk(exp[k], got[k], f"{path}/{k}" if path else k)

    walk(expected, theta, "")


# ---------------------------------------------------------------------------
# Per-tensor: LSTM inputs, the LSTM network, mixing
# ---------------------------------------------------------------------------
def cliplog(x):
    """0.5 · clip(log(1e-8 + |10·x|), −5, 5)."""
    return 0.5 * jnp.clip(jnp.log(1e-8 + jnp.abs(10.0 * x)), -5.0, 5.0)


def tensor_statistics(p, m, rms):
    """The 7 tensor statistics of the LSTM input (OLD m and rms), in order
    mean_rms (1), var_m (3), var_rms (3):

        s        = rsqrt(max(1e-9, mean(p²)))        m, rms scaled by s (not s²)
        mean_rms = cliplog(mean(s·rms))
        var_m    = cliplog(mean((s·m − mean(s·m))²))          per momentum channel
        var_rms  = cliplog(mean((s·rms − mean(s·m))²))        the quirk: momentum mean
    """
    axes = tuple(range(m.ndim - 1))
    s = jax.lax.rsqrt(jnp.maximum(1e-9, jnp.mean(jnp.square(p))))
    m, rms = s * m, s * rms
    mean_m = jnp.mean(m, axis=axes)
    var_m = jnp.mean(jnp.square(m - mean_m), axis=axes)
    var_rms = jnp.mean(jnp.square(rms - mean_m), axis=axes)
    return jnp.concatenate([cliplog(jnp.mean(rms, axis=axes)), cliplog(var_m), cliplog(var_rms)])


def rank_one_hot(shape):
    """One-hot (width 5) of the number of dimensions of size > 1."""
    return jax.nn.one_hot(sum(d > 1 for d in shape), 5, dtype=jnp.float32)


def lstm_inputs(stats, ranks, loss_features, fraction_left):
    """(n_tensors, 30): fraction_left 9, loss_features 9, mean_rms 1, rank 5,
    var_m 3, var_rms 3 (alphabetical by name)."""
    n = stats.shape[0]
    shared = jnp.concatenate([fraction_left, loss_features])
    return jnp.concatenate([jnp.broadcast_to(shared, (n, 18)), stats[:, :1], ranks,
                            stats[:, 1:]], axis=1)


def lstm_network(rnn, x, state):
    """One step of the per-tensor LSTM over all tensors as a batch.

        a = relu(linear_1(x)); v = max over tensors of a   (tensors see each other only here)
        x' = linear_2(x) + v
        h', c' = LSTM cell([x', h])                        gates i, g, f, o; +1 on f
        controls = rnn_to_controls(h')  (n, P);  lr_mult = step_size(h')  (n,), used raw

    `rnn_params/linear` exists in the weights but does not affect the output.
    """
    v = jnp.max(jax.nn.relu(nn.linear(rnn["linear_1"], x)), axis=0)
    x = nn.linear(rnn["linear_2"], x) + v
    h, (h, c) = nn.lstm_cell(rnn["rnn/linear"], x, state, forget_bias=1.0)
    controls = nn.linear(rnn["rnn_to_controls"], h)
    lr_mult = nn.linear(rnn["step_size"], h)[:, 0]
    return controls, lr_mult, (h, c)


def mix_weights(ff_stack: dict, controls) -> dict:
    """Per tensor, collapse the P stacked MLPs into one: W ← 100·mean_k controls[k]·W[k].

    controls is (n_tensors, P); every leaf goes from (P, …) to (n_tensors, …). This is
    done once per tensor, never per parameter.
    """
    P = controls.shape[-1]
    return {k: jnp.tensordot(controls, w, axes=1) * (100.0 / P) for k, w in ff_stack.items()}


# ---------------------------------------------------------------------------
# Per-parameter: inputs, normalisers and the MLP
# ---------------------------------------------------------------------------
def mlp_inputs(p, g, m, rms, fac) -> list:
    """The 14 input groups of section 6, each of shape `p.shape + (width,)`.

    p, g: (…); m: (…, 3); rms: (…, 1); fac: the UPDATED factored state. Rank ≥ 2
    tensors use v_row/v_col broadcast over the tensor; rank < 2 use v_diag twice.
    """
    gx = g[..., None]
    r = jax.lax.rsqrt(rms + 1e-6)
    row_factor, col_factor = F.factored_factors(fac, p.shape)
    dims = F.factored_dims(p.shape)
    if dims is None:
        row = col = fac["v_diag"]
        fac_m = m * fac["v_diag"] ** -0.5  # no epsilon here: the reference's quirk
    else:
        d0, d1 = dims
        row = jnp.expand_dims(fac["v_row"], d0)
        col = jnp.expand_dims(fac["v_col"], d1)
        fac_m = m * row_factor * col_factor
    full = p.shape + (3,)
    row, col = jnp.broadcast_to(row, full), jnp.broadcast_to(col, full)
    return [gx, jnp.clip(gx, -0.1, 0.1), p[..., None], m, rms, m * r, r,
            gx * row_factor * col_factor, gx * r, row, col,
            jax.lax.rsqrt(row + 1e-8), jax.lax.rsqrt(col + 1e-8), fac_m]


def _group_mean_squares(groups, fac, shape) -> list:
    """mean(x²) over the tensor for each group, per channel (shape (width,)).

    The row/column groups (9–12) are a small vector broadcast along one axis, so
    their mean square is taken on the small vector: same value, no full-size pass.
    """
    axes = tuple(range(len(shape)))
    out = [jnp.mean(jnp.square(x), axis=axes) for x in groups]
    dims = F.factored_dims(shape)
    if dims is not None:
        small = lambda v: tuple(range(v.ndim - 1))  # noqa: E731
        v_row, v_col = fac["v_row"], fac["v_col"]
        out[9] = jnp.mean(jnp.square(v_row), axis=small(v_row))
        out[10] = jnp.mean(jnp.square(v_col), axis=small(v_col))
        out[11] = jnp.mean(1.0 / (v_row + 1e-8), axis=small(v_row))
        out[12] = jnp.mean(1.0 / (v_col + 1e-8), axis=small(v_col))
    return out


def _dense(xs, w, b):
    """Σ_i xs[..., i] · w[i] + b over a small trailing axis, as broadcast
    multiply-adds (these fuse into one elementwise kernel; `@` would not)."""
    return b + sum(xs[..., i:i + 1] * w[i] for i in range(w.shape[0]))


def mlp_direction_magnitude(groups, norms, w: dict):
    """The per-parameter MLP on normalised inputs: returns (direction d, magnitude μ).

    The normaliser of each channel is folded into the first layer's weights:
        Σ_k (x_k · n_k) @ w0_k  =  Σ_k x_k @ (n_k[:, None] · w0_k)
    """
    h = w["b0"] + sum(_dense(x, n[:, None] * w[f"w0__{k}"], 0.0)
                      for k, (x, n) in enumerate(zip(groups, norms)))
    h = _dense(jax.nn.relu(h), w["w1"], w["b1"])
    out = _dense(jax.nn.relu(h), w["w2"], w["b2"])
    return out[..., 0], out[..., 1]


def tensor_step(p, g, m, rms, fac, w, lr_mult):
    """Update one tensor's accumulators and compute its step Δ (all float32).

    Returns (Δ, m, rms, fac); the caller does p − Δ. A scalar works as is: every
    per-tensor mean over its (zero) axes is the value itself, as for shape (1,).
    """
    m = F.momentum_update(m, g, MOMENTUM_DECAYS)
    rms = F.rms_update(rms, g, RMS_DECAYS)
    fac = F.factored_update(fac, g, FACTORED_DECAYS)
    groups = mlp_inputs(p, g, m, rms, fac)
    norms = [F.normaliser_from_sum_sq(ms, 1.0) for ms in _group_mean_squares(groups, fac, p.shape)]
    d, mu = mlp_direction_magnitude(groups, norms, w)
    param_scale = jnp.sqrt(jnp.mean(jnp.square(p)) + 1e-9)
    delta = lr_mult * d * jnp.exp(0.001 * mu) * 0.001 * param_scale
    return delta, m, rms, fac


# ---------------------------------------------------------------------------
# The optimizer
# ---------------------------------------------------------------------------
class VeLOState(NamedTuple):
    """m: p.shape+(3,); rms: p.shape+(1,); fac: per leaf {v_row, v_col} or {v_diag};
    lstm_hidden/lstm_cell: (n_tensors, H); loss_buffer: features.loss_buffer_init;
    iteration: the step t."""
    m: Any
    rms: Any
    fac: Any
    lstm_hidden: jax.Array
    lstm_cell: jax.Array
    loss_buffer: dict
    iteration: jax.Array


def velo_init_state(theta, params, num_steps: int, legacy_loss_features: bool = False) -> VeLOState:
    """Zero accumulators, the learned initial LSTM state for every tensor, an empty
    loss buffer (horizon num_steps, or 10 in the legacy mode), t = 0."""
    F.check_params(params)
    leaves = jax.tree.leaves(params)
    n = len(leaves)
    init = theta["lstm_init_state"]
    return VeLOState(
        m=jax.tree.map(lambda p: F.accumulator_init(p, len(MOMENTUM_DECAYS)), params),
        rms=jax.tree.map(lambda p: F.accumulator_init(p, len(RMS_DECAYS)), params),
        fac=jax.tree.map(lambda p: F.factored_init(p, len(FACTORED_DECAYS)), params),
        lstm_hidden=jnp.broadcast_to(init["hidden"].reshape(1, -1), (n, init["hidden"].shape[-1])),
        lstm_cell=jnp.broadcast_to(init["cell"].reshape(1, -1), (n, init["cell"].shape[-1])),
        loss_buffer=F.loss_buffer_init(10 if legacy_loss_features else num_steps),
        iteration=jnp.zeros((), jnp.int32),
    )


def velo_step(theta, state: VeLOState, grads, params, loss, num_steps: int,
              carry_lstm_state: bool = True, debug: bool = False):
    """One VeLO update as a pure function: returns (updates, new_state[, debug]).

    `updates = −Δ` per leaf, in the parameter's dtype (add them to the params).
    With `debug=True` also returns the step's intermediates: rnn_inputs, loss_features,
    fraction_trained, control_params, lr_mult, clipped_grads and fac_g.
    """
    treedef = jax.tree.structure(params)
    p_leaves = [jnp.asarray(p, jnp.float32) for p in treedef.flatten_up_to(params)]
    g_leaves = [jnp.clip(jnp.nan_to_num(jnp.asarray(g, jnp.float32), nan=0.0,
                                        posinf=GRAD_CLIP, neginf=-GRAD_CLIP), -GRAD_CLIP, GRAD_CLIP)
                for g in treedef.flatten_up_to(grads)]
    m_leaves = treedef.flatten_up_to(state.m)
    rms_leaves = treedef.flatten_up_to(state.rms)
    fac_leaves = treedef.flatten_up_to(state.fac)

    # 1. loss buffer and loss features
    buffer = F.loss_buffer_update(state.loss_buffer, loss)
    loss_features = F.loss_buffer_features(buffer)
    fraction = state.iteration.astype(jnp.float32) / jnp.float32(num_steps)

    # 3. per-tensor LSTM inputs from the OLD accumulators
    stats = jnp.stack([tensor_statistics(p, m, r) for p, m, r in zip(p_leaves, m_leaves, rms_leaves)])
    ranks = jnp.stack([rank_one_hot(p.shape) for p in p_leaves])
    x = lstm_inputs(stats, ranks, loss_features, F.fraction_embedding(state.iteration, num_steps))

    # 4. the LSTM over all tensors
    controls, lr_mult, (h, c) = lstm_network(theta["rnn_params"], x, (state.lstm_hidden, state.lstm_cell))
    if not carry_lstm_state:  # legacy: the state never leaves its initial value
        h, c = state.lstm_hidden, state.lstm_cell

    # 5–7. accumulators, mixing (once per tensor) and the per-parameter MLP
    mixed = mix_weights(theta["ff_mod_stack"]["~"], controls)
    deltas, ms, rmss, facs = [], [], [], []
    for i, (p, g, m, r, fac) in enumerate(zip(p_leaves, g_leaves, m_leaves, rms_leaves, fac_leaves)):
        w = {k: v[i] for k, v in mixed.items()}
        delta, m, r, fac = tensor_step(p, g, m, r, fac, w, lr_mult[i])
        deltas.append(delta); ms.append(m); rmss.append(r); facs.append(fac)  # noqa: E702

    updates = treedef.unflatten([(-d).astype(jnp.result_type(p)) for d, p in
                                 zip(deltas, treedef.flatten_up_to(params))])
    new_state = VeLOState(
        m=treedef.unflatten(ms), rms=treedef.unflatten(rmss), fac=treedef.unflatten(facs),
        lstm_hidden=h, lstm_cell=c, loss_buffer=buffer, iteration=state.iteration + 1)
    if not debug:
        return updates, new_state
    fac_g = [F.factored_precondition(fac, g) for fac, g in zip(facs, g_leaves)]
    info = {
        "rnn_inputs": x, "loss_features": loss_features, "fraction_trained": fraction,
        "control_params": controls, "lr_mult": lr_mult,
        "clipped_grads": treedef.unflatten(g_leaves), "fac_g": treedef.unflatten(fac_g),
    }
    return updates, new_state, info


@dataclasses.dataclass(frozen=True)
class VeLO:
    """VeLO with LSTM width `hidden` (H) and `mixtures` (P) stacked MLPs.

    The released weights use H=512, P=256. `legacy_loss_features=True` is the
    "bugged" loss buffer (horizon 10 for every run length); `carry_lstm_state=False`
    is the legacy variant whose LSTM state is never carried forward.

        velo = VeLO(hidden=32, mixtures=16)
        theta = velo.init(key)
        opt = velo.optimizer(theta, num_steps=1000)   # an optax transformation
        updates, state = opt.update(grads, state, params, value=loss)
    """
    hidden: int = 512
    mixtures: int = 256
    legacy_loss_features: bool = False
    carry_lstm_state: bool = True

    def init(self, key) -> dict:
        return init_theta(key, self.hidden, self.mixtures)

    def optimizer(self, theta, num_steps: int) -> optax.GradientTransformationExtraArgs:
        return velo_optimizer(theta, num_steps, self.legacy_loss_features, self.carry_lstm_state,
                              expected=(self.hidden, self.mixtures))


def velo_optimizer(theta, num_steps: int, legacy_loss_features: bool = False,
                   carry_lstm_state: bool = True, expected: tuple | None = None
                   ) -> optax.GradientTransformationExtraArgs:
    """VeLO as an optax transformation; `update(grads, state, params, value=loss)`."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
        raise ValueError(f"num_steps must be a positive int (the training horizon T), got {num_steps!r}")
    num_steps = int(num_steps)
    check_theta(theta, *(expected or theta_config(theta)))

    def init_fn(params):
        return velo_init_state(theta, params, num_steps, legacy_loss_features)

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("VeLO needs the parameters: call update(grads, state, params, value=loss)")
        if value is None:
            raise ValueError("VeLO needs the training loss: call update(grads, state, params, value=loss) "
                             "(minilopt.train.fit passes it for you)")
        F.check_params(params)
        return velo_step(theta, state, updates, params, value, num_steps, carry_lstm_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
