"""Checkers for lesson 09: does the learned optimizer beat tuned Adam?"""
from __future__ import annotations

import numpy as np

from .. import evaluate
from . import call, expect_close, fail


def _cases():
    """(adam curve, learned curve, what) pairs with different outcomes."""
    t = np.arange(1, 401, dtype=np.float64)
    noise = 1 + 0.2 * np.random.default_rng(9).uniform(-1, 1, size=t.size)
    return [
        (1.0 / t, np.where(t < 100, 1.0, 1e-4), "the learned optimizer drops to 1e-4 at step 100"),
        (np.where(t <= 240, 1.0, 0.5), np.where(t <= 80, 1.0, 0.5), "both drop to 0.5, Adam later"),
        (1.0 / t, 2.0 / t, "the learned optimizer ends worse (2/t against 1/t)"),
        (noise / np.sqrt(t), noise[::-1] / t ** 0.7, "two noisy curves"),
        (1.0 / t, np.maximum(1.0 / t, 0.02), "the learned optimizer stalls at 0.02 while Adam goes on"),
        (1.0 / np.sqrt(t), 1.0 / np.sqrt(t), "the two curves are equal"),
    ]


def check_smooth(smooth):
    """smooth(curve, window) -> trailing mean over full windows, NaN before the first full window."""
    hint = ("S[i] = mean(curve[i-window+1 : i+1]) for i >= window-1, and NaN for the first window-1 entries "
            "(np.lib.stride_tricks.sliding_window_view(curve, window).mean(-1) gives the full-window part)")
    rng = np.random.default_rng(3)
    for n, w in ((30, 5), (57, 6), (12, 1)):
        curve = rng.uniform(0.1, 2.0, size=n)
        got = call(smooth, curve, w, what="smooth", hint=hint)
        want = evaluate.trailing_mean(curve, w)
        if got is None or np.shape(got) != want.shape:
            fail(f"smooth(curve of {n} steps, window {w}) must return {n} values", want, got, hint)
        got = np.asarray(got, np.float64)
        if not np.all(np.isnan(got[: w - 1])):
            fail(f"the first {w - 1} entries (no full window yet) must be NaN", want[: w - 1], got[: w - 1], hint)
        expect_close(f"smoothed curve from step {w} on (window {w})", want[w - 1:], got[w - 1:], hint, rtol=1e-9)
    print("smooth: correct on 3 cases")


def naive_speedup(adam_curve, learned_curve) -> float:
    """THE FLAWED RULE, kept only so the exercises can break it: both optimizers are
    charged their first hit of the worse final loss, n_adam(L*) / n_learned(L*) with
    L* = max(L_adam, L_learned). An optimizer that stalls early reaches its own final
    loss early, and is credited with a win it never had."""
    w = evaluate.default_window(len(adam_curve))
    s_adam, s_learned = evaluate.trailing_mean(adam_curve, w), evaluate.trailing_mean(learned_curve, w)
    target = max(s_adam[-1], s_learned[-1])
    return evaluate.steps_to_reach(s_adam, target) / evaluate.steps_to_reach(s_learned, target)


def check_speedup(speedup):
    """speedup(adam_curve, learned_curve) -> the lesson's measure (= evaluate.speedup(...).speedup)."""
    hint = ("the optimizer that ends worse needed the whole budget T to end where it ended; the better one is "
            "charged the first step its smoothed curve reaches the other's final loss. Learned ends lower: T over "
            "that step; Adam ends lower: that step over T; a tie: 1")
    for adam, lopt, what in _cases():
        m = evaluate.speedup(adam, lopt)
        want = m.speedup
        got = call(speedup, adam, lopt, what="speedup", hint=hint)
        if got is None or np.ndim(got) != 0:
            fail(f"speedup when {what}: return one number", want, got, hint)
        got = float(got)
        if not np.isclose(got, want, rtol=1e-9) and np.isclose(got, naive_speedup(adam, lopt), rtol=1e-9):
            fail(f"speedup when {what}: that is the flawed rule, which charges the worse optimizer its first hit "
                 "of its own final loss", want, got, "charge the optimizer that ends worse the whole budget T")
        if m.final_adam == m.final_lopt and not np.isclose(got, 1.0):
            fail(f"speedup when {what}: both end at the same smoothed loss", want, got,
                 "a tie scores exactly 1: neither optimizer needed less than the whole budget to end there")
        if not np.isclose(want, 1.0) and np.isclose(got, 1 / want, rtol=1e-9):
            fail(f"speedup when {what}: you returned the reciprocal", want, got,
                 "above 1 must mean the learned optimizer is faster")
        expect_close(f"speedup when {what}", want, got, hint, rtol=1e-9)
    print(f"speedup: correct on {len(_cases())} cases")


