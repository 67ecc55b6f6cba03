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
    ]


def check_smooth(smooth):
    """smooth(curve, window) -> trailing mean over full windows, NaN before the first full window."""
    hint = ("S[i] = mean(curve[i-window+1 : i+1]) for i >= window-1, and NaN for the first window-1 entries "
            "(np.lib.stride_tricks.sliding_window_view(curve, window).mean(-1) gives the full-window part)")
    rng = np.random.default_rng(3)
    for n, w in ((30, 5), (57, 6), (12, 1)):
        curve = rng.uniform(0.1, 2.0, size=n)
        got = call(smooth, curve, w, what="smooth", hint=hint)
        want = evaluate.smooth(curve, w)
        if got is None or np.shape(got) != want.shape:
            fail(f"smooth(curve of {n} steps, window {w}) must return {n} values", want, got, hint)
        got = np.asarray(got, np.float64)
        if not np.all(np.isnan(got[: w - 1])):
            fail(f"the first {w - 1} entries (no full window yet) must be NaN", want[: w - 1], got[: w - 1], hint)
        expect_close(f"smoothed curve from step {w} on (window {w})", want[w - 1:], got[w - 1:], hint, rtol=1e-9)
    print("smooth: correct on 3 cases")


def check_speedup(speedup):
    """speedup(adam_curve, learned_curve) -> n_adam / n_learned, the lesson's measure."""
    hint = ("smooth both curves (window ceil(T/10)); L* = max of the two final (last smoothed) losses; n = first "
            "1-based step whose smoothed loss is <= L*; return n_adam / n_learned (> 1 means the learned one is faster)")
    for adam, lopt, what in _cases():
        want = evaluate.speedup(adam, lopt).speedup
        got = call(speedup, adam, lopt, what="speedup", hint=hint)
        if (got is not None and not np.isclose(want, 1.0) and np.ndim(got) == 0
                and np.isclose(float(got), 1 / want)):
            fail(f"speedup when {what}: you returned the reciprocal", want, got,
                 "divide Adam's steps by the learned optimizer's steps, not the other way round")
        expect_close(f"speedup when {what}", want, got, hint, rtol=1e-9)
    print("speedup: correct on 4 cases")


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
