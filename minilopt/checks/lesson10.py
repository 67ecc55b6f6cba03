"""Checkers for lesson 10: stability and safeguards."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import tasks, train
from . import call, expect_close, fail


def guarded_step_reference(params, d_learned, d_fallback, loss_fn):
    """(updates, took_learned): the learned update if L(θ + Δ_L) ≤ L(θ + Δ_F) (finite), else the
    fallback's if finite, else zeros."""
    def loss_at(d):
        value = float(loss_fn(optax.apply_updates(params, d)))
        finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(d))
        return value if finite and np.isfinite(value) else np.inf

    l_learned, l_fallback = loss_at(d_learned), loss_at(d_fallback)
    if np.isfinite(l_learned) and l_learned <= l_fallback:
        return d_learned, True
    if np.isfinite(l_fallback):
        return d_fallback, False
    return jax.tree.map(jnp.zeros_like, params), False


def _guard_cases():
    loss = lambda p: jnp.sum((p["x"] - 1.0) ** 2)                                   # noqa: E731
    x = {"x": jnp.array([0.0, 0.0])}
    good, poor = {"x": jnp.array([0.9, 1.0])}, {"x": jnp.array([0.1, 0.2])}
    nan = {"x": jnp.array([jnp.nan, 0.5])}
    tie_a, tie_b = {"x": jnp.array([2.0, 1.0])}, {"x": jnp.array([0.0, 1.0])}      # both leave loss 1
    return [(x, good, poor, loss, "the learned step is better"),
            (x, poor, good, loss, "the fallback step is better"),
            (x, tie_a, tie_b, loss, "a tie (equal losses)"),
            (x, nan, poor, loss, "the learned step holds NaN"),
            (x, nan, nan, loss, "both steps hold NaN")]


def check_guarded_step(guarded_step):
    """guarded_step(params, d_learned, d_fallback, loss_fn) -> (updates, took_learned)."""
    hint = ("compare L(params + d_learned) with L(params + d_fallback); a non-finite update or loss counts as +inf; "
            "take the learned update if its loss is <= the fallback's (ties go to the learned step), else the "
            "fallback's if finite, else zeros")
    for params, dl, df, loss, what in _guard_cases():
        want, want_flag = guarded_step_reference(params, dl, df, loss)
        out = call(guarded_step, params, dl, df, loss, what="guarded_step", hint=hint)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            fail(f"guarded_step when {what} must return (updates, took_learned)", want["x"], out, hint)
        got, flag = out
        got_x = got.get("x") if isinstance(got, dict) else None
        if what.startswith("a tie") and not bool(flag):
            fail(f"guarded_step when {what}: took_learned", True, bool(flag),
                 "use <=, not <: at equal losses the guard keeps the learned step")
        if bool(flag) != want_flag:
            fail(f"guarded_step when {what}: took_learned", want_flag, bool(flag), hint)
        if what.startswith("both") and got_x is not None and not np.all(np.isfinite(np.asarray(got_x))):
            fail(f"guarded_step when {what}", want["x"], got_x,
                 "when neither candidate is finite, take no step (zeros): NaN must never reach the parameters")
        expect_close(f"guarded_step when {what}: the update", want["x"], got_x, hint, rtol=1e-6, atol=1e-7)
    print("guarded_step: correct on 5 cases, including ties and NaN")


def max_stable_lr_reference(h, beta):
    """Heavy-ball momentum on ½hx²: x_{t+1} = x_t − η h x_t + β (x_t − x_{t−1}) is stable iff η h < 2(1 + β)."""
    return 2.0 * (1.0 + beta) / h


def check_max_stable_lr(max_stable_lr):
    """max_stable_lr(h, beta) -> the largest stable learning rate of SGD with momentum β at curvature h."""
    hint = ("write the iteration as a 2x2 linear map on (x_t, x_{t-1}); its eigenvalues stay inside the unit "
            "circle while eta*h < 2*(1 + beta); with beta = 0 this is plain SGD's eta < 2/h")
    for h, beta in [(1.0, 0.0), (0.25, 0.0), (4.0, 0.9), (10.0, 0.5)]:
        want = max_stable_lr_reference(h, beta)
        got = call(max_stable_lr, h, beta, what="max_stable_lr", hint=hint)
        if beta > 0 and got is not None and np.ndim(got) == 0 and np.isclose(float(got), 2.0 / h):
            fail(f"max_stable_lr(h={h}, beta={beta}): that is plain SGD's limit", want, got,
                 "momentum widens the stable range: the limit is 2(1 + beta)/h")
        expect_close(f"max_stable_lr(h={h}, beta={beta})", want, got, hint, rtol=1e-6)
    print("max_stable_lr: correct with and without momentum")


def check_rescue(make_rescue, make_shipped=None, steps: int = 300):
    """make_rescue(num_steps) -> an optimizer that, on the quadratic where the shipped optimizer stalls
    (dim 10, condition 100), ends at most a tenth of the shipped optimizer's final loss (or below 1e-8)."""
    hint = ("wrap minilopt.pretrained(num_steps) with minilopt.guard.loss_guarded (fallback e.g. optax.adam(0.1), "
            "loss_fn on a fixed batch), minilopt.guard.nominal, or a hyperoptimized hyper.scaled")
    if make_shipped is None:
        from ..lopt.pretrained import pretrained as make_shipped
    task = tasks.quadratic(dim=10, condition=100.0)
    key = jax.random.key(0)
    opt = call(make_rescue, steps, what="make_rescue", hint=hint)
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        fail("make_rescue(num_steps) must return an optax optimizer", "an optax transformation", opt, hint)
    shipped = train.final_loss(train.fit(task, make_shipped(steps), steps, key).train_loss, -1)
    result = train.fit(task, opt, steps, key)
    final = train.final_loss(result.train_loss, -1 if result.stopped_at is None else result.stopped_at)
    bound = max(float(shipped) / 10, 1e-8)
    if not final <= bound:
        fail(f"final loss on the {steps}-step quadratic (at most a tenth of the shipped optimizer's "
             f"{float(shipped):.3g})", bound, final, hint)
    print(f"make_rescue: final loss {float(final):.3g} against the shipped optimizer's {float(shipped):.3g}")
