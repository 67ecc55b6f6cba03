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
   with |d · exp(0.001·μ)| clipped at 1000 (`bounded_step`: inactive for trained
   weights, it keeps an untrained θ's updates finite).
8. t ← t + 1.

Speed. Per tensor the update makes three kinds of pass over memory: the row and
column means of g² (reads g); ONE variadic reduction for every statistic the step
needs (reads p, g, m, rms: the LSTM's variances and each channel's normaliser
`rsqrt(1e-5 + mean(x²))`); and ONE fused elementwise pass that recomputes the 30
channels, runs the MLP and writes p, m, rms. The channels are never stored: the
normalisers are folded into the (tiny) first-layer weights, the small matrix
products are spelled out as multiply-adds (which fuse, where `@` would not), and an
optimization barrier keeps XLA from sharing, and so storing, channels between the
two passes. The P-way mixing happens once per tensor, and the row/column channels'
share of the first layer once per row or column. On GPU, the statistics pass of a
large matrix is a hand-written kernel instead (`velo_kernels`, 3x faster than
XLA's code for it), and so are its row and column means of g² (one read of g, where
XLA stores g² between its two reductions); this file's jnp code is the reference
they are tested against.

What is small is done for many tensors at once, since on a GPU each small kernel
costs microseconds however little it does: tensors under LARGE_TENSOR elements are
packed side by side into one array, so all of them take one statistics pass and one
update pass (`packed_statistics`, `packed_step`), and the factored state of the
kernel-path matrices is updated in one (3, n) array (`factored_matrices`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import nn
from ..sums import row_sums
from . import features as F
from . import velo_kernels as kernels

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
LARGE_TENSOR = 1 << 16  # elements; each such tensor's update is a kernel of its own


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
    second-to-last dimension; biases `b…` and the initial LSTM state are zero.

    All weights come from ONE truncated-normal draw, cut into pieces (one call per
    leaf would compile a sampler per shape)."""
    shapes = theta_shapes(hidden, mixtures)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    is_weight = [path[-1].key.startswith("w") for path, _ in flat]
    sizes = [int(np.prod(shape)) if w else 0 for (_, shape), w in zip(flat, is_weight)]
    noise = nn.truncated_normal(key, (sum(sizes),), 1.0)
    out, start = [], 0
    for (_, shape), w, size in zip(flat, is_weight, sizes):
        if w:
            out.append(noise[start:start + size].reshape(shape) / np.sqrt(shape[-2]))
        else:
            out.append(jnp.zeros(shape, jnp.float32))
        start += size
    return jax.tree.unflatten(treedef, out)


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
    rnn = dict(theta["rnn_params"])
    rnn["rnn_to_controls"] = {"w": jnp.zeros((hidden, mixtures)), "b": jnp.ones((mixtures,))}
    rnn["step_size"] = {"w": jnp.zeros((hidden, 1)), "b": jnp.full((1,), float(lr_mult))}
    theta["rnn_params"] = rnn
    return theta


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
# Per-tensor passes over memory
# ---------------------------------------------------------------------------
def cliplog(x):
    """0.5 · clip(log(1e-8 + |10·x|), −5, 5)."""
    return 0.5 * jnp.clip(jnp.log(1e-8 + jnp.abs(10.0 * x)), -5.0, 5.0)


def tensor_means(channels, shape):
    """The means over a tensor of several channels, in ONE pass: a variadic
    reduction with one output per channel, so no stacked copy is ever stored.
    Each channel broadcasts to `shape`; returns a vector with one mean per channel.

    Summed in two explicit stages: along rows (one partial sum per row and channel,
    in the one pass), then the small (channels, rows) array at once. A rank ≥ 2
    tensor's rows are its last axis; a vector (or scalar) is cut into zero-padded
    rows of VECTOR_ROW. Left to itself, XLA (GPU) sums a vector's channels, or each
    channel's partial rows, in a single thread block: 11 µs for a 1536-vector's 38
    channels on an H200, most of a small tensor's cost."""
    channels = [jnp.broadcast_to(c, shape) for c in channels]
    if len(shape) >= 2:
        rows = [c.reshape(-1, shape[-1]) for c in channels]
    else:
        pad = -int(np.prod(shape)) % VECTOR_ROW
        rows = [jnp.pad(c.reshape(-1), (0, pad)).reshape(-1, VECTOR_ROW) for c in channels]
    sums = jnp.sum(jnp.stack(row_sums(rows)), axis=1)
    return sums / float(max(1, int(np.prod(shape))))


VECTOR_ROW = 128  # the row length `tensor_means` cuts vectors into


def mlp_channels(p, g, m, rms, fac, factors=None) -> list:
    """The 30 input channels of the per-parameter MLP (14 groups, spec §6), each
    broadcastable to `p.shape`:

        g, clip(g, ±0.1), p, m (3), rms, m·r (3), r, fac_g (3), g·r,
        row (3), col (3), rsqrt(row + 1e-8) (3), rsqrt(col + 1e-8) (3), m·row_f·col_f (3)

    with r = rsqrt(rms + 1e-6). `m` is the 3 UPDATED momenta, `rms` the updated
    second moment, `fac` the updated factored state (decay axis last). A rank ≥ 2
    tensor uses v_row/v_col broadcast over it; rank < 2 uses v_diag for both, and
    m · v_diag^(−1/2) (no epsilon) as the last group. `factors` may hold
    `features.factored_factors(fac, p.shape)` already computed.
    """
    precond, m_factor = factored_multipliers(fac, p.shape, factors)
    return channels(p, g, m, rms, precond, m_factor, row_col_channels(fac, p.shape))


def factored_multipliers(fac, shape, factors=None) -> tuple[list, list]:
    """Per decay, what multiplies g in fac_g (the preconditioner row_f·col_f) and
    what multiplies m in the last group (the same, or v_diag^(−1/2) for rank < 2)."""
    row_f, col_f = factors if factors is not None else F.factored_factors(fac, shape)
    precond = [row_f[..., i] * col_f[..., i] for i in range(3)]
    if F.factored_dims(shape) is None:
        return precond, [fac["v_diag"][..., i] ** -0.5 for i in range(3)]
    return precond, precond


def channels(p, g, m, rms, precond, m_factor, row_col) -> list:
    """`mlp_channels` from its ingredients: 3 preconditioners, 3 momentum factors and
    the 12 row/column channels (`row_col_channels`), each broadcastable to p."""
    r = jax.lax.rsqrt(rms + 1e-6)
    return ([g, jnp.clip(g, -0.1, 0.1), p, *m, rms, *[mi * r for mi in m], r]
            + [g * f for f in precond] + [g * r] + list(row_col)
            + [mi * f for mi, f in zip(m, m_factor)])


def row_col_channels(fac, shape) -> list:
    """Channels 15–26 (groups 9–12): row (3), col (3), rsqrt(row + 1e-8) (3),
    rsqrt(col + 1e-8) (3). For rank ≥ 2, row = v_row expanded at d0 and col = v_col
    expanded at d1 (constant along that axis); for rank < 2 both are v_diag."""
    dims = F.factored_dims(shape)
    if dims is None:
        row = col = fac["v_diag"]
    else:
        row, col = jnp.expand_dims(fac["v_row"], dims[0]), jnp.expand_dims(fac["v_col"], dims[1])
    return row_col_from([row[..., i] for i in range(3)], [col[..., i] for i in range(3)])


def row_col_from(row: list, col: list) -> list:
    return row + col + [jax.lax.rsqrt(x + 1e-8) for x in row] + [jax.lax.rsqrt(x + 1e-8) for x in col]


ROW_COL_CHANNELS = range(15, 27)  # groups 9–12: row, col, rsqrt(row), rsqrt(col)
ROW_CHANNELS = (15, 16, 17, 21, 22, 23)
COL_CHANNELS = (18, 19, 20, 24, 25, 26)


def fused_inputs(p, g, m, rms, small, after=None):
    """The start of each full-size pass: raw parameters and gradients, the state,
    and the small per-tensor arrays the pass reads, behind an optimization barrier.

    The barrier keeps XLA from (a) merging this pass's channels with the other
    pass's into one stored copy: each pass recomputes them from the raw inputs,
    which costs arithmetic but no memory traffic; (b) recomputing the small arrays
    (row/column factors, the MLP's weights, …) once per element inside the fused
    loop; and (c) with `after` (the previous tensor's results), fusing the passes
    of several tensors into one kernel: XLA's horizontal fusion would make one
    thread compute every tensor's MLP at once, which spills registers and ran
    several times slower (GPU). Then p → float32 and g → clipped, inside the pass.
    """
    p, g, m, rms, small, _ = jax.lax.optimization_barrier((p, g, m, rms, small, after))
    return jnp.asarray(p, jnp.float32), clip_gradient(g), m, rms, small


def accumulate(g, m, rms):
    """Step 5 for the momenta (3 arrays) and rms (features.momentum_update and
    rms_update, one decay per array; the factored state is updated separately):

        m_i ← β_i·m_i + (1−β_i)·g   for β = 0.9, 0.99, 0.999
        rms ← 0.999·rms + 0.001·g²
    """
    # β and 1−β in float32, as the reference computes them (1 − 0.999 is not 0.001 there)
    m = tuple(b * mi + (1 - b) * g for b, mi in zip(np.float32(MOMENTUM_DECAYS), m))
    b = np.float32(RMS_DECAYS[0])
    return m, b * rms + (1 - b) * jnp.square(g)


def tensor_statistics(p, g, m, rms, fac):
    """Everything a tensor needs from a pass over all its elements, in ONE reduction.

    Inputs: the raw parameter and gradient, the OLD momenta and rms, and the UPDATED
    factored state (its row/column means of g² are the only other pass). Returns:

    - the 7 LSTM statistics, in order mean_rms (1), var_m (3), var_rms (3):
          s        = rsqrt(max(1e-9, mean(p²)))      (m and rms are scaled by s, not s²)
          mean_rms = cliplog(mean(s·rms))
          var_m    = cliplog(mean((s·m − mean(s·m))²))          per momentum
          var_rms  = cliplog(mean((s·rms − mean(s·m))²))        the spec's quirk
    - mean(x²) of each of the 30 MLP channels (the per-channel normalisers).

    The variances come from shifted sums: with c = the tensor's first element,
    var(x) = mean((x−c)²) − mean(x−c)². The shift keeps the one-pass formula as
    accurate as the two-pass one while reading m only once.
    """
    shape = p.shape
    full = full_channels(shape)
    shift_m = [mi.reshape(-1)[0] for mi in m]
    shift_r = rms.reshape(-1)[0]
    p, g, m, rms, factors = fused_inputs(p, g, m, rms, F.factored_factors(fac, shape))
    m_new, rms_new = accumulate(g, m, rms)
    channels = mlp_channels(p, g, m_new, rms_new, fac, factors)
    dm = [mi - c for mi, c in zip(m, shift_m)]
    dr = rms - shift_r
    means = tensor_means([*dm, dr, *[jnp.square(x) for x in dm], jnp.square(dr)]
                         + [jnp.square(channels[k]) for k in full], shape)
    rowcol = None
    if F.factored_dims(shape) is not None:  # groups 9–12 are a small vector broadcast along one axis
        rowcol = []
        for v, f in [(fac["v_row"], jnp.square), (fac["v_col"], jnp.square),
                     (fac["v_row"], lambda x: 1.0 / (x + 1e-8)), (fac["v_col"], lambda x: 1.0 / (x + 1e-8))]:
            small = jnp.mean(f(v), axis=tuple(range(v.ndim - 1)))
            rowcol += [small[i] for i in range(3)]
    return statistics_from_means(means, shift_m, shift_r, full, rowcol)


def statistics_from_means(means, shift_m, shift_r, full, rowcol=None):
    """(the 7 LSTM statistics, the 30 channels' mean squares) from a tensor's means
    (`tensor_statistics`: 8 shifted ones, then one per channel in `full`), its shifts,
    and, for rank ≥ 2, the 12 row/column channels' mean squares `rowcol`."""
    e_ch = means[8:]
    lstm_stats = lstm_statistics(means[:8], jnp.stack(shift_m), shift_r, e_ch[full.index(2)])  # channel 2: p
    mean_sq = [None] * 30
    for k, v in zip(full, e_ch):
        mean_sq[k] = v
    if rowcol is not None:
        mean_sq[15:27] = list(rowcol)
    return lstm_stats, jnp.stack(mean_sq)


def matrix_statistics(ps, gs, ms, rmss, factored):
    """`tensor_statistics` of every kernel-path matrix: the same sums, from one
    hand-written GPU kernel per matrix (`velo_kernels.statistics_sums`), whose
    partial sums one reduction adds for all. `factored`: per matrix,
    `factored_matrices`' (MatrixFactors, mean squares of the 12 row/column channels)."""
    mats = [mat for mat, _ in factored]
    shapes = [jnp.shape(p) for p in ps]
    starts = [(mat.row_start, mat.col_start) if F.factored_dims(shape)[0] == 1 else (mat.col_start, mat.row_start)
              for mat, shape in zip(mats, shapes)]
    sums = kernels.statistics_sums(list(zip(ps, gs, ms, rmss)), mats[0].factors, mats[0].factors, starts,
                                   momentum_decays=MOMENTUM_DECAYS, rms_decay=RMS_DECAYS[0], grad_clip=GRAD_CLIP)
    n = kernels.NUM_SUMS
    return [statistics_from_means(sums[j, :n] / float(np.prod(shape)), list(sums[j, n:n + 3]), sums[j, n + 3],
                                  full_channels(shape), rowcol)
            for j, (shape, (_, rowcol)) in enumerate(zip(shapes, factored))]


def lstm_statistics(sums, shift_m, shift_r, mean_p2):
    """The 7 LSTM statistics (mean_rms, var_m (3), var_rms (3)) from the means of the
    shifted sums (m_i − c_i (3), rms − c_r, their squares (4)), the shifts c (3 and
    1) and mean(p²); any trailing axes are tensors. See `tensor_statistics`.

    var(x) = E[(x−c)²] − E[x−c]²; for var_rms, which centres rms on mean(m) (the
    spec's quirk), E[(rms − μ)²] = E[dr²] − 2(μ − c_r)E[dr] + (μ − c_r)².
    """
    e_dm, e_dr, e_dm2, e_dr2 = sums[:3], sums[3], sums[4:7], sums[7]
    s2 = 1.0 / jnp.maximum(1e-9, mean_p2)  # s², with s = rsqrt(max(1e-9, mean(p²)))
    var_m = jnp.maximum(e_dm2 - jnp.square(e_dm), 0.0)
    gap = shift_m + e_dm - shift_r
    var_rms = jnp.maximum(e_dr2 - 2.0 * gap * e_dr + jnp.square(gap), 0.0)
    return jnp.concatenate([cliplog(jnp.sqrt(s2) * (shift_r + e_dr))[None],
                            cliplog(s2 * var_m), cliplog(s2 * var_rms)])


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
    done once per tensor, never per parameter. The 14 first-layer blocks come back
    as one `w0` of shape (n_tensors, 30, 4).
    """
    P = controls.shape[-1]
    mixed = {k: jnp.tensordot(controls, w, axes=1) * (100.0 / P) for k, w in ff_stack.items()}
    if "w0__0" in mixed:
        mixed["w0"] = jnp.concatenate([mixed.pop(f"w0__{k}") for k in range(len(MLP_GROUPS))], axis=1)
    return mixed


# ---------------------------------------------------------------------------
# Per-parameter: the MLP and the step
# ---------------------------------------------------------------------------
def _dense(xs: list, w, b) -> list:
    """out_j = b_j + Σ_i xs[i]·w[i, j], with inputs and outputs lists of same-shape
    arrays, spelled out as multiply-adds so XLA fuses the MLP into one pass."""
    return [b[j] + sum(x * w[i, j] for i, x in enumerate(xs)) for j in range(w.shape[1])]


def take_rows(w, rows, axis: int = 0):
    """w[rows] (along `axis`) for static, sorted `rows`, as slices of consecutive runs
    rather than an indexed gather: slices are plain copies XLA can fuse into whatever
    computes w."""
    runs, start = [], rows[0]
    for prev, k in zip(rows, list(rows[1:]) + [None]):
        if k != prev + 1:
            runs.append(jax.lax.slice_in_dim(w, start, prev + 1, axis=axis))
            start = k
    return jnp.concatenate(runs, axis=axis)


def tensor_step(p, g, m, rms, fac, mean_sq, w, lr_mult, after=None):
    """Steps 5–7 for one tensor, in one fused pass: returns (Δ, m, rms), float32.

        Δ = lr_mult · d · exp(0.001·μ) · 0.001 · sqrt(mean(p²) + 1e-9)

    p and g are raw; `fac` is already updated (the statistics needed it). The MLP
    30 → 4 → relu → 4 → relu → 3 reads the channels normalised by
    n_c = rsqrt(1e-5 + mean(x_c²)), folded into its first layer:
    Σ_c (x_c·n_c)·w0[c] = Σ_c x_c·(n_c·w0[c]). For a rank ≥ 2 tensor the 12
    row/column channels are constant along one axis, so their share of the first
    layer is computed once per row and once per column, not per parameter.
    Output channel 0 is the direction d, channel 1 the magnitude μ. `after`: see
    `fused_inputs`.
    """
    return mlp_pass(p, g, m, rms, fac, pass_weights(fac, p.shape, mean_sq, w, lr_mult), after)


def pass_weights(fac, shape, mean_sq, w, lr_mult):
    """The small arrays one tensor's pass reads: (factors, (h_row, h_col), weights),
    with h_row/h_col the first layer's share of the row/column channels (see
    `tensor_step`) and weights the MLP's, the first layer's rows normalised."""
    w0 = F.normaliser_from_sum_sq(mean_sq, 1.0)[:, None] * w["w0"]
    if F.factored_dims(shape) is None:
        small_h = (w["b0"], jnp.zeros(4))
    else:
        rc = dict(zip(ROW_COL_CHANNELS, row_col_channels(fac, shape)))
        small_h = (_dense([rc[k] for k in ROW_CHANNELS], take_rows(w0, ROW_CHANNELS), w["b0"]),
                   _dense([rc[k] for k in COL_CHANNELS], take_rows(w0, COL_CHANNELS), jnp.zeros(4)))
    return F.factored_factors(fac, shape), small_h, mlp_weights(w0, w, lr_mult, mean_sq, full_channels(shape))


def full_channels(shape) -> list:
    """The channels a tensor's pass computes per element: all 30 for rank < 2; for
    rank ≥ 2, all but the 12 row/column channels."""
    return [k for k in range(30) if F.factored_dims(shape) is None or k not in ROW_COL_CHANNELS]


def mlp_weights(w0, w, lr_mult, mean_sq, full):
    """(first layer's rows of the `full` channels, w1, b1, w2, b2, step scale); any
    leading axes are tensors. Output channel 2 is unused."""
    param_scale = jnp.sqrt(mean_sq[..., 2] + 1e-9)  # channel 2 is p
    return (take_rows(w0, full, axis=w0.ndim - 2), w["w1"], w["b1"], w["w2"][..., :2], w["b2"][..., :2],
            lr_mult * 0.001 * param_scale)


STEP_BOUND = 1e3        # the most |d · exp(0.001·μ)| can be: see `bounded_step`
MU_MAX = 80_000.0       # exp(0.001 · MU_MAX) < float32's largest number


def bounded_step(d, mu):
    """The step's shape, bounded for any finite input:

        b(d, μ) = clip(d · exp(0.001 · min(μ, MU_MAX)), −STEP_BOUND, STEP_BOUND)

    so |Δ| ≤ STEP_BOUND · |lr_mult| · 0.001 · sqrt(mean(p²) + 1e-9): at most STEP_BOUND
    (1000) times the nominal step, whatever the gradients. Trained weights make
    |d · exp(0.001μ)| of order 1, where the bound is inactive and b is the reference's
    d · exp(0.001μ). An untrained θ (`init_theta`) can give |d| and μ in the
    thousands for an outlier gradient, where the unbounded product reaches 1e30 and
    then inf. min(μ, MU_MAX) keeps the exponential finite, so d = 0 gives 0, not 0 · inf."""
    return jnp.clip(d * jnp.exp(0.001 * jnp.minimum(mu, MU_MAX)), -STEP_BOUND, STEP_BOUND)


def mlp_pass(p, g, m, rms, fac, small, after=None, select=None):
    """The fused pass of `tensor_step`, given its small arrays (`pass_weights`).
    `select(small)`, when given, picks this tensor's share out of arrays that several
    tensors' passes read in place (`matrix_pass_weights`), inside the pass."""
    full = full_channels(p.shape)
    p, g, m, rms, small = fused_inputs(p, g, m, rms, small, after)
    factors, (h_row, h_col), (w0, w1, b1, w2, b2, scale) = small if select is None else select(small)
    m, rms = accumulate(g, m, rms)
    channels = mlp_channels(p, g, m, rms, fac, factors)
    bias = [r + c for r, c in zip(h_row, h_col)]  # each broadcasts along its own axis
    h = _dense([channels[k] for k in full], w0, bias)
    h = _dense([jax.nn.relu(x) for x in h], w1, b1)
    d, mu = _dense([jax.nn.relu(x) for x in h], w2, b2)
    return scale * bounded_step(d, mu), m, rms


# ---------------------------------------------------------------------------
# Small tensors: all of them at once
# ---------------------------------------------------------------------------
PACK_ROW = 128  # elements per row of the packed arrays


def segment_means(x, owner, sizes):
    """(k, n) means of x's (k, m) columns by owner (m,), divided by sizes (n,). The
    owners run in order, each over consecutive columns: each run is padded with
    zeros to the longest and all are summed in ONE reduction, in float32 and in a
    fixed order (a product with the 0/1 matrix of owners needs HIGHEST precision, as
    TF32 on GPUs would round to 1e-3, and was slower; a scatter-add sums in no fixed
    order)."""
    bounds = np.searchsorted(owner, np.arange(len(sizes) + 1))
    width = int(np.max(np.diff(bounds)))
    runs = [jnp.pad(x[:, a:b], ((0, 0), (0, width - (b - a)))) for a, b in zip(bounds[:-1], bounds[1:])]
    return jnp.sum(jnp.stack(runs, axis=1), axis=2) / sizes


class Packing(NamedTuple):
    """Where each small tensor lies in the packed (rows, PACK_ROW) arrays: from row
    `starts[i]`, its `sizes[i]` elements in order, zero-padded to `rows[i]` whole
    rows; `owner` names the tensor of each row. All static (numpy)."""
    shapes: tuple
    sizes: np.ndarray
    rows: np.ndarray
    starts: np.ndarray
    owner: np.ndarray


def packing(shapes) -> Packing:
    sizes = np.array([int(np.prod(s)) for s in shapes])
    rows = np.maximum(1, -(-sizes // PACK_ROW))
    return Packing(tuple(shapes), sizes, rows, np.cumsum(rows) - rows, np.repeat(np.arange(len(shapes)), rows))


def pack(arrays, layout: Packing):
    """One float32 (rows, PACK_ROW) array from one array per tensor (each broadcast to its shape)."""
    flat = [jnp.broadcast_to(jnp.asarray(a, jnp.float32), s).reshape(-1) for a, s in zip(arrays, layout.shapes)]
    pads = layout.rows * PACK_ROW - layout.sizes
    return jnp.concatenate([jnp.pad(f, (0, int(n))) for f, n in zip(flat, pads)]).reshape(-1, PACK_ROW)


def unpack(x, layout: Packing) -> list:
    flat = x.reshape(-1)
    return [flat[s * PACK_ROW: s * PACK_ROW + n].reshape(shape)
            for s, n, shape in zip(layout.starts, layout.sizes, layout.shapes)]


def packed_inputs(p, g, m, rms, fac, layout: Packing):
    """ONE (23, rows, PACK_ROW) array holding what the small tensors' passes read:
    p and g (raw), m (3), rms (OLD); the UPDATED factored state per element: row (3)
    and col (3) as in `row_col_channels`, the multipliers of `factored_multipliers`
    (3 + 3); each tensor's first element of m (3) and rms (the statistics' shifts);
    and 1 on the tensor's elements, 0 on the padding. One array, so it is one
    concatenation, written once and read by both passes."""
    per_tensor = []
    for p_i, g_i, m_i, rms_i, fac_i, shape in zip(p, g, m, rms, fac, layout.shapes):
        precond, m_factor = factored_multipliers(fac_i, shape)
        shifts = [x.reshape(-1)[0] for x in (*m_i, rms_i)]
        per_tensor.append([p_i, g_i, *m_i, rms_i, *row_col_channels(fac_i, shape)[:6], *precond, *m_factor,
                           *shifts, jnp.ones((), jnp.float32)])
    return jnp.stack([pack(arrays, layout) for arrays in zip(*per_tensor)])


def _packed_channels(x):
    """Clipped g, updated m and rms, and the 30 MLP channels of packed inputs `x`."""
    p, g, m, rms, row, col, precond, m_factor = x[0], x[1], x[2:5], x[5], x[6:9], x[9:12], x[12:15], x[15:18]
    g = clip_gradient(g)
    m_new, rms_new = accumulate(g, m, rms)
    return m_new, rms_new, channels(p, g, m_new, rms_new, precond, m_factor, row_col_from(list(row), list(col)))


def packed_statistics(x, layout: Packing):
    """`tensor_statistics` of every small tensor, from ONE reduction over the packed
    inputs (where each tensor on its own took several kernels): (n, 7) LSTM
    statistics and (n, 30) channel mean squares.

    Each row is summed, then each tensor's rows (`segment_means`). On the padding
    every input is 0, so every term is 0 there but three kinds of channel,
    rsqrt(rms + 1e-6) and rsqrt(row or col + 1e-8): the mask multiplies those."""
    x = jax.lax.optimization_barrier(x)
    _, _, chans = _packed_channels(x)
    valid = x[22]
    for k in (10, 21, 22, 23, 24, 25, 26):  # r, rsqrt(row + 1e-8) (3), rsqrt(col + 1e-8) (3)
        chans[k] = chans[k] * valid
    dm = [mi - c for mi, c in zip(x[2:5], x[18:21])]
    dr = x[5] - x[21]
    terms = [*dm, dr, *[jnp.square(d) for d in dm], jnp.square(dr)] + [jnp.square(c) for c in chans]
    sums = segment_means(jnp.stack(row_sums(terms)), layout.owner, layout.sizes)
    first = layout.starts
    shift_m, shift_r = x[18:21, first, 0], x[21, first, 0]
    return lstm_statistics(sums[:8], shift_m, shift_r, sums[8 + 2]).T, sums[8:].T  # channel 2: p


def packed_step(x, layout: Packing, mean_sq, w: dict, lr_mult):
    """`tensor_step` of every small tensor in ONE fused pass over the packed inputs:
    returns lists (Δ, m, rms) in the tensors' shapes. mean_sq (n, 30), every leaf of
    `w` (n, …) and lr_mult (n,) are per tensor; each row reads its tensor's, all
    gathered at once from one (n, 155) array."""
    n = mean_sq.shape[0]
    w0 = F.normaliser_from_sum_sq(mean_sq, 1.0)[:, :, None] * w["w0"]
    scale = lr_mult * 0.001 * jnp.sqrt(mean_sq[:, 2] + 1e-9)  # channel 2 is p
    parts = (w0, w["b0"], w["w1"], w["b1"], w["w2"][:, :, :2], w["b2"][:, :2], scale)
    per_row = jnp.concatenate([a.reshape(n, -1) for a in parts], axis=1)[layout.owner].T[..., None]
    x, per_row = jax.lax.optimization_barrier((x, per_row))
    sizes = np.cumsum([0] + [int(np.prod(a.shape[1:])) for a in parts])
    w0, b0, w1, b1, w2, b2, scale = (per_row[a:b].reshape(part.shape[1:] + per_row.shape[1:])
                                     for a, b, part in zip(sizes[:-1], sizes[1:], parts))
    m, rms, chans = _packed_channels(x)
    h = _dense(chans, w0, b0)
    h = _dense([jax.nn.relu(v) for v in h], w1, b1)
    d, mu = _dense([jax.nn.relu(v) for v in h], w2, b2)
    delta = scale * bounded_step(d, mu)
    return unpack(delta, layout), list(zip(*[unpack(mi, layout) for mi in m])), unpack(rms, layout)


# ---------------------------------------------------------------------------
# The optimizer
# ---------------------------------------------------------------------------
class VeLOState(NamedTuple):
    """Per leaf: m, a tuple of 3 momenta (decays 0.9, 0.99, 0.999), each p.shape;
    rms, p.shape; fac, {v_row, v_col} or {v_diag} with the decay axis last.
    lstm_hidden/lstm_cell: (n_tensors, H); loss_buffer: features.loss_buffer_init;
    iteration: the step t. The momenta are separate arrays, not one (…, 3) array, so
    that the update writes every per-parameter array in one fused pass."""
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
    n = len(jax.tree.leaves(params))
    init = theta["lstm_init_state"]
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)  # noqa: E731
    return VeLOState(
        m=jax.tree.map(lambda p: tuple(zeros(p) for _ in MOMENTUM_DECAYS), params),
        rms=jax.tree.map(zeros, params),
        fac=jax.tree.map(lambda p: F.factored_init(p, len(FACTORED_DECAYS)), params),
        lstm_hidden=jnp.broadcast_to(init["hidden"].reshape(1, -1), (n, init["hidden"].shape[-1])),
        lstm_cell=jnp.broadcast_to(init["cell"].reshape(1, -1), (n, init["cell"].shape[-1])),
        loss_buffer=F.loss_buffer_init(10 if legacy_loss_features else num_steps),
        iteration=jnp.zeros((), jnp.int32),
    )


def clip_gradient(g):
    """float32, NaN → 0, then clipped elementwise to [−1000, 1000]."""
    g = jnp.nan_to_num(jnp.asarray(g, jnp.float32), nan=0.0, posinf=GRAD_CLIP, neginf=-GRAD_CLIP)
    return jnp.clip(g, -GRAD_CLIP, GRAD_CLIP)


def factored_matrices(facs, grads):
    """The factored second moment of the matrices whose sums of g² take the GPU
    kernel (`velo_kernels.factored_applies`), all at once: per matrix, (updated
    state, factors, mean squares of the 12 row and column channels).

    Each matrix's means of g² come from one read of g (`velo_kernels.factored_sums`).
    Its v_row and v_col (the decay axis last, (n, 3)) are then laid side by side as
    one (3, total length) array, so the update, the means over each vector, and the
    factors row_f = rsqrt_safe(v_row / (mean(v_row) + 1e-9)), col_f = rsqrt_safe(v_col)
    are a few kernels for all matrices, where each matrix took about ten, most of
    them slow reductions of (n, 3) arrays over n. The factors come back as (3, n),
    the layout the statistics kernel reads: all matrices' in one array
    (`MatrixFactors`).
    """
    pieces, means = [], []
    sums = kernels.factored_sums(grads, grad_clip=GRAD_CLIP)  # per g: Σ over axis 1 (R,), over axis 0 (C,)
    for fac, g, (along1, along0) in zip(facs, grads, sums):
        shape = jnp.shape(g)
        mean_over = {0: along0 / shape[0], 1: along1 / shape[1]}
        d0, d1 = F.factored_dims(shape)
        pieces += [fac["v_row"].T, fac["v_col"].T]
        means += [mean_over[d0], mean_over[d1]]
    lengths = np.array([m.shape[0] for m in means])
    owner = np.repeat(np.arange(len(means)), lengths)
    b = np.float32(FACTORED_DECAYS)[:, None]
    v = b * jnp.concatenate(pieces, axis=1) + (1 - b) * jnp.concatenate(means)  # as features.factored_update
    means_of = segment_means(jnp.concatenate([v, jnp.square(v), 1.0 / (v + 1e-8)]), owner, lengths)
    mean_v, mean_v2, mean_inv = means_of[:3], means_of[3:6], means_of[6:]  # (3, vectors) each
    is_row = np.arange(len(means)) % 2 == 0
    factors = F.rsqrt_safe(v / jnp.where(is_row, mean_v + 1e-9, 1.0)[:, owner])  # v_col is not normalised
    out, starts = [], np.cumsum(lengths) - lengths
    leaves = kernels.split_columns(v, starts, lengths)  # the state vectors, (n, 3) each, in one kernel
    for i in range(len(facs)):
        row, col = 2 * i, 2 * i + 1
        state = {"v_row": leaves[row], "v_col": leaves[col]}
        rowcol = jnp.concatenate([mean_v2[:, row], mean_v2[:, col], mean_inv[:, row], mean_inv[:, col]])
        out.append((state, MatrixFactors(v, factors, int(starts[row]), int(starts[col])), rowcol))
    return out


class MatrixFactors(NamedTuple):
    """Where one kernel-path matrix's factored state lies in `factored_matrices`'
    arrays, which all such matrices share (and their passes read in place)."""
    v: jax.Array        # (3, n): every matrix's updated v_row and v_col, side by side
    factors: jax.Array  # (3, n): their factors, rsqrt_safe(v_row / (mean + 1e-9)) and rsqrt_safe(v_col)
    row_start: int      # where this matrix's v_row begins
    col_start: int      # where its v_col begins


def expand_factors(factors, row_start, col_start, shape):
    """One matrix's factors out of `factored_matrices`' (3, n) array, as
    `features.factored_factors` gives them: broadcastable to shape + (3,)."""
    d0, d1 = F.factored_dims(shape)
    f_row = factors[:, row_start:row_start + shape[d1]]  # v_row lost axis d0: it runs along d1
    f_col = factors[:, col_start:col_start + shape[d0]]
    return jnp.expand_dims(f_row.T, d0), jnp.expand_dims(f_col.T, d1)


def matrix_pass_weights(mats: list, shapes: list, w: dict, mean_sq, lr_mult):
    """`pass_weights` of all kernel-path matrices at once: returns the arrays their
    passes share (and read in place) and, per matrix, the `select` that picks its
    share out of them inside its pass (`mlp_pass`). `mats`: their `MatrixFactors`;
    every leaf of `w`, mean_sq (k, 30) and lr_mult (k,) have the matrices first.

    The first layer's share of the row and column channels, h, is computed for every
    v_row and v_col of `factored_matrices`' (3, n) array together, each vector with
    its own matrix's weights: the row channels' rows of w0 and b0 for a v_row, the
    column channels' rows for a v_col. That is one kernel for all, where each matrix
    took several."""
    k = len(mats)
    w0 = F.normaliser_from_sum_sq(mean_sq, 1.0)[..., None] * w["w0"]  # (k, 30, 4)
    lengths = [n for shape in shapes for n in (shape[F.factored_dims(shape)[1]], shape[F.factored_dims(shape)[0]])]
    owner = np.repeat(np.arange(2 * k), lengths)  # factored_matrices' order: v_row, v_col of each matrix
    w_vector = jnp.stack([take_rows(w0, ROW_CHANNELS, axis=1), take_rows(w0, COL_CHANNELS, axis=1)], axis=1)
    b_vector = jnp.stack([w["b0"], jnp.zeros_like(w["b0"])], axis=1)
    v = mats[0].v[:, :len(owner)]  # the kernel matrices' vectors come first
    channels = row_col_from([v[i] for i in range(3)], [])  # v (3), rsqrt(v + 1e-8) (3), each (n,)
    h = jnp.stack(_dense(channels, w_vector.reshape(2 * k, 6, 4)[owner].transpose(1, 2, 0),
                         b_vector.reshape(2 * k, 4)[owner].T))  # (4, n)
    shared = (mats[0].factors, h, mlp_weights(w0, w, lr_mult, mean_sq, full_channels(shapes[0])))  # all 2-D

    def select_for(i, mat, shape):
        d0, d1 = F.factored_dims(shape)

        def select(small):
            factors, h, weights = small
            h_row = [jnp.expand_dims(h[j, mat.row_start:mat.row_start + shape[d1]], d0) for j in range(4)]
            h_col = [jnp.expand_dims(h[j, mat.col_start:mat.col_start + shape[d0]], d1) for j in range(4)]
            return (expand_factors(factors, mat.row_start, mat.col_start, shape), (h_row, h_col),
                    tuple(x[i] for x in weights))
        return select

    return shared, [select_for(i, mat, shape) for i, (mat, shape) in enumerate(zip(mats, shapes))]


def velo_step(theta, state: VeLOState, grads, params, loss, num_steps: int,
              carry_lstm_state: bool = True, debug: bool = False):
    """One VeLO update as a pure function: returns (updates, new_state[, debug]).

    `updates = −Δ` per leaf, in the parameter's dtype (add them to the params).
    With `debug=True` also returns the step's intermediates: rnn_inputs, loss_features,
    fraction_trained, control_params, lr_mult, clipped_grads and fac_g.
    """
    treedef = jax.tree.structure(params)
    p_raw, g_raw = treedef.flatten_up_to(params), treedef.flatten_up_to(grads)
    ms, rmss = treedef.flatten_up_to(state.m), treedef.flatten_up_to(state.rms)
    facs = treedef.flatten_up_to(state.fac)
    on_kernels = [i for i, p in enumerate(p_raw) if kernels.applies(jnp.shape(p))]
    # the factored state of every matrix that takes the kernels, and of smaller matrices too (their
    # state only: the small tensors' passes compute their factors themselves), kernel matrices first
    on_factored = on_kernels + [i for i, p in enumerate(p_raw)
                                if i not in on_kernels and kernels.factored_applies(jnp.shape(p))]
    factored = [None] * len(p_raw)
    if on_factored:
        results = factored_matrices([facs[i] for i in on_factored], [g_raw[i] for i in on_factored])
        for i, (fac, factors, rowcol) in zip(on_factored, results):
            facs[i], factored[i] = fac, (factors, rowcol) if i in on_kernels else None
    facs = [f if i in on_factored else F.factored_update(f, clip_gradient(g), FACTORED_DECAYS)
            for i, (f, g) in enumerate(zip(facs, g_raw))]

    # 1. loss buffer and loss features
    buffer = F.loss_buffer_update(state.loss_buffer, loss)
    loss_features = F.loss_buffer_features(buffer)

    # 3. per-tensor LSTM inputs (from the OLD m and rms) and MLP normalisers: one pass
    # for each large tensor, one for all the small ones together
    small = [i for i, p in enumerate(p_raw)
             if np.size(p) < LARGE_TENSOR and not kernels.applies(jnp.shape(p))]
    stats, mean_sq = [None] * len(p_raw), [None] * len(p_raw)
    for i in sorted(set(range(len(p_raw))) - set(small) - set(on_kernels)):
        stats[i], mean_sq[i] = tensor_statistics(p_raw[i], g_raw[i], ms[i], rmss[i], facs[i])
    if on_kernels:  # last matrix first: its g, just read for the factored sums, may still be in the L2 cache
        order = on_kernels[::-1]
        results = matrix_statistics(*[[a[i] for i in order] for a in (p_raw, g_raw, ms, rmss, factored)])
        for i, (tensor_stats, tensor_mean_sq) in zip(order, results):
            stats[i], mean_sq[i] = tensor_stats, tensor_mean_sq
    if small:
        layout = packing([jnp.shape(p_raw[i]) for i in small])
        packed = packed_inputs(*[[a[i] for i in small] for a in (p_raw, g_raw, ms, rmss, facs)], layout)
        small_stats, small_mean_sq = packed_statistics(packed, layout)
        for j, i in enumerate(small):
            stats[i], mean_sq[i] = small_stats[j], small_mean_sq[j]
    ranks = jnp.stack([rank_one_hot(jnp.shape(p)) for p in p_raw])
    x = lstm_inputs(jnp.stack(stats), ranks, loss_features,
                    F.fraction_embedding(state.iteration, num_steps))

    # 4. the LSTM over all tensors, and the per-tensor mixing of the MLP (matrix products
    # at JAX's default precision, as the reference: TF32 on recent GPUs, unless
    # `jax.default_matmul_precision("highest")` asks for float32)
    controls, lr_mult, (h, c) = lstm_network(theta["rnn_params"], x, (state.lstm_hidden, state.lstm_cell))
    mixed = mix_weights(theta["ff_mod_stack"]["~"], controls)
    if not carry_lstm_state:  # legacy: the state never leaves its initial value
        h, c = state.lstm_hidden, state.lstm_cell

    # 5–7. (the MLP is mixed once per tensor, above) one fused pass per large tensor,
    # one for all the small ones
    deltas, new_m, new_rms, last_large = [None] * len(p_raw), [None] * len(p_raw), [None] * len(p_raw), None
    if on_kernels:
        idx = np.asarray(on_kernels)
        shared, selects = matrix_pass_weights([factored[i][0] for i in on_kernels],
                                              [jnp.shape(p_raw[i]) for i in on_kernels],
                                              {k: v[idx] for k, v in mixed.items()},
                                              jnp.stack([mean_sq[i] for i in on_kernels]), lr_mult[idx])
        selects = dict(zip(on_kernels, selects))
    for i in sorted(set(range(len(p_raw))) - set(small)):
        large = np.size(p_raw[i]) >= LARGE_TENSOR
        after = last_large if large else None
        if i in on_kernels:
            deltas[i], new_m[i], new_rms[i] = mlp_pass(p_raw[i], g_raw[i], ms[i], rmss[i], facs[i], shared, after,
                                                       select=selects[i])
        else:
            w = {k: v[i] for k, v in mixed.items()}
            deltas[i], new_m[i], new_rms[i] = tensor_step(p_raw[i], g_raw[i], ms[i], rmss[i], facs[i], mean_sq[i],
                                                          w, lr_mult[i], after)
        if large:  # large tensors' passes run one after another (see fused_inputs)
            last_large = (deltas[i], new_m[i], new_rms[i])
    if small:
        idx = np.asarray(small)
        results = packed_step(packed, layout, small_mean_sq, {k: v[idx] for k, v in mixed.items()}, lr_mult[idx])
        for j, i in enumerate(small):
            deltas[i], new_m[i], new_rms[i] = (r[j] for r in results)
    updates = [(-d).astype(jnp.result_type(p)) for d, p in zip(deltas, p_raw)]

    new_state = VeLOState(
        m=treedef.unflatten(new_m), rms=treedef.unflatten(new_rms), fac=treedef.unflatten(facs),
        lstm_hidden=h, lstm_cell=c, loss_buffer=buffer, iteration=state.iteration + 1)
    updates = treedef.unflatten(updates)
    if not debug:
        return updates, new_state
    gs = [clip_gradient(g) for g in g_raw]
    info = {
        "rnn_inputs": x, "loss_features": loss_features,
        "fraction_trained": state.iteration.astype(jnp.float32) / jnp.float32(num_steps),
        "control_params": controls, "lr_mult": lr_mult,
        "clipped_grads": treedef.unflatten(gs),
        "fac_g": treedef.unflatten([F.factored_precondition(f, g) for f, g in zip(facs, gs)]),
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
    start: str = "random"      # what `init` returns: "random" (init_theta) or "adam" (adam_like_theta)

    def __post_init__(self):
        if self.start not in ("random", "adam"):
            raise ValueError(f"VeLO(start={self.start!r}): use 'random' or 'adam'")

    def init(self, key) -> dict:
        if self.start == "adam":
            return adam_like_theta(key, self.hidden, self.mixtures)
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
        real = lambda v: any(jnp.issubdtype(jnp.result_type(v), k) for k in (jnp.floating, jnp.integer))
        if isinstance(value, (str, bytes)) or jnp.shape(value) != () or not real(value):
            raise ValueError(f"VeLO's value= must be the training loss as a real scalar, got {value!r}; "
                             "pass the loss your task computed, e.g. value=loss")
        F.check_params(params)
        return velo_step(theta, state, updates, params, value, num_steps, carry_lstm_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@functools.partial(jax.jit, static_argnames=("n", "num_steps"))
def update_surface(theta, fraction, log10_rms, span=1.0, n: int = 41, num_steps: int = 100):
    """The learned update as a function of gradient and momentum: −Δ on an n×n grid.

    The grid is one tensor of n×n parameters (all equal to 0.1), parameter (i, j)
    getting gradient g_j and momentum m_i (the same for all three decays) from
    linspace(−span, span, n), second moments 10**log10_rms, at step t = fraction·T.
    Returns (g, m, update, lr_mult): what `velo_step` would add to that tensor.
    """
    g = jnp.linspace(-span, span, n)
    G, M = jnp.meshgrid(g, g)
    params = {"w": jnp.full((n, n), 0.1, jnp.float32)}
    state = velo_init_state(theta, params, num_steps)
    rms = jnp.full((n, n), 10.0 ** log10_rms, jnp.float32)
    state = state._replace(
        m={"w": (M, M, M)}, rms={"w": rms},
        fac={"w": {"v_row": jnp.full((n, 3), 10.0 ** log10_rms), "v_col": jnp.full((n, 3), 10.0 ** log10_rms)}},
        iteration=jnp.asarray(jnp.round(fraction * num_steps), jnp.int32))
    updates, _, info = velo_step(theta, state, {"w": G}, params, 1.0, num_steps, debug=True)
    return g, g, updates["w"], info["lr_mult"][0]
