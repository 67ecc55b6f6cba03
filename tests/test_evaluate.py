"""The evaluation harness: the speedup measure on curves with known answers, the
summary fractions, the suite's held-out splits, and tuned Adam being the best of its grid."""
import json
import pathlib

import jax
import matplotlib
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

matplotlib.use("Agg")

from minilopt import evaluate as E  # noqa: E402
from minilopt import tasks, train  # noqa: E402

KEY = jax.random.key(0)


def brute_force_reach(curve, window, level):
    """First 1-based step n >= window with mean(curve[n-window:n]) <= level (a plain loop)."""
    for n in range(window, len(curve) + 1):
        if np.mean(curve[n - window:n]) <= level * (1 + 1e-9):   # float sums differ in the last bits
            return n
    return None


# ---------------------------------------------------------------------------
# smoothing and the measure
# ---------------------------------------------------------------------------
def test_smoothing_is_a_trailing_mean_over_full_windows_and_ends_at_final_loss():
    curve = np.random.default_rng(0).uniform(0.5, 2.0, size=95)
    w = E.default_window(len(curve))
    assert w == 10
    s = E.trailing_mean(curve, w)
    assert np.all(np.isnan(s[: w - 1]))
    for i in (w - 1, 40, 94):
        np.testing.assert_allclose(s[i], curve[i - w + 1: i + 1].mean(), rtol=1e-12)
    np.testing.assert_allclose(s[-1], train.final_loss(curve, -1), rtol=1e-12)
    # a NaN (a stopped run) poisons every later window: it never "reaches" anything
    curve[50] = np.nan
    assert np.all(np.isnan(E.trailing_mean(curve, w)[50:]))


def test_learned_optimizer_reaching_a_known_loss_at_a_known_step():
    # Adam's curve is 1/t; the learned optimizer sits at 1 until step 99 and at 1e-4 from step 100 on.
    T, w = 1000, 100
    t = np.arange(1, T + 1)
    adam = 1.0 / t
    lopt = np.where(t < 100, 1.0, 1e-4)
    m = E.speedup(adam, lopt)
    # it ends lower, so it is timed to tuned Adam's final loss (the mean of 1/t over Adam's last 100 steps);
    # its first window of only 1e-4s ends at step 199. Adam, which ends worse, is charged all T steps.
    assert m.target_loss == pytest.approx(np.mean(1.0 / np.arange(901, 1001)), rel=1e-12)
    assert (m.steps_adam, m.steps_lopt) == (T, 199)
    assert m.speedup == pytest.approx(T / 199)
    assert not m.lower_bound and not m.upper_bound
    assert m.final_lopt == pytest.approx(1e-4) and w == E.default_window(T)


