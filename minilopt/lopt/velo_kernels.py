"""VeLO's passes over large matrices as hand-written GPU kernels (Pallas, Triton backend).

Before its update, VeLO needs 26 sums over every tensor (`velo_fast.tensor_statistics`):
the LSTM's shifted sums of the OLD m and rms, and the mean square of each of the 18
full-size MLP channels, computed from the UPDATED accumulators. XLA compiles the jnp
version (GPU) into a first kernel that stores the updated m, rms and clipped g, and a
second that reads them back and sums them.

This kernel reads p, g, the 3 momenta and rms once, tile by tile, recomputes the
accumulators and channels in registers with the reference's own functions
(`velo.clean_gradient`, `velo.accumulate`, `velo.channels`), and writes one partial
sum per program and statistic;
one XLA reduction adds the partials of every matrix. Tiles are 2-D, so the
factored preconditioner row_f[j]·col_f[i] is one product of two small vectors,
with no index arithmetic.

`factored_sums` is the other reduction a matrix needs before its update: the
factored second moment's means of g² along each axis, from one read of g.
Both functions take all the large matrices of a step at once (`velo_fast.matrix_statistics`,
`velo_fast.factored_matrices`): a kernel per matrix, then one reduction for all, where
each small reduction would be a kernel launch of its own.

`split_columns` hands the factored state of all matrices, updated in one array,
back as one state leaf per vector, in one kernel.

The statistics kernel runs on GPU for large 2-D tensors (`applies`), the
factored sums for every 2-D tensor there (`factored_applies`);
`interpret=True` runs them anywhere (slowly), which is how the tests check them
against their definitions on CPU. The kernels are optional: `velo_fast` runs its
XLA code where this module or Pallas's Triton backend does not load.

Derivatives: Triton kernels have none, so each function is differentiated as
its jnp version (`jax.custom_jvp`): `jax.grad` and `jax.vmap` go through them on
GPU as in the interpreter.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.custom_derivatives import SymbolicZero
try:  # jax deprecates Pallas's Triton backend; without it `velo_fast` runs its XLA code everywhere
    from jax.experimental.pallas import triton as plgpu
except ImportError:
    plgpu = None

from .velo import accumulate, channels, clean_gradient

NUM_SUMS = 26
LANES = 32           # each program writes its 26 sums (+ 4 shifts) into one column of 32 (a power of 2)
BLOCK = (1, 128)     # rows × columns of one tile
NUM_WARPS = 1        # one warp per program: 26 accumulators of 4 elements per thread
NUM_STAGES = 3       # Triton prefetches the next tiles while one is summed
MIN_PROGRAMS = 1024  # split the columns until there are about this many programs
MIN_SIZE = 1 << 16   # smaller tensors: the jnp code (the kernel would be mostly launch cost)
ENABLED = plgpu is not None  # False: always the jnp code


def applies(shape) -> bool:
    """Is the kernel used for a tensor of this shape (on this backend)?"""
    return factored_applies(shape) and int(np.prod(shape)) >= MIN_SIZE and min(shape) >= BLOCK[0]


def factored_applies(shape) -> bool:
    """Are a tensor's factored sums (`factored_sums`) taken by the kernel? For every
    matrix on GPU: where the statistics kernel applies, and for smaller ones too,
    whose two reductions XLA (GPU) otherwise runs as separate slow kernels."""
    return ENABLED and jax.default_backend() == "gpu" and len(shape) == 2 and min(shape) >= 1


def _terms(p, g, m, rms, f0, f1, shifts, ok):
    """The 26 per-element terms whose sums `velo_fast.tensor_statistics` needs, in its order:

        m_i − c_i (3), rms − c_r, their squares (4), then the squares of the 18 channels
        of `velo.channels` that vary along both axes (all but the row/column ones)

    from the clipped g and the updated accumulators, with F_i = f0[i]·f1[i] the factored
    preconditioner (f0[i] varies along rows, f1[i] along columns), and the shifts c
    the first elements of m_0, m_1, m_2 and rms. `ok` masks the elements outside the
    tensor, where the kernel reads zeros: every term is zero there but the channel
    r = rsqrt(rms' + 1e-6), and the shifted sums.
    """
    g = clean_gradient(g)
    m_new, rms_new = accumulate(g, m, rms)
    fac = [a * b for a, b in zip(f0, f1)]
    chans = channels(p, g, m_new, rms_new, fac, fac, [])
    chans[10] = jnp.where(ok, chans[10], 0.0)  # r
    dm = [jnp.where(ok, mi - c, 0.0) for mi, c in zip(m, shifts)]
    dr = jnp.where(ok, rms - shifts[3], 0.0)
    return [*dm, dr, *[x * x for x in dm], dr * dr, *[c * c for c in chans]]


def _stats_kernel(p_ref, g_ref, m0_ref, m1_ref, m2_ref, rms_ref, f0_ref, f1_ref, out_ref, *,
                  shape, block, tiles, starts):
    """This program's 26 sums (`_terms`) over its row block and its range of column tiles."""
    R, C = shape
    s0, s1 = starts  # where the factors along rows and along columns begin in f0_ref, f1_ref
    BR, BC = block
    i, j = pl.program_id(0), pl.program_id(1)
    rows = i * BR + jnp.arange(BR)
    row_ok = rows < R
    f0 = [plgpu.load(f0_ref.at[pl.ds(k, 1), pl.ds(s0 + i * BR, BR)], mask=row_ok[None, :], other=0.0).T
          for k in range(3)]  # (BR, 1)
    shifts = [plgpu.load(ref.at[pl.ds(0, 1), pl.ds(0, 1)]) for ref in (m0_ref, m1_ref, m2_ref, rms_ref)]

    def tile_terms(t):
        """The 26 terms of the t-th tile of this program, each (BR, BC)."""
        col0 = (j * tiles + t) * BC
        cols = col0 + jnp.arange(BC)
        col_ok = cols < C
        ok = row_ok[:, None] & col_ok[None, :]

        def tile(ref):  # out-of-range elements read as 0; every term is 0 there or masked
            return plgpu.load(ref.at[pl.ds(i * BR, BR), pl.ds(col0, BC)], mask=ok, other=0.0).astype(jnp.float32)

        p, g = tile(p_ref), tile(g_ref)
        m = [tile(ref) for ref in (m0_ref, m1_ref, m2_ref)]
        rms = tile(rms_ref)
        f1 = [plgpu.load(f1_ref.at[pl.ds(k, 1), pl.ds(s1 + col0, BC)], mask=col_ok[None, :], other=0.0)
              for k in range(3)]  # (1, BC)
        return _terms(p, g, m, rms, f0, f1, shifts, ok)

    # Sum elementwise over this program's tiles, then across the tile once at the end:
    # a cross-thread reduction per tile and statistic would cost more than the reads.
    acc = jax.lax.fori_loop(0, tiles, lambda t, acc: [a + x for a, x in zip(acc, tile_terms(t))],
                            [jnp.zeros((BR, BC), jnp.float32)] * NUM_SUMS)
    lane = jnp.arange(LANES)
    sums = jnp.zeros((LANES,), jnp.float32)
    for k, a in enumerate(acc):
        sums = sums + jnp.where(lane == k, jnp.sum(a), 0.0)
    for k, c in enumerate(shifts):  # the first program also passes the shifts on: their sum over programs is exact
        sums = sums + jnp.where((lane == NUM_SUMS + k) & (i == 0) & (j == 0), jnp.sum(c), 0.0)
    plgpu.store(out_ref.at[pl.ds(0, LANES), i, j], sums)  # lanes first: XLA then adds along rows, fast


def _with_jnp_derivatives(with_kernel, with_jnp):
    """`with_kernel`, differentiated as `with_jnp` (the same function written in jnp):
    meta-training backpropagates through VeLO's steps, and Triton kernels have no
    derivative rule."""
    def jvp(primals, tangents):
        tangents = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype) if isinstance(t, SymbolicZero) else t,
                                tangents, is_leaf=lambda t: isinstance(t, SymbolicZero))
        return jax.jvp(with_jnp, primals, tangents)

    f = jax.custom_jvp(with_kernel)
    f.defjvp(jvp, symbolic_zeros=True)
    return f


