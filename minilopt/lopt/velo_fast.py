"""VeLO's update in few passes over memory: the same math as `velo`, arranged for speed.

`velo` is the reference: per tensor it builds the 30 channels as a (…, 30) array,
normalises it and multiplies it by the MLP's weights, each a pass over memory that
writes or reads 30 floats per parameter. An optimizer step is memory-bound, so here
the channels are never stored. Per tensor the update makes three kinds of pass:

- the row and column means of g² for the factored second moment (reads g);
- ONE variadic reduction for every statistic the step needs (reads p, g, m, rms):
  the LSTM's variances and each channel's normaliser rsqrt(1e-5 + mean(x²));
- ONE fused elementwise pass that recomputes the channels, runs the MLP and writes
  p, m and rms.

The normalisers are folded into the (tiny) first-layer weights,
Σ_c (x_c·n_c)·w0[c] = Σ_c x_c·(n_c·w0[c]); the small matrix products are spelled out
as multiply-adds (which XLA fuses into the pass, where `@` would not); and an
optimization barrier keeps XLA from sharing, and so storing, channels between the two
passes (`fused_inputs`). The row and column channels of a matrix are constant along
one axis, so their share of the first layer is computed once per row or column. The
LSTM statistics come from shifted sums, var(x) = E[(x−c)²] − E[x−c]², so one pass
reads m once.

What is small is done for many tensors at once, since on a GPU each small kernel
costs a launch however little it does: tensors under LARGE_TENSOR elements are packed
side by side into one array, so all of them take one statistics pass and one update
pass (`packed_statistics`, `packed_step`), and the factored state of the kernel-path
matrices is updated in one (3, n) array (`factored_matrices`).

On GPU, Pallas kernels (`velo_kernels`) take the statistics pass and the means of g²
of the matrices, where XLA's code for them re-reads memory. They are optional, as they
need Pallas's Triton backend, which jax has deprecated: where it does not import,
`kernels` is None, and where it does not compile, `kernels_compile()` is False; then
every tensor takes the XLA code of this module, as it does off GPU. Nothing else
depends on them.

The formulas are the reference's, imported from `velo` (the channels, the
accumulators, the gradient clip, the LSTM, the mixing, the bounded step): only their
arrangement differs, and tests/test_velo_fast.py checks this module's steps against
the reference's.
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..sums import row_sums
from . import features as F
from .velo import (FACTORED_DECAYS, VeLOState, accumulate, bounded_step, channels, clean_gradient, cliplog,
                   debug_info, factored_multipliers, lstm_inputs, lstm_network, mix_weights, mlp_channels,
                   row_col_channels, row_col_from)


def _load_kernels():
    """`velo_kernels`, or None where Pallas or its Triton backend cannot be imported."""
    try:
        from . import velo_kernels
    except ImportError:
        return None
    return velo_kernels if velo_kernels.plgpu is not None else None


kernels = _load_kernels()
LARGE_TENSOR = 1 << 16  # elements; each such tensor's update is a pass of its own


@functools.cache
def kernels_compile() -> bool:
    """Do the kernels compile here? Tried once per process, on a tiny matrix: a jax whose
    Pallas imports on a backend that cannot lower Triton fails here, not at import. If
    they do not, every tensor takes the XLA code, with a warning that names the error."""
    try:  # lowered and compiled from shapes alone, so it also works while a step is being traced
        probe = jax.jit(lambda gs: kernels.factored_sums(gs))  # a new function: no cached trace
        probe.lower([jax.ShapeDtypeStruct((8, 8), jnp.float32)]).compile()
        return True
    except Exception as e:  # noqa: BLE001 (any lowering or compile error means: use the XLA code)
        warnings.warn(f"VeLO's Pallas kernels do not compile here ({type(e).__name__}: {str(e)[:200]}); "
                      "velo_fast runs its XLA code instead", RuntimeWarning, stacklevel=2)
        return False


def kernel_applies(shape) -> bool:
    """Does a tensor's statistics pass take the Pallas kernel (GPU, large matrices)?"""
    return kernels is not None and kernels.applies(shape) and kernels_compile()


def factored_kernel_applies(shape) -> bool:
    """Do a matrix's means of g² take the Pallas kernel (GPU, any matrix)?"""
    return kernels is not None and kernels.factored_applies(shape) and kernels_compile()


def tensor_means(channels, shape):
    """The means over a tensor of several channels, in ONE pass: a variadic
    reduction with one output per channel, so no stacked copy is ever stored.
    Each channel broadcasts to `shape`; returns a vector with one mean per channel.

    Summed in two explicit stages: along rows (one partial sum per row and channel,
    in the one pass), then the small (channels, rows) array at once. A rank ≥ 2
    tensor's rows are its last axis; a vector (or scalar) is cut into zero-padded
    rows of VECTOR_ROW. Left to itself, XLA (GPU) sums a vector's channels, or each
    channel's partial rows, in a single thread block, most of a small tensor's cost."""
    channels = [jnp.broadcast_to(c, shape) for c in channels]
    if len(shape) >= 2:
        rows = [c.reshape(-1, shape[-1]) for c in channels]
    else:
        pad = -int(np.prod(shape)) % VECTOR_ROW
        rows = [jnp.pad(c.reshape(-1), (0, pad)).reshape(-1, VECTOR_ROW) for c in channels]
    sums = jnp.sum(jnp.stack(row_sums(rows)), axis=1)
    return sums / float(max(1, int(np.prod(shape))))


