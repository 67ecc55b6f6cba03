"""The fast path (minilopt.lopt.velo_fast) against the reference (minilopt.lopt.velo).

The reference computes VeLO's update as the math reads and reproduces the reference
implementation's fixtures (test_velo_parity.py). The fast path rearranges the same
math: packed small tensors, one-pass statistics from shifted sums, normalisers folded
into the first layer, and (on GPU) Pallas kernels. Here both run from the same state,
step by step, on the fixture's theta, losses and gradients, over a tree that has every
kind of tensor the fast path treats differently: scalars, vectors and small matrices
(packed together), a 4-D kernel, and tensors above LARGE_TENSOR (matrices in both
orientations, a vector, a 3-D tensor: one pass each). They must agree to float32
rounding.

And VeLO must work where the Pallas kernels cannot load (jax has deprecated their
Triton backend): the reference never needs them, and the fast path falls back to
its XLA code.
"""
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import minilopt.lopt
from minilopt.lopt import velo as V
from minilopt.lopt import velo_fast as VF
from helpers import fixture_theta

DATA = os.path.join(os.path.dirname(__file__), "data", "velo")
NUM_STEPS = 20
LARGE = {"tall": (320, 256), "wide": (256, 330), "long": (70_000,), "cube": (4, 130, 130)}


def fixture(name):
    d = dict(np.load(os.path.join(DATA, name, "trajectory.npz")))
    return d, jax.tree.map(jnp.asarray, fixture_theta(os.path.join(DATA, name, "theta.npz")))


def tree_at(d, prefix):
    """The fixture's tree at `prefix` (a 4-D conv kernel, a vector, a matrix, a scalar,
    a square matrix): all below LARGE_TENSOR, so the fast path packs them together."""
    small = {"conv": {"kernel": d[prefix + "conv/kernel"]}, "scale": d[prefix + "scale"],
             "dense": {"b": d[prefix + "dense/b"], "w": d[prefix + "dense/w"]}, "square": {"w": d[prefix + "square/w"]}}
    return jax.tree.map(jnp.asarray, small)


def large_tensors(t, grads: bool):
    """The tensors above LARGE_TENSOR, their values (or, with `grads`, their gradients)
    at step t: smooth functions of t; each gradient holds NaN, ±inf and 1e30 (the clip),
    and their scales run from 1 down to 1e-9."""
    out = {}
    for k, (name, shape) in enumerate(LARGE.items()):
        x = jnp.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)
        if grads:
            g = 10.0 ** (-3 * k) * (jnp.sin(7.0 * x + t + k) + 0.01 * jnp.cos(50.0 * x * (k + 1)))
            out[name] = g.reshape(-1).at[:4].set(jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1e30])).reshape(shape)
        else:
            out[name] = 0.05 * jnp.cos(3.0 * x + k) + 0.001 * t
    return out


@pytest.fixture(scope="module")
def float32_products():
    with jax.default_matmul_precision("highest"):
        yield


def assert_same(what, fast, ref, rtol=2e-5):
    """Equal to float32 rounding: relative rtol, with an absolute floor of rtol times
    the leaf's largest value (a sum of N float32 terms in another order differs by
    about sqrt(N)·1e-7 of its terms' size)."""
    fast, ref = np.asarray(fast, np.float64), np.asarray(ref, np.float64)
    assert fast.shape == ref.shape, what
    scale = np.abs(ref).max() if ref.size else 0.0
    np.testing.assert_allclose(fast, ref, rtol=rtol, atol=rtol * scale + 1e-30, err_msg=what)


def assert_same_update(what, fast, ref, p, rtol=1e-4):
    """Updates agree as the parity tests compare them: up to one float32 ulp of the
    parameter (both sides are added to it) plus rtol of the leaf's largest update.
    The per-parameter MLP's output d is a difference of ReLU units, so where they
    nearly cancel (a small update) a last-bit difference in the channels is a larger
    relative one in d; at the leaf's scale it is below 1e-4 (a wrong formula changes
    it by O(1))."""
    fast, ref, p = (np.asarray(x, np.float64) for x in (fast, ref, p))
    ulp = np.spacing(np.abs(p).astype(np.float32)).astype(np.float64)
    err, tol = np.abs(fast - ref), ulp + rtol * np.abs(ref).max()
    worst = np.argmax(err - tol)
    assert (err <= tol).all(), f"{what}: error {err.flat[worst]:.3g} where the tolerance is {tol.flat[worst]:.3g}"