def add_partials(partials: list):
    """Each (lanes, programs) array summed over its programs, all in ONE reduction:
    (k, lanes). XLA pads and stacks them inside the reduction, which runs along rows;
    apart, each small sum would be a kernel launch of its own."""
    width = max(x.shape[1] for x in partials)
    return jnp.sum(jnp.stack([jnp.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in partials]), axis=2)


def add_columns(partials: list):
    """Each (programs, n_i) array summed over its programs, all in ONE reduction: the
    sums side by side, (Σ n_i,)."""
    depth = max(x.shape[0] for x in partials)
    return jnp.sum(jnp.concatenate([jnp.pad(x, ((0, depth - x.shape[0]), (0, 0))) for x in partials], axis=1), axis=0)


def statistics_sums(tensors, f0, f1, starts, *, block=None, interpret: bool = False):
    """The 26 sums of `velo_fast.tensor_statistics` over each of several 2-D tensors,
    not yet divided by their sizes, then the 4 shifts: (k, 30). One kernel per
    tensor, then one reduction of all their partial sums.

    tensors: k tuples (p, g, (m_0, m_1, m_2), rms), each (R, C), raw (any float
    dtype). f0, f1: the factored preconditioner's factors along each axis, with
    tensor j's at f0[:, s0:s0+R] and f1[:, s1:s1+C], (s0, s1) = starts[j] (several
    matrices' factors share one (3, n) array, read in place). The LSTM statistics
    are sums shifted by the first element of each of m_0, m_1, m_2 and rms: the
    shifts, which the kernel reads anyway, so no other kernel need read them from
    the large arrays. Off GPU the kernel runs in Pallas's interpreter."""
    block = block or BLOCK
    interpret = interpret or jax.default_backend() != "gpu"  # Triton compiles for GPUs only
    starts = [tuple(int(x) for x in s) for s in starts]

    def partials(p, g, m, rms, f0, f1, starts):
        (R, C), (row_blocks, col_blocks) = p.shape, (pl.cdiv(p.shape[0], block[0]), pl.cdiv(p.shape[1], block[1]))
        splits = min(col_blocks, pl.cdiv(MIN_PROGRAMS, row_blocks))  # column ranges per row block
        tiles = pl.cdiv(col_blocks, splits)                          # tiles per program
        grid = (row_blocks, pl.cdiv(col_blocks, tiles))
        kernel = functools.partial(_stats_kernel, shape=(R, C), block=block, tiles=tiles, starts=starts)
        out = pl.pallas_call(
            kernel, grid=grid, interpret=interpret, name="velo_statistics",
            out_shape=jax.ShapeDtypeStruct((LANES,) + grid, jnp.float32),
            compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        )(p, g, *m, rms, f0, f1)
        return out.reshape(LANES, -1)

    def with_kernel(tensors, f0, f1):
        return add_partials([partials(*t, f0, f1, s) for t, s in zip(tensors, starts)])[:, :NUM_SUMS + 4]

    def with_jnp(tensors, f0, f1):  # the same sums, differentiable
        out = []
        for (p, g, m, rms), (s0, s1) in zip(tensors, starts):
            R, C = p.shape
            shifts = [x[0, 0] for x in (*m, rms)]
            terms = _terms(p.astype(jnp.float32), g.astype(jnp.float32), m, rms, [f[:, None] for f in f0[:, s0:s0 + R]],
                           [f[None, :] for f in f1[:, s1:s1 + C]], shifts, True)
            out.append(jnp.stack([jnp.sum(t) for t in terms] + shifts))
        return jnp.stack(out)

    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    tensors = tuple((p, g, tuple(f32(x) for x in m), f32(rms)) for p, g, m, rms in tensors)
    return _with_jnp_derivatives(with_kernel, with_jnp)(tensors, f32(f0), f32(f1))


