"""VeLO's hand-written kernels (minilopt.lopt.velo_kernels).

The kernels run on GPU only (the statistics kernel for large 2-D tensors); here they run in Pallas's
interpreter, which executes the same kernel bodies tile by tile, masks included.

- The statistics kernel's 26 sums, and the factored kernel's row and column sums
  of g², equal their definitions, computed independently in float64
  with numpy, on shapes that do not divide into tiles, with NaN, ±inf and 1e30
  gradients and bfloat16 parameters.
- A whole VeLO step that takes the kernels for its matrices (both orientations of the
  factored axes; or the factored sums' kernel only, for some) gives the same update
  and state as the fast path's XLA code, which test_velo_fast.py checks against the
  reference.
- `split_columns` cuts each state vector out exactly, and differentiates as a slice.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt.lopt import VeLO
from minilopt.lopt import features as F
from minilopt.lopt import velo as V
from minilopt.lopt import velo_fast as VF
from minilopt.lopt import velo_kernels as K

if K.plgpu is None:
    pytest.skip("this jax has no Pallas Triton backend: VeLO runs its jnp code", allow_module_level=True)


def reference_sums(p, g, m, rms, f0, f1, shift):
    """The 26 sums from their definitions, in float64."""
    p, m, rms = np.float64(p), [np.float64(x) for x in m], np.float64(rms)
    g = np.clip(np.nan_to_num(np.float64(g), nan=0.0, posinf=1e3, neginf=-1e3), -1e3, 1e3)
    m_new = [b * mi + (1 - b) * g for b, mi in zip((0.9, 0.99, 0.999), m)]
    rms_new = 0.999 * rms + 0.001 * g * g
    r = 1 / np.sqrt(rms_new + 1e-6)
    fac = [np.outer(f0[k], f1[k]) for k in range(3)]
    dm = [mi - s for mi, s in zip(m, shift[:3])]
    dr = rms - shift[3]
    channels = [g, np.clip(g, -0.1, 0.1), p, *m_new, rms_new, *[mi * r for mi in m_new], r,
                *[g * f for f in fac], g * r, *[mi * f for mi, f in zip(m_new, fac)]]
    terms = [*dm, dr, *[x * x for x in dm], dr * dr, *[c * c for c in channels]]
    return np.array([t.sum() for t in terms])


@pytest.mark.parametrize("shape,dtype", [((37, 300), jnp.float32), ((300, 37), jnp.float32),
                                         ((17, 129), jnp.bfloat16), ((8, 512), jnp.float32)])
def test_statistics_kernel_matches_the_definitions(shape, dtype):
    ks = jax.random.split(jax.random.PRNGKey(sum(shape)), 9)
    p = jax.random.normal(ks[0], shape).astype(dtype)
    g = 0.1 * jax.random.normal(ks[1], shape)
    g = g.at[0, 1].set(jnp.nan).at[1, 2].set(jnp.inf).at[2, 3].set(-jnp.inf).at[3, 4].set(1e30)
    m = [0.01 * jax.random.normal(k, shape) for k in ks[2:5]]
    rms = 1e-3 * jax.random.uniform(ks[5], shape)
    f0 = jax.random.uniform(ks[6], (3, shape[0]), minval=0.5, maxval=2.0)
    f1 = jax.random.uniform(ks[7], (3, shape[1]), minval=0.5, maxval=2.0)
    shift = jnp.array([m[0][0, 0], m[1][0, 0], m[2][0, 0], rms[0, 0]])
    got = K.statistics_sums([(p, g, m, rms)], f0, f1, [(0, 0)], interpret=True)[0]
    want = reference_sums(np.asarray(p.astype(jnp.float32)), np.asarray(g), [np.asarray(x) for x in m],
                          np.asarray(rms), np.asarray(f0), np.asarray(f1), np.asarray(shift))
    assert got.shape == (K.NUM_SUMS + 4,) and np.all(np.isfinite(got))
    np.testing.assert_array_equal(np.asarray(got[K.NUM_SUMS:]), np.asarray(shift))  # the shifts, passed on exactly
    got = got[:K.NUM_SUMS]
    # float32 arithmetic (decays included: 1 − 0.999 is 0.00099998713 in float32) against float64
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-9 * np.abs(want).max())
    # the factors read in place from one shared array, between other columns (as VeLO passes them)
    shared = jnp.concatenate([jnp.full((3, 5), 7.0), f1, jnp.full((3, 3), -2.0), f0, jnp.full((3, 2), 9.0)], axis=1)
    starts = (5 + shape[1] + 3, 5)
    in_place = K.statistics_sums([(p, g, m, rms)], shared, shared, [starts], interpret=True)[0]
    np.testing.assert_allclose(np.asarray(in_place[:K.NUM_SUMS]), np.asarray(got), rtol=1e-6)
    # with another tensor of another shape in the same call (its partial sums are added in the same reduction)
    other = [x.T[:20] for x in (p, g)] + [[x.T[:20] for x in m], rms.T[:20]]
    both = K.statistics_sums([tuple(other), (p, g, m, rms)], shared, shared, [(0, 0), starts], interpret=True)
    assert both.shape == (2, K.NUM_SUMS + 4)
    np.testing.assert_allclose(np.asarray(both[1, :K.NUM_SUMS]), np.asarray(got), rtol=1e-6)
    both = both[:, :K.NUM_SUMS]
    want_other = reference_sums(*[np.asarray(x.astype(jnp.float32)) for x in other[:2]],
                                [np.asarray(x) for x in other[2]], np.asarray(other[3]),
                                np.asarray(shared[:, :20]), np.asarray(shared[:, :shape[0]]),
                                np.asarray([x[0, 0] for x in other[2]] + [other[3][0, 0]]))
    np.testing.assert_allclose(np.asarray(both[0]), want_other, rtol=1e-4, atol=1e-9 * np.abs(want_other).max())


def test_kernel_is_only_for_large_matrices_on_gpu(monkeypatch):
    on_gpu = jax.default_backend() == "gpu"
    assert K.applies((4096, 4096)) == on_gpu
    assert not K.applies((4096,)) and not K.applies((64, 64)) and not K.applies((8, 8, 4096))
    # the factored sums' kernel: every matrix on GPU, small ones too
    assert K.factored_applies((4096, 4096)) == K.factored_applies((1536, 10)) == K.factored_applies((3, 3)) == on_gpu
    assert not K.factored_applies((4096,)) and not K.factored_applies((8, 8, 4096))
    monkeypatch.setattr(K, "ENABLED", False)
    assert not K.applies((4096, 4096)) and not K.factored_applies((1536, 10))


def test_velo_step_with_the_kernel_equals_the_jnp_path(monkeypatch):
    velo = VeLO(hidden=16, mixtures=4, fast=True)
    theta = velo.init(jax.random.PRNGKey(0))
    opt = velo.optimizer(theta, num_steps=50)
    ks = jax.random.split(jax.random.PRNGKey(1), 4)
    # square, tall and wide: the factored axes d0/d1 and so the kernel's f0/f1 swap
    params = {"square": jax.random.normal(ks[0], (40, 40)), "tall": jax.random.normal(ks[1], (70, 24)),
              "wide": jax.random.normal(ks[2], (24, 130)), "bias": jnp.zeros((24,))}

    def run(use_kernel, steps):
        """(update, state) after each of `steps` steps, from one compile of the step."""
        # "mixed": the statistics and update kernels for one matrix only, the factored kernel for all
        monkeypatch.setattr(K, "applies", lambda shape: len(shape) == 2 and (use_kernel is True or shape == (40, 40)
                                                                            and use_kernel == "mixed"))
        monkeypatch.setattr(K, "factored_applies", lambda shape: bool(use_kernel) and len(shape) == 2)
        state, p, out = opt.init(params), params, []
        step = jax.jit(lambda g, s, p: opt.update(g, s, p, value=1.0))  # a new trace per path
        for t in range(steps):  # gradients that do not depend on p: no feedback of rounding differences
            g = jax.tree.map(lambda x: jnp.sin(3.0 * x + t), params)
            u, state = step(g, state, p)
            p = jax.tree.map(jnp.add, p, u)
            out.append((u, state))
        return out

    kernel, jnp_path, mixed = run(True, 3), run(False, 3), run("mixed", 1)
    # the first step: elementwise, as the parity tests compare with the reference
    for first in (kernel[0], mixed[0]):
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(jnp_path[0])):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-9)
    # the third step: the two summation orders' rounding (~1e-7) goes through the LSTM each
    # step, so compare each leaf at its own scale; a wrong statistic changes it by O(1)
    (u_k, s_k), (u_j, s_j) = kernel[-1], jnp_path[-1]
    for a, b in zip(jax.tree.leaves((u_k, s_k)), jax.tree.leaves((u_j, s_j))):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    assert all(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(u_k))  # every leaf moved


def test_derivatives_and_vmap_through_the_kernel_path():
    """Meta-training differentiates through VeLO's steps, and vmaps them over thetas.
    Triton kernels have no derivative rule; the kernel path differentiates the same
    sums written in jnp, so its gradients equal the jnp path's."""
    shape = (24, 130)
    ks = jax.random.split(jax.random.PRNGKey(3), 6)
    p, g = jax.random.normal(ks[0], shape), jax.random.normal(ks[1], shape)
    m = tuple(0.1 * jax.random.normal(k, shape) for k in ks[2:5])
    rms = jax.random.uniform(ks[5], shape)
    fac = F.factored_update(F.factored_init(p, 3), g, V.FACTORED_DECAYS)

    def loss(p, g, use_kernel):
        fac0 = jax.tree.map(lambda v: v + 0.5, fac)  # an older factored state, updated with g·p
        if use_kernel:  # the kernel path: factored_matrices, then the statistics kernel
            ((new_fac, factors, rowcol),) = VF.factored_matrices([fac0], [g * p])
            ((stats, mean_sq),) = VF.matrix_statistics([p], [g], [m], [rms], [(factors, rowcol)])
        else:
            new_fac = F.factored_update(fac0, g * p, V.FACTORED_DECAYS)
            stats, mean_sq = VF.tensor_statistics(p, g, m, rms, new_fac)
        return jnp.sum(stats) + jnp.sum(jnp.log(mean_sq)) + sum(jnp.sum(jnp.log(v)) for v in new_fac.values())

    def run(use_kernel):
        grads = jax.jit(jax.grad(lambda p, g: loss(p, g, use_kernel), argnums=(0, 1)))(p, g)
        batched = jax.jit(jax.vmap(lambda p: loss(p, g, use_kernel)))(jnp.stack([p, 2.0 * p]))
        return grads, batched

    (grads_k, batched_k), (grads_j, batched_j) = run(True), run(False)
    for a, b in zip(grads_k, grads_j):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * np.abs(np.asarray(b)).max())
    np.testing.assert_allclose(np.asarray(batched_k), np.asarray(batched_j), rtol=1e-5)
    assert abs(float(batched_j[0] - batched_j[1])) > 1e-3  # the two batch members differ