@pytest.mark.parametrize("name", ["small_32x16", "default_128x64_legacy_loss"])
def test_fast_path_equals_the_reference_step_by_step(name, float32_products):
    """Five steps from the reference's own state: both paths' updates, every state
    leaf and the intermediates agree; the large tensors do move."""
    d, theta = fixture(name)
    params = {**tree_at(d, "params_init/"), **large_tensors(0, grads=False)}
    legacy = name.endswith("legacy_loss")
    state = V.velo_init_state(theta, params, NUM_STEPS, legacy)
    steps = {path: jax.jit(lambda th, s, g, p, l, f=f: f(th, s, g, p, l, NUM_STEPS, debug=True))
             for path, f in (("reference", V.velo_step), ("fast", VF.velo_step))}
    for t in range(5):
        grads = {**tree_at(d, f"grads/step{t}/"), **large_tensors(t, grads=True)}
        (u_ref, s_ref, i_ref), (u_fast, s_fast, i_fast) = (steps[p](theta, state, grads, params, d[f"loss/step{t}"])
                                                          for p in ("reference", "fast"))
        for (path, a), b, p in zip(jax.tree_util.tree_leaves_with_path(u_fast), jax.tree.leaves(u_ref),
                                   jax.tree.leaves(params)):
            assert_same_update(f"step {t} update {jax.tree_util.keystr(path)}", a, b, p)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path((s_fast, i_fast)), jax.tree.leaves((s_ref, i_ref))):
            assert_same(f"step {t} {jax.tree_util.keystr(path)}", a, b)
        for k in LARGE:
            assert np.abs(np.asarray(u_ref[k])).max() > 0 and np.isfinite(np.asarray(u_fast[k])).all()
        params, state = optax.apply_updates(params, u_ref), s_ref


def test_fast_path_equals_the_reference_as_an_optimizer(float32_products):
    """`VeLO(fast=True)` and `VeLO(fast=False)`, each from its own init over 3 steps:
    the rounding differences go through the LSTM each step, so each leaf is compared
    at its own scale (a wrong statistic would change it by O(1))."""
    d, theta = fixture("small_32x16")
    runs = {}
    for fast in (True, False):
        opt = V.VeLO(hidden=32, mixtures=16, fast=fast).optimizer(theta, NUM_STEPS)
        params = {**tree_at(d, "params_init/"), **large_tensors(0, grads=False)}
        state, update = opt.init(params), jax.jit(lambda g, s, p, l, opt=opt: opt.update(g, s, p, value=l))
        for t in range(3):
            grads = {**tree_at(d, f"grads/step{t}/"), **large_tensors(t, grads=True)}
            u, state = update(grads, state, params, d[f"loss/step{t}"])
            params = optax.apply_updates(params, u)
        runs[fast] = (u, state)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(runs[True]), jax.tree.leaves(runs[False])):
        assert_same(jax.tree_util.keystr(path), a, b, rtol=1e-4)


def test_fast_flag_chooses_the_path(monkeypatch):
    """fast=None: the fast path on GPU, the reference elsewhere; True and False force
    one. Recorded by replacing each path's step with a spy (the fast path without its
    kernels, which a pretended GPU backend would otherwise compile for a GPU)."""
    monkeypatch.setattr(VF, "kernels", None)
    calls = []
    for module in (V, VF):
        real = module.velo_step
        monkeypatch.setattr(module, "velo_step", lambda *a, _m=module, _f=real, **k: calls.append(_m) or _f(*a, **k))
    theta = V.VeLO(hidden=8, mixtures=4).init(jax.random.PRNGKey(0))
    params = {"w": jnp.ones((3, 2))}

    def used(fast, backend):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        opt = V.VeLO(hidden=8, mixtures=4, fast=fast).optimizer(theta, 10)
        calls.clear()
        jax.eval_shape(lambda: opt.update(params, opt.init(params), params, value=1.0))  # traces, runs nothing
        return calls[-1]

    assert used(None, "cpu") is V and used(None, "gpu") is VF
    assert used(True, "cpu") is VF and used(False, "gpu") is V
    with pytest.raises(ValueError, match="fast="):
        V.VeLO(fast="yes")
    assert V.VeLO(fast=True) == V.VeLO(fast=False)  # the same optimizer, by another code path


