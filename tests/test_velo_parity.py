"""minilopt's VeLO against the reference implementation's recorded updates.

The fixtures (tests/data/velo, see its README) hold the reference's inputs, every
state leaf and its intermediates for 5 updates, in two configurations: H=32/P=16
with the released loss buffer, and H=128/P=64 with the legacy "bugged" loss buffer.

Tolerances:
- state leaves and LSTM state: relative 1e-4, absolute floor 1e-9;
- the per-step update `params_after − params_before`: relative 1e-4, absolute floor
  1e-9 plus one float32 ulp of the parameter. Both sides round `p − Δ` to float32,
  so an update is only defined up to that rounding; one ulp of p is ≤ 6e-8 here,
  while the updates are 1e-7…5e-4, so a wrong update still fails;
- the LSTM state and the intermediates (`debug/`: LSTM inputs, controls, lr_mult…):
  relative 1e-4, absolute 5e-7. These come out of matrix products whose summation
  order is not fixed; the reference itself differs from itself by up to 3.6e-7 on the
  LSTM state (eager against compiled, fixture meta.json), and the README gives the
  intermediates as accurate to about 1e-6.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt.lopt import velo as V
from minilopt.lopt import velo_fast as VF
from helpers import fixture_theta

DATA = os.path.join(os.path.dirname(__file__), "data", "velo")
LEAVES = ("conv/kernel", "dense/b", "dense/w", "scale", "square/w")
NUM_STEPS = 20
LSTM_ATOL = 5e-7  # see the module docstring
# The loss features compare neighbouring averages of the loss, each debiased by
# 1 − decay^t: the difference amplifies the last-ulp difference between XLA's CPU
# and GPU `pow` (the fixtures come from the CPU) to ~4e-6 by step 2 on an H200.
LOSS_FEATURES_ATOL_OFF_CPU = 2e-5
CASES = {
    "small_32x16": dict(hidden=32, mixtures=16, legacy_loss_features=False),
    "default_128x64_legacy_loss": dict(hidden=128, mixtures=64, legacy_loss_features=True),
}


def leaf_tree(fn):
    """The parameter tree {conv: {kernel}, dense: {b, w}, scale, square: {w}}."""
    tree = {}
    for leaf in LEAVES:
        *outer, name = leaf.split("/")
        node = tree
        for o in outer:
            node = node.setdefault(o, {})
        node[name] = fn(leaf)
    return tree


def get(tree, leaf):
    for k in leaf.split("/"):
        tree = tree[k]
    return tree


def reference_state(d, prefix):
    """A reference state (`state_init/` or `state_after/step{t}/`) as a VeLOState."""
    def fac(leaf):
        if d[f"{prefix}fac_rolling/v_row/{leaf}"].shape[0] == 0:
            return {"v_diag": d[f"{prefix}fac_rolling/v_diag/{leaf}"]}
        return {k: d[f"{prefix}fac_rolling/{k}/{leaf}"] for k in ("v_row", "v_col")}

    # the reference keeps the decay axis last; minilopt keeps one array per decay
    return V.VeLOState(
        m=leaf_tree(lambda L: tuple(np.moveaxis(d[f"{prefix}mom_rolling/m/{L}"], -1, 0))),
        rms=leaf_tree(lambda L: d[f"{prefix}rms_rolling/rms/{L}"][..., 0]),
        fac=leaf_tree(fac),
        lstm_hidden=d[f"{prefix}lstm_hidden_state/hidden"],
        lstm_cell=d[f"{prefix}lstm_hidden_state/cell"],
        loss_buffer={k: d[f"{prefix}loss_buffer/{k}"] for k in ("means", "running_min", "decays", "iteration")},
        iteration=d[f"{prefix}iteration"],
    )


def assert_close(what, got, want, rtol=1e-4, atol=1e-9):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    if bad.any():
        i = np.argmax(np.where(bad, err / (atol + rtol * np.abs(want)), 0))
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements off; worst got "
                             f"{got.flat[i]!r}, reference {want.flat[i]!r}")


def assert_state_matches(state, d, prefix, where):
    for leaf in LEAVES:
        assert_close(f"{where} m {leaf}", np.stack(get(state.m, leaf), -1), d[f"{prefix}mom_rolling/m/{leaf}"])
        assert_close(f"{where} rms {leaf}", get(state.rms, leaf)[..., None], d[f"{prefix}rms_rolling/rms/{leaf}"])
        fac = get(state.fac, leaf)
        for k in ("v_row", "v_col", "v_diag"):
            want = d[f"{prefix}fac_rolling/{k}/{leaf}"]
            if want.shape[0] == 0 and want.ndim == 2 and k not in fac:
                continue  # the reference stores (0, 3) for factors that do not apply
            assert_close(f"{where} {k} {leaf}", fac[k], want)
    for k in ("hidden", "cell"):
        assert_close(f"{where} lstm {k}", getattr(state, f"lstm_{k}"),
                     d[f"{prefix}lstm_hidden_state/{k}"], atol=LSTM_ATOL)
    for k in ("means", "running_min", "decays", "iteration"):
        assert_close(f"{where} loss_buffer {k}", state.loss_buffer[k], d[f"{prefix}loss_buffer/{k}"])
    assert int(state.iteration) == int(d[f"{prefix}iteration"]), where


def assert_update_matches(params_before, updates, d, step):
    for leaf in LEAVES:
        before = np.asarray(get(params_before, leaf), np.float32)
        mine = (before + np.asarray(get(updates, leaf), np.float32)).astype(np.float32)
        ref = d[f"params_after/step{step}/{leaf}"]
        ulp = np.spacing(np.maximum(np.abs(ref), np.abs(before)).astype(np.float32))
        err = np.abs((mine - before).astype(np.float64) - (ref - before).astype(np.float64))
        tol = 1e-9 + ulp + 1e-4 * np.abs(ref - before)
        assert (err <= tol).all(), (
            f"step {step} update of {leaf}: worst error {err.max():.3g}, tolerance there "
            f"{tol.flat[np.argmax(err - tol)]:.3g}; mine {(mine - before).ravel()[:4]}, "
            f"reference {(ref - before).ravel()[:4]}")


@pytest.fixture(scope="module", autouse=True)
def float32_products():
    """The reference ran on CPU, in float32; a GPU would multiply the LSTM's matrices
    in TF32 by default (as the reference itself does there), 1e-3 off."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    name = request.param
    d = dict(np.load(os.path.join(DATA, name, "trajectory.npz")))
    theta = jax.tree.map(jnp.asarray, fixture_theta(os.path.join(DATA, name, "theta.npz")))
    return name, CASES[name], d, theta