def test_reaching_adams_final_loss_at_a_quarter_of_the_budget_scores_four():
    # both settle at 0.5; the learned optimizer's first all-0.5 window ends at T/4, Adam's only at T
    T, w = 1000, 100
    t = np.arange(1, T + 1)
    adam = np.where(t <= T - w, 1.0, 0.5) + 1e-9          # a hair above: the learned one ends lower
    lopt = np.where(t <= T // 4 - w, 1.0, 0.5)
    m = E.speedup(adam, lopt)
    assert m.steps_lopt == T // 4 and m.speedup == pytest.approx(4.0)
    # "within the smoothing window": the drop moved by up to half a window either way keeps the score
    # between T / (T/4 + w/2) and T / (T/4 - w/2)
    for shift in (-w // 2, w // 2):
        got = E.speedup(adam, np.where(t <= T // 4 - w + shift, 1.0, 0.5)).speedup
        assert got == pytest.approx(T / (T // 4 + shift))
        assert T / (T / 4 + w / 2) <= got <= T / (T / 4 - w / 2)


def test_a_learned_optimizer_that_plateaus_above_adam_scores_below_one():
    # the stalled case the old rule got wrong: the learned optimizer drops fast, then sits at 1e-2,
    # while tuned Adam keeps going down to 1e-4. Charging the worse optimizer all T steps gives < 1.
    T = 1000
    t = np.arange(1, T + 1)
    lopt = np.where(t <= 50, 1.0, 1e-2)
    adam = np.maximum(1.0 / t, 1e-4)
    m = E.speedup(adam, lopt)
    assert m.final_lopt > m.final_adam and m.steps_lopt == T
    assert m.steps_adam == brute_force_reach(adam, 100, m.final_lopt)
    assert m.speedup == pytest.approx(m.steps_adam / T) and m.speedup < 1
    # what the old rule (each optimizer's first hit of the worse final loss) would have said: a win
    s_adam, s_lopt = E.trailing_mean(adam, 100), E.trailing_mean(lopt, 100)
    old = E.steps_to_reach(s_adam, m.final_lopt) / E.steps_to_reach(s_lopt, m.final_lopt)
    assert old > 1


def test_equal_curves_score_one():
    noisy = 1.0 / np.arange(1, 301) * (1 + 0.3 * np.random.default_rng(1).uniform(-1, 1, 300))
    for curve in (np.full(300, 0.7), 1.0 / np.arange(1, 301), noisy):
        m = E.speedup(curve, curve.copy())
        assert m.speedup == 1.0 and not m.lower_bound and not m.upper_bound


def test_a_learned_optimizer_that_ends_worse_gets_a_speedup_below_one():
    T, w = 500, 50
    t = np.arange(1, T + 1)
    adam, lopt = 1.0 / t, 2.0 / t
    m = E.speedup(adam, lopt)
    target = np.mean(lopt[-w:])
    assert m.target_loss == pytest.approx(target, rel=1e-12)
    assert m.steps_lopt == T
    assert m.steps_adam == brute_force_reach(adam, w, target)
    assert m.speedup == pytest.approx(m.steps_adam / T) and m.speedup < 0.6


def test_both_bounds_are_flagged_and_divergence_scores_zero():
    T, w = 200, 20
    t = np.arange(1, T + 1)
    adam = 1.0 / t
    # already below tuned Adam's final loss in the first full window: T/w, a lower bound
    m = E.speedup(adam, np.full(T, 1e-3))
    assert m.steps_lopt == w and m.lower_bound and not m.upper_bound and m.speedup == pytest.approx(T / w)
    # Adam already at the (poor) final loss of the learned optimizer in its first window: w/T, an upper bound
    m = E.speedup(adam, np.where(t <= 50, 1.0, 0.9))
    assert (m.steps_adam, m.steps_lopt) == (w, T) and m.upper_bound and not m.lower_bound
    assert m.speedup == pytest.approx(w / T)
    # a diverged learned optimizer: speedup 0, whatever it did before
    lopt = 1e-6 / t
    lopt[150:] = np.nan
    assert E.speedup(adam, lopt).speedup == 0.0
    lopt[150:] = np.inf
    assert E.speedup(adam, lopt).speedup == 0.0
    # every Adam rate diverged: T / w, flagged
    adam_nan = adam.copy()
    adam_nan[10:] = np.nan
    m = E.speedup(adam_nan, 1.0 / t)
    assert m.lower_bound and m.speedup == pytest.approx(T / w)
    with pytest.raises(ValueError, match="same length"):
        E.speedup(adam, adam[:-1])
    with pytest.raises(ValueError, match="window"):
        E.speedup(adam, adam, window=500)


curves = st.lists(st.floats(0.01, 10.0), min_size=30, max_size=60)


@settings(max_examples=40, deadline=None)
@given(curves, st.floats(0.1, 10.0), st.integers(0, 2 ** 31 - 1))
def test_speedup_is_scale_free_bounded_and_agrees_with_the_final_losses(a, scale, seed):
    a = np.asarray(a)
    b = np.random.default_rng(seed).permutation(a) * np.random.default_rng(seed).uniform(0.5, 1.5)
    m = E.speedup(a, b)
    T, w = len(a), E.default_window(len(a))
    # the rule only compares the two curves with each other, so a common scale changes nothing
    assert E.speedup(scale * a, scale * b).speedup == pytest.approx(m.speedup)
    # it stays in [w/T, T/w]; above 1 only if the learned optimizer ends lower, below 1 only if Adam does
    assert w / T - 1e-12 <= m.speedup <= T / w + 1e-12
    assert m.speedup <= 1 or m.final_lopt < m.final_adam
    assert m.speedup >= 1 or m.final_lopt > m.final_adam
    # the count of the optimizer that ends better is its first full window at or below the other's final loss
    if m.final_lopt < m.final_adam:
        assert m.steps_adam == T and m.steps_lopt == brute_force_reach(b, w, m.final_adam)
    elif m.final_lopt > m.final_adam:
        assert m.steps_lopt == T and m.steps_adam == brute_force_reach(a, w, m.final_lopt)


def test_the_interquartile_mean_on_known_values():
    assert E.iqm([1, 2, 3, 4]) == pytest.approx(2.5)               # the middle two
    assert E.iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(3.5)  # the outlier is cut
    # n = 5: the middle 2.5 values are 1.5..3.5 -> half of 1, all of 2, half of 3 ... weights 0.25/1/0.25? no:
    # value i covers [i, i+1); the kept range is [1.25, 3.75): weights 0.75, 1, 0.75 on the values 1, 2, 3
    assert E.iqm([0, 1, 2, 3, 40]) == pytest.approx((0.75 * 1 + 2 + 0.75 * 3) / 2.5)
    assert E.iqm([7.0]) == 7.0 and E.iqm([]) is None


def test_summary_fractions_and_cdf_on_known_speedups():
    s = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0]
    got = E.summarize(s + [0.0])
    assert got == {"tasks": 8, "faster_than_1x": 5 / 8, "at_least_2x": 4 / 8, "at_least_4x": 2 / 8, "median": 1.75,
                   "iqm": pytest.approx(np.mean([1.0, 1.5, 2.0, 3.0])), "diverged": 1}
    x, y = E.cdf_points([4.0, 0.5, 2.0, 1.0])
    np.testing.assert_array_equal(x, [0.5, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(y, [1.0, 0.75, 0.5, 0.25])   # fraction of tasks at least x fast
    assert E.summarize([])["median"] is None


# ---------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------
def test_suite_has_held_out_in_family_tasks_and_labelled_out_of_family_tasks():
    family = tasks.RandomFamily()
    full = E.suite(1000)
    quick = E.suite(300, quick=True)
    assert len(full) >= 20 and {e.group for e in full} == set(E.GROUPS)
    assert sum(e.group == "in-family" for e in full) >= 10 and sum(e.group == "out-of-family" for e in full) >= 10
    assert len({e.name for e in full}) == len(full)
    assert {e.name for e in quick} <= {e.name for e in full} and all(e.steps == 300 for e in quick)
    assert any(e.steps == 4000 for e in full)                     # one task probes a longer horizon
    # every training structure the family can draw (by name: dataset, model, widths, activation, batch)
    train_names = {family.structure(jax.random.PRNGKey(s), "train").name for s in range(300)}
    kinds = set()
    for e in full:
        assert e.task.name not in train_names and e.name not in train_names, e.name
        if e.group == "in-family" and hasattr(e.task, "dataset"):
            kinds.add((e.task.dataset, type(e.task).__name__))
            assert e.task.batch_size in family.batch_sizes["heldout"]
            assert e.task.batch_size not in family.batch_sizes["train"]
            if isinstance(e.task, tasks.MLPTask):
                assert set(e.task.hidden) <= set(family.widths["heldout"])
            lo, hi = family.init_scale_range
            assert lo <= float(e.task.init_scale) <= hi
    assert kinds == {("digits", "MLPTask"), ("mnist1d", "MLPTask"), ("mnist1d", "ConvTask")}
    assert any(isinstance(e.task, tasks.CharLMTask) for e in full)


def test_in_family_labels_follow_the_meta_training_families():
    structure = tasks.RandomFamily().structure(jax.random.PRNGKey(0), "train")   # what `--family random` trains
    only_one = E.suite(100, in_family=(structure,))
    ours = [e for e in only_one if e.group == "in-family"]
    assert len(ours) == 4 and all(e.task.name == structure.name for e in ours)
    assert len({float(e.task.init_scale) for e in ours}) == 4                     # different held-out draws
    assert all(e.group == "out-of-family" for e in only_one if e.name not in {o.name for o in ours})
    assert all(e.group == "out-of-family" for e in E.suite(100, quick=True, in_family=()))
    with pytest.raises(ValueError, match="in_family"):
        E.suite(100, in_family=("digits",))


def test_meta_training_families_come_from_the_recipe():
    assert E.meta_training_families(None) == ("random", "quadratic")
    assert E.meta_training_families({"family": "random", "structures": 8}) == ("random",)
    (one,) = E.meta_training_families({"family": "random", "seed": 3})          # the CLI trains one draw
    assert one.name == tasks.RandomFamily().structure(jax.random.PRNGKey(3)).name
    (digits,) = E.meta_training_families({"family": "digits_mlp", "family_args": {"hidden": [32]}})
    assert digits.name == "digits_mlp_32_relu_b64"


def test_in_family_quadratics_are_held_out_draws():
    qf = tasks.QuadraticFamily()
    quads = [e for e in E.suite(1000) if e.group == "in-family" and isinstance(e.task, tasks.QuadraticTask)]
    assert len(quads) == 2
    for seed, e in enumerate(quads):
        heldout, trained = qf.sample(jax.random.PRNGKey(seed), "heldout"), qf.sample(jax.random.PRNGKey(seed), "train")
        np.testing.assert_array_equal(e.task.curvatures, heldout.curvatures)
        assert not np.allclose(e.task.curvatures, trained.curvatures)


# ---------------------------------------------------------------------------
# the baseline, and one end-to-end run
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run():
    """evaluate() on two tiny tasks, with Adam at 3e-2 standing in for the learned optimizer."""
    entries = [E.SuiteTask("noisy_quadratic_5d", tasks.noisy_quadratic(dim=5, noise=0.3), 60, "out-of-family", "n"),
               E.SuiteTask("quadratic_5d", tasks.quadratic(dim=5), 60, "in-family", "q")]
    return entries, E.evaluate(lambda T: optax.adam(3e-2), entries, KEY, name="adam 3e-2", progress=False)


def test_tuned_adam_is_the_best_of_its_grid_in_independent_runs(small_run):
    entries, results = small_run
    entry, r = entries[0], results["tasks"][0]
    lrs = np.asarray(r["grid"]["lr"])
    assert len(lrs) >= 10 and np.allclose(np.diff(np.log(lrs)), np.log(lrs[1] / lrs[0]))
    assert np.any(np.isclose(lrs, 1e-3))
    # rerun every rate of the grid on its own (not vmapped), from the same init and batches as
    # fit(task, opt, steps, key) uses; the rate is an argument, so this compiles once
    k_init, k_run = jax.random.split(E.task_key(KEY, entry.name))
    params = entry.task.init(k_init)
    one = jax.jit(lambda lr: train.make_run(entry.task, optax.adam(lr), entry.steps, entry.steps)(k_run, params))
    finals = []
    for lr in lrs:
        loss, _, _, stopped = one(np.float32(lr))
        finals.append(float(train.final_loss(np.asarray(loss), int(stopped))))
    finals = np.asarray(finals)
    swept = np.array([np.inf if v is None else v for v in r["grid"]["sweep_final_loss"]])
    np.testing.assert_allclose(swept, finals, rtol=1e-4)
    assert r["adam"]["final_train"] <= finals.min() * (1 + 1e-4)
    assert r["adam"]["lr"] == pytest.approx(lrs[np.argmin(finals)])
    assert r["adam"]["final_train"] <= r["adam_default"]["final_train"]


def test_a_finite_blow_up_is_flagged_apart_from_slow_runs(small_run):
    """Gradient descent at 2.2 on a unit curvature multiplies that coordinate's error by
    -1.2 a step: after 20 steps the loss is ~1000x where it began, yet finite, so the
    measure alone scores it as merely slow (its lower bound w/T). The flag tells it apart."""
    entry = E.SuiteTask("quadratic_2d", tasks.quadratic(dim=2, condition=100.0), 20, "in-family", "")
    row = E.evaluate_task(lambda T: optax.sgd(2.2), entry, KEY)
    assert row["speedup"] == pytest.approx(entry.steps // 10 / entry.steps) and row["speedup"] > 0
    assert row["ended_above_start"] and row["lopt"]["final_train"] > 100 * row["lopt"]["initial_train"]
    s = E.summary([row, *small_run[1]["tasks"]])
    assert s["in-family"]["ended_above_start"] == 1 and s["all"]["ended_above_start"] == 1
    assert not any(r["ended_above_start"] for r in small_run[1]["tasks"])   # Adam 3e-2 does not blow up
    in_family = [line for line in E.summary_table({"summary": s}).splitlines() if "| in-family |" in line]
    assert in_family[0].endswith("| 0 | 1 |")   # diverged 0, ended above its start 1


def test_the_grid_grows_past_an_edge():
    task = tasks.quadratic(dim=4, condition=10.0)
    sweep = E.tuned_adam(task, 40, KEY, np.logspace(-6, -3, 10))
    assert len(sweep.learning_rates) > 10 and sweep.best_lr > 1e-3 * 1.01
    with pytest.raises(ValueError, match="at least 10"):
        E.tuned_adam(task, 40, KEY, [1e-3, 1e-2])


def test_results_are_complete_serialisable_and_consistent(small_run, tmp_path):
    entries, results = small_run
    path = E.save_results(results, tmp_path / "r.json")
    loaded = E.load_results(path)
    assert loaded == json.loads(json.dumps(results))
    for r in loaded["tasks"]:
        assert {"speedup", "lopt", "adam", "adam_default", "curves", "group", "steps", "cosine", "adam_cosine",
                "final_loss_ratio_log10", "eval_loss_ratio_log10"} <= set(r)
        # the ratio is what it says: log10 of the learned over tuned Adam's final training loss
        assert r["final_loss_ratio_log10"] == pytest.approx(np.log10(r["lopt"]["final_train"] / r["adam"]["final_train"]))
        assert len(r["curves"]["adam_cosine"]) == len(r["curves"]["step"])
        assert r["lopt"]["final_eval"] is not None and r["adam"]["final_eval"] is not None
        assert len(r["curves"]["step"]) == len(r["curves"]["lopt"]) == len(r["curves"]["adam"])
    assert loaded["summary"]["all"]["tasks"] == 2 and loaded["summary_cosine"]["all"]["tasks"] == 2
    assert loaded["summary"]["in-family"]["median"] == loaded["tasks"][1]["speedup"]
    table = E.speedup_table(loaded)
    assert all(e.name in table for e in entries) and "| median | IQM | diverged |" in table
    assert E.plot_cdf(loaded) is not None and E.plot_task_curves(loaded, ncols=2) is not None
    # tuned Adam against itself is a speedup of 1 (same curves up to vmap-vs-loop rounding)
    best_lr = loaded["tasks"][1]["adam"]["lr"]
    again = E.evaluate(lambda T: optax.adam(best_lr), entries[1:], KEY, progress=False)
    assert again["tasks"][0]["speedup"] == pytest.approx(1.0, abs=0.05)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluate_pretrained"):
        E.load_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        E.load_results(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="empty"):
        E.evaluate(lambda T: optax.adam(1e-3), [], KEY)
    twice = [E.SuiteTask("q", tasks.quadratic(dim=2), 20, "in-family", "")] * 2
    with pytest.raises(ValueError, match="unique"):
        E.evaluate(lambda T: optax.adam(1e-3), twice, KEY)
    with pytest.raises(ValueError, match="group"):
        E.evaluate_task(lambda T: optax.adam(1e-3), E.SuiteTask("q", tasks.quadratic(dim=2), 20, "train", ""), KEY)
    with pytest.raises(ValueError, match="steps"):
        E.suite(5)


# ---------------------------------------------------------------------------
# pretrained(): the shipped-weights format, errors and the horizon warning
# ---------------------------------------------------------------------------
import warnings  # noqa: E402

from minilopt.lopt import MLPLOpt  # noqa: E402
from minilopt.lopt import pretrained as P  # noqa: E402

LOPT_KW = {"hidden": [8], "step_mult": 3e-3}


@pytest.fixture
def weights(tmp_path):
    lopt = MLPLOpt(**LOPT_KW)
    theta = jax.tree.map(lambda x: x + 0.01, lopt.init(jax.random.key(3)))
    P.save(tmp_path / "w", theta, lopt="MLPLOpt", kwargs=LOPT_KW, horizon=50, note="test weights")
    return tmp_path / "w", lopt, theta


def test_saved_weights_load_and_train(weights):
    path, lopt, theta = weights
    loaded = P.load(path)
    assert loaded.horizon == 50 and loaded.config["note"] == "test weights"
    for a, b in zip(jax.tree.leaves(loaded.theta), jax.tree.leaves(theta)):
        np.testing.assert_array_equal(a, b)
    # the loaded optimizer is the same function as lopt.optimizer(theta, T): same updates
    task = tasks.quadratic(dim=4, condition=10.0)
    params = task.init(jax.random.key(1))
    grads = jax.grad(task.loss)(params, task.batch(jax.random.key(2)))
    ours, ref = P.pretrained(50, path=path / "config.json"), lopt.optimizer(theta, 50)
    u1, _ = ours.update(grads, ours.init(params), params, value=1.0)
    u2, _ = ref.update(grads, ref.init(params), params, value=1.0)
    np.testing.assert_allclose(u1["x"], u2["x"], rtol=1e-6)
    run = train.fit(task, P.pretrained(50, path=path), 50, jax.random.key(1))
    assert run.stopped_at is None and run.train_loss[-5:].mean() < 0.9 * run.train_loss[0]


def test_missing_or_corrupt_weights_name_the_file_and_the_fix(weights, tmp_path):
    path, _, _ = weights
    with pytest.raises(FileNotFoundError, match=r"nowhere.*config\.json is missing.*git checkout"):
        P.pretrained(10, path=tmp_path / "nowhere")
    config = json.loads((path / "config.json").read_text())

    def rewrite(**changes):
        (path / "config.json").write_text(json.dumps({**config, **changes}))

    blob = (path / "theta.npz").read_bytes()
    (path / "theta.npz").write_bytes(blob[: len(blob) // 2])          # a truncated download
    with pytest.raises(ValueError, match=r"theta\.npz is corrupt.*sha256"):
        P.load(path)
    config.pop("sha256")                                            # without a checksum: the npz reader
    rewrite()
    with pytest.raises(ValueError, match=r"theta\.npz.*not a readable \.npz"):
        P.load(path)
    (path / "theta.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"theta\.npz \(named in .*config\.json\) is missing"):
        P.load(path)
    lopt = MLPLOpt(**LOPT_KW)
    nan_theta = jax.tree.map(lambda x: x * np.nan, lopt.init(jax.random.key(0)))
    from minilopt.lopt import checkpoint
    checkpoint.save(path / "theta.npz", nan_theta)
    with pytest.raises(ValueError, match="NaN or inf"):
        P.load(path)
    checkpoint.save(path / "theta.npz", lopt.init(jax.random.key(0)))
    rewrite(kwargs={"hidden": [16]})
    with pytest.raises(ValueError, match=r"does not hold weights for MLPLOpt.*shape"):
        P.load(path)
    rewrite(lopt="Bogus")
    with pytest.raises(ValueError, match="unknown learned optimizer 'Bogus'.*'velo'"):
        P.load(path)
    (path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        P.load(path)


def test_far_beyond_the_trained_horizon_warns_and_the_suggestion_works(weights):
    path, _, _ = weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.pretrained(200, path=path)                     # 4x the horizon of 50: fine
    with pytest.warns(RuntimeWarning, match=r"5\.0x the horizon.*accumulate gradients.*every_k_schedule=5"):
        P.pretrained(250, path=path)
    # what the warning suggests: 250 gradient steps, 50 learned-optimizer steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = optax.MultiSteps(P.pretrained(50, path=path), every_k_schedule=5).gradient_transformation()
    run = train.fit(tasks.quadratic(dim=4, condition=10.0), opt, 250, jax.random.key(1), eval_every=250)
    assert run.stopped_at is None and run.train_loss[-10:].mean() < run.train_loss[0]


def test_export_from_a_cli_run_reads_its_recipe(tmp_path):
    from minilopt.meta.trainer import save_checkpoint
    lopt = MLPLOpt(**LOPT_KW)
    config = {"cli": {"lopt": "mlp", "lopt_args": LOPT_KW, "family": "digits_mlp", "family_args": {}, "seed": 2},
              "horizon": 40, "truncation": 10, "estimator": "pes", "num_particles": 4}
    save_checkpoint(tmp_path / "run" / "checkpoint.npz", {"theta": lopt.init(jax.random.key(1))}, config)
    loaded = P.load(P.export_run(tmp_path / "run", out=tmp_path / "w").parent)
    assert loaded.horizon == 40 and loaded.config["recipe"]["family"] == "digits_mlp"
    assert loaded.config["recipe"]["seed"] == 2 and loaded.config["recipe"]["truncation"] == 10
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"lopt": "mlp", "horizon": 1000}))
    with pytest.raises(ValueError, match="disagrees.*horizon: recipe 1000, run 40"):
        P.export_run(tmp_path / "run", wrong, tmp_path / "w2")


def test_export_from_a_meta_training_checkpoint(tmp_path):
    from minilopt.meta.trainer import save_checkpoint
    lopt = MLPLOpt(**LOPT_KW)
    theta = lopt.init(jax.random.key(5))
    save_checkpoint(tmp_path / "run" / "checkpoint.npz", {"theta": theta, "step": np.int64(7)}, {})
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"lopt": "mlp", "lopt_args": LOPT_KW, "horizon": 60}))
    out = P.export_run(tmp_path / "run", recipe, tmp_path / "shipped")
    loaded = P.load(out.parent)
    assert loaded.horizon == 60 and loaded.config["recipe"]["lopt"] == "mlp"
    np.testing.assert_array_equal(loaded.theta["layer_0"]["w"], theta["layer_0"]["w"])
    # the committed recipe names a learned optimizer and a horizon that export_run understands
    shipped = json.loads((pathlib.Path(__file__).parents[1] / "configs" / "pretrained_mlp.json").read_text())
    assert shipped["lopt"] == "mlp" and isinstance(shipped["horizon"], int)
    assert shipped["horizon"] % shipped["truncation"] == 0
    MLPLOpt(**shipped["lopt_args"])


def test_the_shipped_weights_load_and_train():
    if not (P.DEFAULT_DIR / P.CONFIG).exists():
        pytest.skip(f"no shipped weights in {P.DEFAULT_DIR} yet (the lead commits them after meta-training)")
    weights = P.load()
    task = tasks.digits_mlp(hidden=(32,), batch_size=64)
    run = train.fit(task, P.pretrained(weights.horizon), weights.horizon, jax.random.key(0),
                    eval_every=weights.horizon)
    assert run.stopped_at is None and run.train_loss[-20:].mean() < 0.5 * run.train_loss[:20].mean()


def test_the_cosine_baseline_warms_up_then_decays_to_zero():
    # Adam's step on a constant gradient is lr * schedule(t) after bias correction: read the schedule off it
    steps = 200
    opt = E.adam_with_schedule("cosine", steps)(0.5)
    params = {"x": np.zeros(1, np.float32)}
    state, sizes = opt.init(params), []
    for _ in range(steps):
        updates, state = opt.update({"x": np.ones(1, np.float32)}, state, params)
        sizes.append(-float(updates["x"][0]))
    sizes = np.asarray(sizes)
    warmup = 10                                                 # 5% of 200
    np.testing.assert_allclose(sizes[:warmup], 0.5 * np.arange(warmup) / warmup, rtol=1e-4, atol=1e-7)
    t = np.arange(warmup, steps) - warmup
    np.testing.assert_allclose(sizes[warmup:], 0.5 * 0.5 * (1 + np.cos(np.pi * t / (steps - warmup))), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="schedule"):
        E.adam_with_schedule("linear", steps)


def test_every_shipped_optimizer_loads_by_name_and_trains():
    task = tasks.digits_mlp(hidden=(32,), batch_size=64)
    params = task.init(jax.random.key(1))
    grads = jax.grad(task.loss)(params, task.batch(jax.random.key(2)))
    for name in P.NAMES:
        weights = P.load(P.weights_dir(name))
        assert weights.config["lopt"] in (name, type(weights.lopt).__name__) or name == "mlp"
        run = train.fit(task, P.pretrained(name, 200), 200, jax.random.key(0), eval_every=200)
        assert run.stopped_at is None and run.train_loss[-20:].mean() < 0.5 * run.train_loss[:20].mean(), name
    # the default is the one named DEFAULT_NAME: the same updates
    a, b = P.pretrained(100), P.pretrained(P.DEFAULT_NAME, 100)
    ua, _ = jax.jit(lambda g, p: a.update(g, a.init(p), p, value=1.0))(grads, params)
    ub, _ = jax.jit(lambda g, p: b.update(g, b.init(p), p, value=1.0))(grads, params)
    for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match=r"no shipped learned optimizer is called 'adam'; the names are \['mlp'"):
        P.pretrained("adam", 100)
    with pytest.raises(ValueError, match="a name .* or a path"):
        P.pretrained("velo", 100, path=P.DEFAULT_DIR)