def test_fast_path_falls_back_to_xla_without_the_kernels(monkeypatch):
    """Where Pallas does not import, `velo_fast` loads with no kernels, and on a GPU
    every tensor takes its XLA code."""
    monkeypatch.setitem(sys.modules, "jax.experimental.pallas", None)  # `import` raises ImportError
    monkeypatch.delitem(sys.modules, "minilopt.lopt.velo_kernels", raising=False)
    monkeypatch.delattr(minilopt.lopt, "velo_kernels", raising=False)
    assert VF._load_kernels() is None
    monkeypatch.setattr(VF, "kernels", None)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not VF.kernel_applies((4096, 4096)) and not VF.factored_kernel_applies((1536, 10))


def test_fast_path_falls_back_to_xla_where_the_kernels_do_not_compile(monkeypatch):
    """Pallas imports, but its kernels fail to lower (a backend without Triton): one
    warning, while the step is being traced, and every tensor takes the XLA code. The
    kernels are stood in for by ones that fail to lower, so the test means the same on
    a CPU and on a GPU where the real kernels do compile."""
    import types

    def fails_to_lower(gs):
        raise NotImplementedError("no Triton lowering on this backend")

    stand_in = types.SimpleNamespace(applies=lambda shape: True, factored_applies=lambda shape: True,
                                     factored_sums=fails_to_lower)
    monkeypatch.setattr(VF, "kernels", stand_in)
    VF.kernels_compile.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="do not compile here"):
            jaxpr = jax.make_jaxpr(lambda x: x + VF.kernel_applies((4096, 4096)))(1.0)
        assert "pallas" not in str(jaxpr) and not VF.kernels_compile()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # decided once: no second try, no second warning
            assert not VF.factored_kernel_applies((1536, 10))
    finally:
        VF.kernels_compile.cache_clear()


SCRIPT = r"""
import sys
sys.modules["jax.experimental.pallas"] = None      # as on a jax without Pallas: its import fails
import jax, jax.numpy as jnp, numpy as np, optax
from minilopt.lopt import VeLO, velo_fast
sys.path.insert(0, "tests")
from helpers import fixture_theta
assert velo_fast.kernels is None and "minilopt.lopt.velo_kernels" not in sys.modules
jax.config.update("jax_default_matmul_precision", "highest")
d = dict(np.load("tests/data/velo/small_32x16/trajectory.npz"))
theta = jax.tree.map(jnp.asarray, fixture_theta("tests/data/velo/small_32x16/theta.npz"))
leaves = ("conv/kernel", "dense/b", "dense/w", "scale", "square/w")
for fast in (False, True):
    opt = VeLO(hidden=32, mixtures=16, fast=fast).optimizer(theta, 20)
    params = {k: jnp.asarray(d["params_init/" + k]) for k in leaves}
    update = jax.jit(lambda g, s, p, l: opt.update(g, s, p, value=l))  # one program, not op by op
    updates, _ = update({k: d["grads/step0/" + k] for k in leaves}, opt.init(params), params, d["loss/step0"])
    for k in leaves:
        want = d["params_after/step0/" + k] - d["params_init/" + k]
        np.testing.assert_allclose(np.asarray(updates[k]), want, rtol=1e-4, atol=1e-7, err_msg=(fast, k))
print("ok")
"""


def test_velo_runs_and_reproduces_the_fixture_where_pallas_cannot_import():
    """In a fresh interpreter whose `import jax.experimental.pallas` fails: VeLO
    imports, and both the reference and the fast path reproduce the reference
    implementation's first update."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