@pytest.fixture(scope="module", params=["reference", "fast_packed", "fast_per_tensor"])
def debug_step(request):
    """One jitted debug step. "reference": `velo.velo_step`, the math as it reads;
    "fast_packed": `velo_fast.velo_step`, the fixture's small tensors sharing one pass
    of each kind (its default); "fast_per_tensor": every tensor on the fast path's
    large-tensor code, one pass of each kind of its own. All must reproduce the
    reference implementation."""
    if request.param == "reference":
        return jax.jit(lambda th, s, g, p, l: V.velo_step(th, s, g, p, l, NUM_STEPS, debug=True))
    large = 0 if request.param == "fast_per_tensor" else VF.LARGE_TENSOR
    step = jax.jit(lambda th, s, g, p, l: VF.velo_step(th, s, g, p, l, NUM_STEPS, debug=True))

    def run(*args):
        saved, VF.LARGE_TENSOR = VF.LARGE_TENSOR, large  # read while tracing
        try:
            return step(*args)
        finally:
            VF.LARGE_TENSOR = saved
    return run


def test_initial_state_matches_reference(case):
    name, cfg, d, theta = case
    params = leaf_tree(lambda L: d[f"params_init/{L}"])
    state = V.velo_init_state(theta, params, NUM_STEPS, cfg["legacy_loss_features"])
    assert_state_matches(state, d, "state_init/", f"{name} init")


def test_every_step_matches_reference(case, debug_step):
    """Each of the 5 updates, started from the reference's own state before it:
    the update, every state leaf and every recorded intermediate."""
    name, cfg, d, theta = case
    for t in range(5):
        before = leaf_tree(lambda L: d[f"params_init/{L}"] if t == 0 else d[f"params_after/step{t - 1}/{L}"])
        state = reference_state(d, "state_init/" if t == 0 else f"state_after/step{t - 1}/")
        grads = leaf_tree(lambda L: d[f"grads/step{t}/{L}"])
        updates, state, info = debug_step(theta, state, grads, before, d[f"loss/step{t}"])
        where = f"{name} step {t}"
        assert_update_matches(before, updates, d, t)
        assert_state_matches(state, d, f"state_after/step{t}/", where)
        for k in ("rnn_inputs", "loss_features", "fraction_trained", "control_params", "lr_mult"):
            atol = LSTM_ATOL
            if k in ("rnn_inputs", "loss_features") and jax.default_backend() != "cpu":
                atol = LOSS_FEATURES_ATOL_OFF_CPU
            assert_close(f"{where} {k}", info[k], d[f"debug/step{t}/{k}"], atol=atol)
        for leaf in LEAVES:
            assert_close(f"{where} clipped_grads {leaf}", get(info["clipped_grads"], leaf),
                         d[f"debug/step{t}/clipped_grads/{leaf}"])
            assert_close(f"{where} fac_g {leaf}", get(info["fac_g"], leaf),
                         d[f"debug/step{t}/fac_g/{leaf}"])


