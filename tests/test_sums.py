"""minilopt.sums.row_sums, and the one-pass means and dot products built on it: values
against numpy, derivatives against closed forms, including an operand that does not
depend on the input (jax's own derivative of a variadic reduction fails on that one)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilopt.hyper import fast
from minilopt.lopt import velo_fast as V
from minilopt.sums import row_sums

from helpers import float64


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_row_sums_equal_numpy(rows, cols, k, seed):
    xs = [np.random.default_rng(seed + i).normal(size=(rows, cols)).astype(np.float32) for i in range(k)]
    got = row_sums([jnp.asarray(x) for x in xs])
    assert len(got) == k
    for g, x in zip(got, xs):
        np.testing.assert_allclose(np.asarray(g), x.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-5)


def f(x, c):
    """Σ of the row sums of x, x² and a constant c: df/dx = 1 + 2x, whatever c."""
    return sum(jnp.sum(s) for s in row_sums([x, jnp.square(x), c]))


@pytest.mark.parametrize("transform", ["grad", "jit_grad", "jvp"])
def test_derivative_with_an_operand_that_does_not_depend_on_the_input(transform):
    with float64():
        x = jax.random.normal(jax.random.PRNGKey(0), (3, 7), jnp.float64)
        c = jnp.full((3, 7), 2.0)
        want = 1.0 + 2.0 * np.asarray(x)
        if transform == "jvp":
            direction = jax.random.normal(jax.random.PRNGKey(1), x.shape, jnp.float64)
            _, got = jax.jvp(lambda x: f(x, c), (x,), (direction,))
            np.testing.assert_allclose(float(got), float(np.sum(want * np.asarray(direction))), rtol=1e-12)
        else:
            grad = jax.grad(f)
            got = (jax.jit(grad) if transform == "jit_grad" else grad)(x, c)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


def test_vmap_and_grad_of_vmap():
    xs = jax.random.normal(jax.random.PRNGKey(2), (4, 3, 5))
    c = jnp.ones((3, 5))
    values = jax.vmap(lambda x: f(x, c))(xs)
    np.testing.assert_allclose(np.asarray(values), [float(np.sum(x + x**2) + 15) for x in np.asarray(xs)], rtol=1e-5)
    grads = jax.grad(lambda xs: jnp.sum(jax.vmap(lambda x: f(x, c))(xs)))(xs)
    np.testing.assert_allclose(np.asarray(grads), 1.0 + 2.0 * np.asarray(xs), rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 130), (1000,), (2, 3, 4)])
def test_velo_tensor_means_and_their_gradient(shape):
    """VeLO's one-pass means of several channels, one of them constant: the means as
    numpy's, and d/dp Σ means(p, p², 3) = (1 + 2p)/N."""
    with float64():
        p = jax.random.normal(jax.random.PRNGKey(3), shape, jnp.float64)
        n = p.size

        def total(p):
            return jnp.sum(V.tensor_means([p, jnp.square(p), jnp.float64(3.0)], shape))

        means = V.tensor_means([p, jnp.square(p), jnp.float64(3.0)], shape)
        np.testing.assert_allclose(np.asarray(means), [np.mean(p), np.mean(np.square(p)), 3.0], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.grad(total)(p)), (1.0 + 2.0 * np.asarray(p)) / n, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(row=st.sampled_from([2, 3, 8, 256]), k=st.integers(1, 3), seed=st.integers(0, 2**16),
       sizes=st.lists(st.integers(1, 700), min_size=1, max_size=4))
def test_hypergradient_dot_products_equal_numpy_at_any_row_length(row, k, seed, sizes):
    """hyper's forward-mode hypergradient, [Σ_leaves Σ t_j·g for each j], is a tree of row
    sums whose shape depends on ROW: rows of 2 or 3 force many rounds and ragged padding
    on these small leaves; with 256 (the default) there is no second round."""
    rng = np.random.default_rng(seed)
    shapes = [(n,) if i % 2 else (n // 7 + 1, 7) for i, n in enumerate(sizes)]
    grads = {f"w{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
    tangents = tuple({f"w{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
                     for _ in range(k))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast, "ROW", row)
        got = np.asarray(jax.jit(lambda t, g: fast._row_sum_dots(t, g, jnp.float32))(tangents, grads))
    # the path hyper takes on CPU, and for small levels everywhere: one sum per leaf and tangent
    got_cpu = np.asarray(jax.jit(lambda t, g: fast._per_leaf_dots(t, g, jnp.float32))(tangents, grads))
    want = [sum(float(np.sum(t[n].astype(np.float64) * grads[n])) for n in grads) for t in tangents]
    assert got.shape == got_cpu.shape == (k,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got_cpu, want, rtol=1e-4, atol=1e-3)