# ---------------------------------------------------------------------------
# The factored second moment's two means of g², in one read of g
# ---------------------------------------------------------------------------
FACTORED_BLOCK = (8, 256)  # rows × columns of one tile; 16 rows when there are many rows
FACTORED_MIN_PROGRAMS = 256
FACTORED_SPLITS = 6  # column ranges per row block: 6× the programs
FACTORED_WARPS = 2


def _factored_kernel(g_ref, row_ref, col_ref, *, shape, block, tiles):
    """Partial row sums over this program's BR rows and column range, and its partial
    column sums, of clip(g)² + 1e-30."""
    R, C = shape
    BR, BC = block
    i, j = pl.program_id(0), pl.program_id(1)
    rows = i * BR + jnp.arange(BR)
    row_ok = rows < R

    def tile(t, row_sums):
        col0 = (j * tiles + t) * BC
        cols = col0 + jnp.arange(BC)
        col_ok = cols < C
        ok = row_ok[:, None] & col_ok[None, :]
        g = plgpu.load(g_ref.at[pl.ds(i * BR, BR), pl.ds(col0, BC)], mask=ok, other=0.0).astype(jnp.float32)
        sq = jnp.where(ok, jnp.square(clean_gradient(g)) + 1e-30, 0.0)
        plgpu.store(col_ref.at[i, pl.ds(col0, BC)], jnp.sum(sq, axis=0), mask=col_ok)
        return row_sums + jnp.sum(sq, axis=1)

    row_sums = jax.lax.fori_loop(0, tiles, tile, jnp.zeros((BR,), jnp.float32))
    plgpu.store(row_ref.at[j, pl.ds(i * BR, BR)], row_sums, mask=row_ok)