@pytest.mark.parametrize("shape,dtype", [((37, 300), jnp.float32), ((300, 37), jnp.float32),
                                         ((17, 129), jnp.bfloat16), ((4100, 3), jnp.float32)])
def test_factored_sums_match_the_definitions(shape, dtype):
    """Row and column sums of clip(g)² + 1e-30 (the factored second moment's means,
    times the axis length), on shapes that do not divide into tiles; the last one
    has enough rows for 16-row tiles."""
    g = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
    g = g.at[0, 1].set(jnp.nan).at[1, 2].set(jnp.inf).at[2, 0].set(-jnp.inf).at[3, 1].set(1e30).astype(dtype)
    def want(g):
        return np.clip(np.nan_to_num(np.asarray(g.astype(jnp.float32), np.float64), nan=0.0, posinf=1e3,
                                     neginf=-1e3), -1e3, 1e3) ** 2 + 1e-30

    # with a second, differently shaped g in the same call: all partial sums are added in one reduction
    other = g.T[:, :9]
    (along1, along0), (other1, other0) = K.factored_sums([g, other], interpret=True)
    assert along1.shape == (shape[0],) and along0.shape == (shape[1],)
    np.testing.assert_allclose(np.asarray(along1), want(g).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(along0), want(g).sum(axis=0), rtol=1e-5)
    assert float(along1[1]) >= 1e6 and float(along1[3]) >= 1e6  # ±inf and 1e30 clipped to ±1000, squared
    np.testing.assert_allclose(np.asarray(other1), want(other).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(other0), want(other).sum(axis=0), rtol=1e-5)


