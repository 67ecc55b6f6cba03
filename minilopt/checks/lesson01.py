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
    hint = "heavy-ball momentum adds the raw gradient to the faded momentum (no 1 - beta factor), and steps along the new m"
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
    hint = ("update m and v first, then divide by (1 - b1**t) and (1 - b2**t) before the step; "
            "eps goes outside the square root")
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