def test_free_running_optimizer_follows_reference(case):
    """The public optax transformation, from its own init, over all 5 steps.

    Looser than the per-step test: the reference's loss-buffer decay for half-life 20
    is one float32 ulp below exp(−1/20) correctly rounded, and the loss features
    (differences of nearly equal averages) amplify that to ~2e-3 relative by step 3.
    """
    name, cfg, d, theta = case
    velo = V.VeLO(**cfg)
    opt = optax.chain(velo.optimizer(theta, NUM_STEPS))  # inside a chain, as users compose it
    params = leaf_tree(lambda L: jnp.asarray(d[f"params_init/{L}"]))
    state = opt.init(params)
    update = jax.jit(lambda g, s, p, l: opt.update(g, s, p, value=l))
    for t in range(5):
        grads = leaf_tree(lambda L: d[f"grads/step{t}/{L}"])
        updates, state = update(grads, state, params, d[f"loss/step{t}"])
        params = optax.apply_updates(params, updates)
        for leaf in LEAVES:
            ref = d[f"params_after/step{t}/{leaf}"]
            before = d["params_init/" + leaf] if t == 0 else d[f"params_after/step{t - 1}/{leaf}"]
            # total movement since the start, compared with 1e-3 of the last step's size
            assert_close(f"{name} step {t} params {leaf}", get(params, leaf), ref,
                         rtol=0, atol=1e-3 * np.abs(ref - before).max() + 2 * np.spacing(np.float32(1)))


def test_legacy_lstm_state_is_not_carried():
    """carry_lstm_state=False keeps the initial LSTM state: step 0 is identical, and
    the state after any step is still the learned initial state."""
    d = dict(np.load(os.path.join(DATA, "small_32x16", "trajectory.npz")))
    theta = jax.tree.map(jnp.asarray, fixture_theta(os.path.join(DATA, "small_32x16", "theta.npz")))
    params0 = leaf_tree(lambda L: jnp.asarray(d[f"params_init/{L}"]))
    results = {}
    for carry in (True, False):
        opt = V.VeLO(**CASES["small_32x16"], carry_lstm_state=carry).optimizer(theta, NUM_STEPS)
        update = jax.jit(lambda g, s, p, loss, opt=opt: opt.update(g, s, p, value=loss))
        state, params, ups = opt.init(params0), params0, []
        for t in range(2):
            u, state = update(leaf_tree(lambda L: d[f"grads/step{t}/{L}"]), state, params, d[f"loss/step{t}"])
            params = optax.apply_updates(params, u)
            ups.append(u)
        results[carry] = ups, state
    (ups_new, carried), (ups_old, legacy) = results[True], results[False]
    assert_close("step 0 update, legacy vs carried", get(ups_old[0], "dense/w"), get(ups_new[0], "dense/w"))
    init_h = np.broadcast_to(np.asarray(theta["lstm_init_state"]["hidden"]), legacy.lstm_hidden.shape)
    np.testing.assert_array_equal(legacy.lstm_hidden, init_h)
    assert not np.allclose(carried.lstm_hidden, init_h)
    assert not np.allclose(get(ups_old[1], "dense/w"), get(ups_new[1], "dense/w"), rtol=1e-6)


# ---------------------------------------------------------------------------
# The optax interface and bad input (a tiny random VeLO, H=8, P=4)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    velo = V.VeLO(hidden=8, mixtures=4)
    return velo, velo.init(jax.random.PRNGKey(0))


def test_theta_layout_and_count_follow_the_spec(tiny):
    velo, theta = tiny
    H, P = 8, 4
    assert sum(x.size for x in jax.tree.leaves(theta)) == 8 * H * H + (100 + P) * H + 160 * P + 1
    assert theta["rnn_params"]["rnn/linear"]["w"].shape == (2 * H, 4 * H)
    assert theta["ff_mod_stack"]["~"]["w0__13"].shape == (P, 3, 4)
    assert not np.any(theta["lstm_init_state"]["hidden"]) and not np.any(theta["ff_mod_stack"]["~"]["b0"])
    w = np.asarray(theta["rnn_params"]["linear_1"]["w"])  # TN(0, 1/fan_in), fan_in 30
    assert 0.7 < w.std() * np.sqrt(30) < 1.3