def losing_tasks_reference(results) -> list[str]:
    """Names of the tasks where the learned optimizer is slower than tuned Adam (speedup < 1), sorted."""
    return sorted(r["name"] for r in results["tasks"] if r["speedup"] < 1)


def _synthetic_results():
    rows = [("a", 3.0), ("b", 0.5), ("c", 1.0), ("d", 0.0), ("e", 0.99)]
    return {"tasks": [{"name": n, "group": "in-family", "speedup": s} for n, s in rows]}


def check_losing_tasks(losing_tasks, results=None):
    """losing_tasks(results) -> sorted list of the names with speedup < 1 (a tie at 1 is not a loss)."""
    hint = ("keep r['name'] for r in results['tasks'] if r['speedup'] < 1, then sort; a speedup of exactly 1 is a "
            "tie, and 0 (a diverged run) is a loss")
    for res, what in ((_synthetic_results(), "five made-up tasks"), (results, "the evaluation above")):
        if res is None:
            continue
        want = losing_tasks_reference(res)
        got = call(losing_tasks, res, what="losing_tasks", hint=hint)
        if got is None or list(got) != want:
            fail(f"losing tasks of {what}", want, got, hint)
    print("losing_tasks: correct")


def _adam_curves():
    t = np.arange(1, 601, dtype=np.float64)
    wiggle = 1 + 0.1 * np.sin(t / 7)
    return [(1.0 / np.sqrt(t[:300]), "Adam's loss 1/sqrt(t), 300 steps"),
            (2.0 * np.exp(-t / 150) * wiggle + 0.01, "a noisy exponential decay to 0.01, 600 steps")]


def check_broken_measure(stalling_curve):
    """stalling_curve(adam_curve) -> a learned optimizer's curve that the flawed rule scores > 1 although it ends
    above Adam: naive_speedup > 1, evaluate.speedup < 1, and a smoothed final loss above Adam's."""
    hint = ("the flawed rule stops the worse optimizer's clock at its first hit of its own final loss: a curve that "
            "gets somewhere early and then stops is credited with having got there early. Pick a level Adam only "
            "reaches late in its run, and reach it within the first window")
    for adam, what in _adam_curves():
        curve = call(stalling_curve, adam, what="stalling_curve", hint=hint)
        if curve is None or np.shape(curve) != np.shape(adam):
            fail(f"stalling_curve({what}) must return a curve of the same length ({len(adam)} steps)",
                 f"{len(adam)} losses", curve, hint)
        curve = np.asarray(curve, np.float64)
        if not np.all(np.isfinite(curve)):
            fail(f"stalling_curve({what}): every loss must be finite (a diverged run scores 0 under both rules)",
                 "finite losses", curve, hint)
        measure = evaluate.speedup(adam, curve)
        if not measure.final_lopt > measure.final_adam:
            fail(f"stalling_curve({what}) must end above Adam: smoothed final losses, learned vs Adam",
                 f"> {measure.final_adam:.4g}", measure.final_lopt,
                 "a curve that ends lower than Adam is not a stalled optimizer, and both rules rightly call it "
                 "faster: the curve must stop above Adam's final loss")
        naive = naive_speedup(adam, curve)
        if not naive > 1:
            fail(f"stalling_curve({what}): the flawed rule must call it faster than Adam", "> 1", naive, hint)
        if not measure.speedup < 1:    # cannot happen when it ends above Adam; kept as the property we teach
            fail(f"stalling_curve({what}): evaluate.speedup must be < 1", "< 1", measure.speedup, hint)
    print("broken: the flawed rule says faster, evaluate.speedup says slower, and the curve ends above Adam "
          f"(on {len(_adam_curves())} Adam curves)")
