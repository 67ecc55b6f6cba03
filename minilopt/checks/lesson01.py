"""Checkers for lesson 01: hand-designed optimizers and the cost of tuning."""
from __future__ import annotations

import numpy as np

from . import call, expect_close, fail

_RNG = np.random.default_rng(1)


def momentum_step_reference(g, m, lr, beta):
    """Heavy-ball momentum (optax.sgd with momentum): m ← β·m + g;  Δ = −lr·m."""
    m = beta * m + g
    return -lr * m, m


def adam_step_reference(g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step at step count t (1 for the first step):
    m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  Δ = −lr · m̂ / (sqrt(v̂) + ε),
    with the bias corrections m̂ = m / (1−β1^t) and v̂ = v / (1−β2^t)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return -lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def best_lr_reference(learning_rates, final_losses):
    """The rate with the lowest final loss, ignoring runs whose loss is NaN or inf."""
    losses = np.asarray(final_losses, dtype=np.float64)
    ok = np.isfinite(losses)
    if not ok.any():
        raise ValueError("every run diverged")
    return float(np.asarray(learning_rates)[ok][np.argmin(losses[ok])])


def check_momentum_step(momentum_step):
    """momentum_step(g, m, lr, beta) -> (delta, new_m)."""
    hint = ("heavy-ball momentum is a fading sum, not an average: the whole gradient joins the faded momentum, "
            "and the step follows the new momentum")
    for case in range(3):
        g, m = _RNG.normal(size=5), _RNG.normal(size=5)
        lr, beta = [0.1, 0.01, 1.0][case], [0.9, 0.5, 0.0][case]
        got = call(momentum_step, g, m, lr, beta, what="momentum_step", hint=hint)
        if not (isinstance(got, tuple) and len(got) == 2):
            fail("momentum_step must return (delta, new_m)", "a pair of arrays", got, hint)
        want = momentum_step_reference(g, m, lr, beta)
        expect_close(f"new momentum (case {case}, lr={lr}, beta={beta})", want[1], got[1], hint)
        expect_close(f"step delta (case {case}, lr={lr}, beta={beta})", want[0], got[0], hint)
    print("momentum_step: correct on 3 cases")


def check_adam_step(adam_step):
    """adam_step(g, m, v, t, lr) -> (delta, new_m, new_v), with t = 1 at the first step."""
    hint = ("update m and v first; both start at zero and are biased low early on, so correct each by its "
            "decay's power of t before the step; eps is added after the square root")
    for t in (1, 2, 10):
        g, m, v = _RNG.normal(size=4), 0.1 * _RNG.normal(size=4), _RNG.uniform(0.01, 0.1, size=4)
        got = call(adam_step, g, m, v, t, 1e-3, what="adam_step", hint=hint)
        if not (isinstance(got, tuple) and len(got) == 3):
            fail("adam_step must return (delta, new_m, new_v)", "a triple of arrays", got, hint)
        want = adam_step_reference(g, m, v, t, 1e-3)
        expect_close(f"new m at t={t}", want[1], got[1], hint)
        expect_close(f"new v at t={t}", want[2], got[2], hint)
        expect_close(f"step delta at t={t}", want[0], got[0], hint, rtol=1e-4, atol=1e-9)
    print("adam_step: correct at t = 1, 2 and 10")


def check_best_lr(best_lr):
    """best_lr(learning_rates, final_losses) -> the best rate, skipping diverged runs."""
    hint = "diverged runs have NaN or inf final loss: mask them with np.isfinite before taking the argmin"
    cases = [
        ([1e-3, 1e-2, 1e-1], [0.5, 0.1, 0.3]),
        ([1e-3, 1e-2, 1e-1, 1.0], [0.5, 0.2, np.nan, 0.1]),
        ([1e-4, 1e-3, 1.0, 10.0], [np.nan, 0.9, np.inf, 0.4]),
    ]
    for lrs, losses in cases:
        got = call(best_lr, np.array(lrs), np.array(losses), what="best_lr", hint=hint)
        expect_close(f"best rate for losses {losses}", best_lr_reference(lrs, losses), got, hint)
    print("best_lr: correct, including runs that diverged")


def check_best_lr_on_sweep(best_lr, sweep):
    """best_lr on a real `train.lr_sweep` result, fed each run's last training loss.

    A run that hit a non-finite loss was stopped and its later losses are NaN, so the
    last losses hold NaN exactly where a run blew up. `np.argmin` returns the index of
    the first NaN, so a plain argmin picks a diverged rate here. Returns the learner's
    choice."""
    lrs = np.asarray(sweep.learning_rates)
    last = np.asarray(sweep.train_loss)[:, -1]
    if np.isfinite(last).all():
        raise ValueError("this sweep has no diverged run, so it cannot test the NaN handling: "
                         "extend learning_rates past the point where training blows up")
    hint = ("the runs that blew up end with a NaN loss, and np.argmin treats NaN as the minimum: "
            "compare only the runs whose loss is finite")
    got = call(best_lr, lrs, last, what="best_lr on the sweep", hint=hint)
    diverged = int((~np.isfinite(last)).sum())
    expect_close(f"best rate of the sweep ({diverged} of {len(lrs)} runs ended in NaN)",
                 best_lr_reference(lrs, last), got, hint)
    print(f"best_lr on the sweep: {float(got):.3g}, skipping the {diverged} runs that diverged")
    return float(got)


# ---- Investigative exercise: the edge of stability -------------------------------------------------

EDGE_RATIO = 1.2   # the bracket must pin the edge down to within 20%


def run_outcomes(task, make_optimizer, learning_rates, steps, key):
    """[(first loss, last loss, diverged)] of one run per rate, as `train.fit(task, make_optimizer(lr),
    steps, key)` would train it (`train.lr_sweep`: the same init and batches, one compiled program).

    A run diverged if it stopped on a non-finite value or ended above the loss it started from:
    a loss that grows is diverging, long before it overflows to NaN."""
    from .. import train
    sweep = train.lr_sweep(task, make_optimizer, learning_rates, steps, key)
    out = []
    for losses, stopped in zip(sweep.train_loss, sweep.stopped_at):
        first, last = float(losses[0]), float(losses[-1])
        out.append((first, last, bool(stopped >= 0) or not np.isfinite(last) or last > first))
    return out


def edge_cases():
    """(task, make_optimizer, description, the edge in closed form): SGD and heavy-ball momentum on the
    lesson's quadratic, whose largest curvature is h = 1. Gradient descent on ½hx² multiplies x by
    (1 − lr·h) each step, so it diverges for lr > 2/h; with momentum β the limit is 2(1 + β)/h."""
    import optax
    from .. import tasks
    task = tasks.quadratic()
    return [(task, optax.sgd, "SGD", 2.0),
            (task, lambda lr: optax.sgd(lr, momentum=0.9), "SGD with momentum 0.9", 3.8)]


def check_edge_of_stability(edge_of_stability, steps: int = 100):
    """edge_of_stability(task, make_optimizer, steps, key) -> (stable_lr, unstable_lr): two rates within
    20% of each other, where `train.fit` trains (the loss ends below where it started) at the first and
    diverges at the second. Checked by running both, not against a formula."""
    import jax
    hint = ("the boundary between 'trains' and 'diverges' is one rate: bracket it with a rate on each side, "
            "then shrink the bracket (a fine sweep with train.lr_sweep, or bisection), judging each run by "
            "whether its loss ended below where it started")
    key = jax.random.key(0)
    for task, make, what, closed_form in edge_cases():
        got = call(edge_of_stability, task, make, steps, key, what="edge_of_stability", hint=hint)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            fail(f"edge_of_stability for {what} must return (stable_lr, unstable_lr)", "two learning rates", got,
                 hint)
        try:
            stable, unstable = float(got[0]), float(got[1])
        except (TypeError, ValueError):
            fail(f"edge_of_stability for {what}: the rates must be numbers", "two positive numbers", got, hint)
        if not (np.isfinite(stable) and np.isfinite(unstable) and 0 < stable < unstable):
            fail(f"edge_of_stability for {what}: need 0 < stable_lr < unstable_lr", "stable_lr < unstable_lr",
                 got, "the first rate is the one that trains, the second, larger one diverges")
        if unstable / stable > EDGE_RATIO:
            fail(f"edge_of_stability for {what}: the bracket ({stable:.3g}, {unstable:.3g}) spans a factor "
                 f"{unstable / stable:.2f}", f"a factor <= {EDGE_RATIO}", unstable / stable,
                 "narrow it: try rates between your two, keeping one on each side of the edge")
        (first, last, diverged), (first_u, last_u, diverged_u) = run_outcomes(task, make, [stable, unstable],
                                                                              steps, key)
        if diverged:
            grew = np.isfinite(last)
            fail(f"{what} at your stable rate {stable:.4g} diverged: its loss went from {first:.3g} to "
                 f"{last:.3g} in {steps} steps", "a final loss below the first", last,
                 "a run diverges as soon as its loss ends above where it started, long before it overflows "
                 "to NaN: judge each run by its last loss against its first, not by NaN alone" if grew else hint)
        if not diverged_u:
            fail(f"{what} at your unstable rate {unstable:.4g} trained: its loss went from {first_u:.3g} to "
                 f"{last_u:.3g} in {steps} steps", "a final loss above the first, or NaN", last_u, hint)
        print(f"edge_of_stability for {what}: trains at {stable:.4g}, diverges at {unstable:.4g} "
              f"(the closed form for the largest curvature says {closed_form:g})")