def test_bad_arguments_are_clear_errors(tiny):
    velo, theta = tiny
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            velo.optimizer(theta, bad)
    with pytest.raises(ValueError, match=r"theta\[ff_mod_stack/~/w0__0\] has shape \(4, 1, 4\), expected \(6, 1, 4\)"):
        V.VeLO(hidden=8, mixtures=6).optimizer(theta, 10)
    opt = velo.optimizer(theta, 10)
    params = {"w": jnp.ones((3, 2)), "count": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"\['count'\].*int32"):
        opt.init(params)
    params = {"w": jnp.ones((3, 2))}
    state = opt.init(params)
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(params, state, params)
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.update(params, state, value=1.0)


def test_non_finite_inputs_give_finite_updates_and_dtypes_are_kept(tiny):
    """Gradients with NaN, ±inf and 1e30 and a NaN loss: finite updates (the
    gradient clip and the loss buffer guard). bfloat16 parameters stay bfloat16."""
    velo, theta = tiny
    opt = optax.chain(velo.optimizer(theta, 50), optax.clip_by_global_norm(1.0))
    params = {"conv": jnp.ones((2, 3, 3, 2), jnp.bfloat16), "b": jnp.zeros((3,)), "s": jnp.float32(0.5),
              "w": jnp.linspace(-1, 1, 12).reshape(4, 3)}
    bad = {"conv": jnp.full((2, 3, 3, 2), jnp.nan, jnp.bfloat16), "b": jnp.asarray([jnp.inf, -jnp.inf, 1e30]),
           "s": jnp.float32(jnp.nan), "w": jnp.full((4, 3), 1e30)}
    losses = jnp.asarray([jnp.nan, 1.0, jnp.inf, 2.0])

    @jax.jit
    def run(params):
        def step(carry, loss):
            params, state = carry
            updates, state = opt.update(bad, state, params, value=loss)
            return (optax.apply_updates(params, updates), state), updates
        return jax.lax.scan(step, (params, opt.init(params)), losses)

    (final, state), updates = run(params)
    for tree in (final, updates):
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
            assert np.isfinite(np.asarray(x, np.float32)).all(), jax.tree_util.keystr(path)
    assert final["conv"].dtype == jnp.bfloat16 and updates["conv"].dtype == jnp.bfloat16
    assert final["w"].dtype == jnp.float32
    assert not np.allclose(final["w"], params["w"])  # it did move
    assert np.isfinite(np.asarray(state[0].loss_buffer["means"])).all()


def test_velo_trains_inside_fit(tiny):
    from minilopt import tasks, train

    velo, theta = tiny
    task = tasks.quadratic(dim=6)
    result = train.fit(task, velo.optimizer(theta, 30), 30, jax.random.PRNGKey(0), eval_every=30)  # one scan
    assert result.train_loss.shape == (30,) and result.stopped_at is None
    assert np.isfinite(result.train_loss).all()
    start = task.init(jax.random.PRNGKey(0))
    assert not np.allclose(jax.tree.leaves(result.params)[0], jax.tree.leaves(start)[0])


def test_packing_round_trips_and_pads_with_zeros():
    """Small tensors share packed (rows, 128) arrays: each starts on a row of its own,
    padded with zeros, and unpacks to itself."""
    shapes = [(), (128,), (129,), (3, 5), (2, 1, 4, 3), (1,)]
    arrays = [jnp.arange(1, 1 + int(np.prod(s)), dtype=jnp.float32).reshape(s) for s in shapes]
    layout = VF.packing(shapes)
    packed = VF.pack(arrays, layout)
    assert packed.shape == (1 + 1 + 2 + 1 + 1 + 1, VF.PACK_ROW)
    assert list(layout.starts) == [0, 1, 2, 4, 5, 6]
    assert float(packed.sum()) == sum(float(a.sum()) for a in arrays)  # the padding adds nothing
    assert float(packed[3, 0]) == 129.0 and float(packed[3, 1]) == 0.0  # (129,): a row and one element
    for a, b in zip(VF.unpack(packed, layout), arrays):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_take_rows_is_indexing():
    w = jnp.arange(120.0).reshape(30, 4)
    for rows in (VF.ROW_CHANNELS, VF.COL_CHANNELS, [k for k in range(30) if k not in VF.ROW_COL_CHANNELS], [7]):
        np.testing.assert_array_equal(np.asarray(VF.take_rows(w, rows)), np.asarray(w)[np.asarray(rows)])