def test_segment_means_equal_the_means_of_each_run():
    """Means by owner over runs of unequal length (one of a single column), in float64 by numpy."""
    x = jax.random.normal(jax.random.PRNGKey(7), (3, 12))
    owner = np.array([0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2])
    sizes = np.array([3.0, 1.0, 8.0])
    got = VF.segment_means(x, owner, sizes)
    xs = np.asarray(x, np.float64)
    want = np.stack([xs[:, owner == k].sum(axis=1) / sizes[k] for k in range(3)], axis=1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)


def test_split_columns_cuts_each_piece_out_transposed():
    """Pieces of several lengths (over and under one program's 256 elements, one
    element), in any order, some columns of v in none: each is v[:, s:s+n].T exactly."""
    v = jax.random.normal(jax.random.PRNGKey(0), (3, 2000))
    starts, lengths = [700, 0, 1999, 300], [1290, 257, 1, 255]
    got = K.split_columns(v, starts, lengths, interpret=True)
    assert len(got) == 4
    for x, s, n in zip(got, starts, lengths):
        assert x.shape == (n, 3)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(v)[:, s:s + n].T)
    # its derivative is the slice's: the gradient of Σ_k Σ w_k·piece_k puts w_k back in place
    w = [jnp.full((n, 3), k + 1.0) for k, n in enumerate(lengths)]
    grad = jax.grad(lambda v: sum(jnp.sum(a * b) for a, b in zip(K.split_columns(v, starts, lengths,
                                                                                  interpret=True), w)))(v)
    want = np.zeros((3, 2000))
    for k, (s, n) in enumerate(zip(starts, lengths)):
        want[:, s:s + n] += k + 1.0
    np.testing.assert_array_equal(np.asarray(grad), want)