def factored_sums(gs, *, block=None, interpret: bool = False):
    """Per 2-D g in `gs`: (Σ over axis 1, Σ over axis 0) of clip(g)² + 1e-30, shapes
    (R,) and (C,).

    Both from one read of g: each program sums a block of rows over a range of
    columns and writes its partial row and column sums; one reduction then adds the
    partials of every g at once. XLA (GPU) instead stores g² for the second
    reduction to read back. Off GPU the kernel runs in Pallas's interpreter."""
    interpret = interpret or jax.default_backend() != "gpu"

    def partials(g):
        R, C = g.shape
        blk = block or ((16, FACTORED_BLOCK[1]) if pl.cdiv(R, 16) >= FACTORED_MIN_PROGRAMS else FACTORED_BLOCK)
        row_blocks, col_blocks = pl.cdiv(R, blk[0]), pl.cdiv(C, blk[1])
        tiles = pl.cdiv(col_blocks, min(col_blocks, FACTORED_SPLITS))  # column tiles per program
        grid = (row_blocks, pl.cdiv(col_blocks, tiles))
        kernel = functools.partial(_factored_kernel, shape=(R, C), block=blk, tiles=tiles)
        row_partials, col_partials = pl.pallas_call(
            kernel, grid=grid, interpret=interpret, name="velo_factored_sums",
            out_shape=(jax.ShapeDtypeStruct((grid[1], R), jnp.float32),
                       jax.ShapeDtypeStruct((row_blocks, C), jnp.float32)),
            compiler_params=plgpu.CompilerParams(num_warps=FACTORED_WARPS, num_stages=NUM_STAGES),
        )(g)
        return row_partials, col_partials

    def with_kernel(gs):
        sums = add_columns([x for g in gs for x in partials(g)])
        bounds = np.cumsum([0] + [n for g in gs for n in g.shape])
        sums = [sums[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return tuple((sums[2 * i], sums[2 * i + 1]) for i in range(len(gs)))

    def with_jnp(gs):
        out = []
        for g in gs:
            sq = jnp.square(clean_gradient(g)) + 1e-30
            out.append((jnp.sum(sq, axis=1), jnp.sum(sq, axis=0)))
        return tuple(out)

    return _with_jnp_derivatives(with_kernel, with_jnp)(tuple(gs))


# ---------------------------------------------------------------------------
# State vectors out of one array, in one kernel
# ---------------------------------------------------------------------------
SPLIT_BLOCK = 256  # elements of one piece per program


def split_columns(v, starts, lengths, *, interpret: bool = False):
    """[v[:, s:s+n].T for (s, n) in zip(starts, lengths)]: (n, rows) arrays cut out of
    v (rows, total), all in ONE kernel; program (k, c) copies chunk c of piece k.

    VeLO keeps the factored state of all the matrices side by side in one (3, n)
    array (`velo_fast.factored_matrices`), and hands each vector back as a state leaf
    of its own: XLA makes each such slice a kernel of its own. Off GPU the kernel runs
    in Pallas's interpreter."""
    interpret = interpret or jax.default_backend() != "gpu"
    starts, lengths = tuple(int(s) for s in starts), tuple(int(n) for n in lengths)

    def kernel(v_ref, *out_refs):
        piece, first = pl.program_id(0), pl.program_id(1) * SPLIT_BLOCK
        for k, (out_ref, start, length) in enumerate(zip(out_refs, starts, lengths)):
            @pl.when((piece == k) & (first < length))
            def _(out_ref=out_ref, start=start, length=length):
                ok = first + jnp.arange(SPLIT_BLOCK) < length
                for row in range(v_ref.shape[0]):
                    x = plgpu.load(v_ref.at[pl.ds(row, 1), pl.ds(start + first, SPLIT_BLOCK)], mask=ok[None, :])
                    plgpu.store(out_ref.at[pl.ds(first, SPLIT_BLOCK), pl.ds(row, 1)], x.T, mask=ok[:, None])

    def with_kernel(v):
        return tuple(pl.pallas_call(
            kernel, grid=(len(lengths), pl.cdiv(max(lengths), SPLIT_BLOCK)), interpret=interpret,
            name="velo_split_columns", out_shape=[jax.ShapeDtypeStruct((n, v.shape[0]), v.dtype) for n in lengths],
            compiler_params=plgpu.CompilerParams(num_warps=2, num_stages=1),
        )(v))

    def with_jnp(v):
        return tuple(v[:, s:s + n].T for s, n in zip(starts, lengths))

    return _with_jnp_derivatives(with_kernel, with_jnp)(v)