VECTOR_ROW = 128  # the row length `tensor_means` cuts vectors into
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
    thread compute every tensor's MLP at once, which spills registers (GPU).
    Then p → float32 and g → clipped, inside the pass.
    """
    p, g, m, rms, small, _ = jax.lax.optimization_barrier((p, g, m, rms, small, after))
    return jnp.asarray(p, jnp.float32), clean_gradient(g), m, rms, small


def tensor_statistics(p, g, m, rms, fac):
    """Everything a tensor needs from a pass over all its elements, in ONE reduction.

    Inputs: the raw parameter and gradient, the OLD momenta and rms, and the UPDATED
    factored state (its row/column means of g² are the only other pass). Returns:

    - the 7 LSTM statistics of `velo.lstm_statistics`: mean_rms (1), var_m (3), var_rms (3);
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
    lstm_stats = lstm_statistics_from_sums(means[:8], jnp.stack(shift_m), shift_r, e_ch[full.index(2)])  # channel 2: p
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
    sums = kernels.statistics_sums(list(zip(ps, gs, ms, rmss)), mats[0].factors, mats[0].factors, starts)
    n = kernels.NUM_SUMS
    return [statistics_from_means(sums[j, :n] / float(np.prod(shape)), list(sums[j, n:n + 3]), sums[j, n + 3],
                                  full_channels(shape), rowcol)
            for j, (shape, (_, rowcol)) in enumerate(zip(shapes, factored))]


def lstm_statistics_from_sums(sums, shift_m, shift_r, mean_p2):
    """The 7 LSTM statistics (mean_rms, var_m (3), var_rms (3)) from the means of the
    shifted sums (m_i − c_i (3), rms − c_r, their squares (4)), the shifts c (3 and
    1) and mean(p²); any trailing axes are tensors. See `tensor_statistics`.

    var(x) = E[(x−c)²] − E[x−c]²; for var_rms, which centres rms on mean(m) (the
    reference's quirk), E[(rms − μ)²] = E[dr²] − 2(μ − c_r)E[dr] + (μ − c_r)².
    """
    e_dm, e_dr, e_dm2, e_dr2 = sums[:3], sums[3], sums[4:7], sums[7]
    s2 = 1.0 / jnp.maximum(1e-9, mean_p2)  # s², with s = rsqrt(max(1e-9, mean(p²)))
    var_m = jnp.maximum(e_dm2 - jnp.square(e_dm), 0.0)
    gap = shift_m + e_dm - shift_r
    var_rms = jnp.maximum(e_dr2 - 2.0 * gap * e_dr + jnp.square(gap), 0.0)
    return jnp.concatenate([cliplog(jnp.sqrt(s2) * (shift_r + e_dr))[None],
                            cliplog(s2 * var_m), cliplog(s2 * var_rms)])


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
    TF32 on GPUs would round to 1e-3, and is slower; a scatter-add sums in no fixed
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
    g = clean_gradient(g)
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
    return lstm_statistics_from_sums(sums[:8], shift_m, shift_r, sums[8 + 2]).T, sums[8:].T  # channel 2: p


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
# Matrices on the kernel path (GPU): their factored state in one array
# ---------------------------------------------------------------------------
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
    sums = kernels.factored_sums(grads)  # per g: Σ over axis 1 (R,), over axis 0 (C,)
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


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------
def velo_step(theta, state: VeLOState, grads, params, loss, num_steps: int,
              carry_lstm_state: bool = True, debug: bool = False):
    """`velo.velo_step`, in few passes over memory: the same arguments and results."""
    treedef = jax.tree.structure(params)
    p_raw, g_raw = treedef.flatten_up_to(params), treedef.flatten_up_to(grads)
    ms, rmss = treedef.flatten_up_to(state.m), treedef.flatten_up_to(state.rms)
    facs = treedef.flatten_up_to(state.fac)
    on_kernels = [i for i, p in enumerate(p_raw) if kernel_applies(jnp.shape(p))]
    # the factored state of every matrix that takes the kernels, and of smaller matrices too (their
    # state only: the small tensors' passes compute their factors themselves), kernel matrices first
    on_factored = on_kernels + [i for i, p in enumerate(p_raw)
                                if i not in on_kernels and factored_kernel_applies(jnp.shape(p))]
    factored = [None] * len(p_raw)
    if on_factored:
        results = factored_matrices([facs[i] for i in on_factored], [g_raw[i] for i in on_factored])
        for i, (fac, factors, rowcol) in zip(on_factored, results):
            facs[i], factored[i] = fac, (factors, rowcol) if i in on_kernels else None
    facs = [f if i in on_factored else F.factored_update(f, clean_gradient(g), FACTORED_DECAYS)
            for i, (f, g) in enumerate(zip(facs, g_raw))]

    # 1. loss buffer and loss features
    buffer = F.loss_buffer_update(state.loss_buffer, loss)
    loss_features = F.loss_buffer_features(buffer)

    # 3. per-tensor LSTM inputs (from the OLD m and rms) and MLP normalisers: one pass
    # for each large tensor, one for all the small ones together
    small = [i for i, p in enumerate(p_raw)
             if np.size(p) < LARGE_TENSOR and not kernel_applies(jnp.shape(p))]
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
    x = lstm_inputs(jnp.stack(stats), [jnp.shape(p) for p in p_raw], loss_features,
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
    gs = [clean_gradient(g) for g in g_raw]
    return updates, new_state, debug_info(x, loss_features, state, num_steps, controls, lr_mult, treedef, gs, facs)


