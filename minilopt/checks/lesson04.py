"""Checkers for lesson 04: a per-parameter MLP learned optimizer, built from scratch.

The references are `minilopt.lopt.mlp.MLPLOpt` and `minilopt.lopt.features`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..lopt import features
from ..lopt.mlp import MLPLOpt, MLPLOptState
from . import call, expect_close, fail

_RNG = np.random.default_rng(4)


def normalise_reference(x, eps=1e-5):
    """Each channel (last axis) over all the tensor's elements: x · rsqrt(eps + mean(x²))."""
    return np.asarray(MLPLOpt(eps=eps).normalise(jnp.asarray(x, jnp.float32)))


def time_features_reference(t, num_steps, fractions):
    """tanh(10·(t/T − τ)) for each τ in `fractions`."""
    return np.asarray(features.fraction_embedding(t, num_steps, fractions))


def step_reference(d, mu, exp_mult, step_mult):
    """Δ = d · exp(μ·c1) · c2 with c1 = exp_mult and c2 = step_mult."""
    return np.asarray(MLPLOpt(exp_mult=exp_mult, step_mult=step_mult).step(jnp.asarray(d), jnp.asarray(mu)))


def tensor_update_reference(lopt: MLPLOpt, theta, g, p, m, v, t, num_steps):
    """One tensor's (update, new_m, new_v), from the package's optax transformation."""
    opt = lopt.optimizer(theta, num_steps)
    state = MLPLOptState(jnp.asarray(t, jnp.int32), {"x": jnp.asarray(m)}, {"x": jnp.asarray(v)})
    updates, state = opt.update({"x": jnp.asarray(g)}, state, {"x": jnp.asarray(p)})
    return np.asarray(updates["x"]), np.asarray(state.momentum["x"]), np.asarray(state.rms["x"])


def check_normalise(normalise):
    """normalise(x) -> x with each channel (last axis) scaled to unit mean square over the tensor."""
    hint = ("one scale per channel: the mean square over every axis except the last, kept so that it broadcasts "
            "back over x; eps goes inside the square root")
    for shape in [(4, 3), (2, 5, 6), (7,)]:
        x = _RNG.normal(size=shape) * _RNG.uniform(0.1, 10.0, size=shape[-1])
        got = call(normalise, x, what="normalise", hint=hint)
        expect_close(f"normalise of an array of shape {shape}", normalise_reference(x), got, hint,
                     rtol=1e-4, atol=1e-6)
    print("normalise: correct on 3 shapes")


def check_time_features(time_features):
    """time_features(t, num_steps, fractions) -> tanh(10·(t/T − τ)) for each τ."""
    hint = ("each feature is a soft step that flips as the training fraction t / num_steps passes its tau, "
            "made sharp by the factor 10 inside the tanh")
    fractions = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    for t, num_steps in [(0, 100), (50, 100), (100, 100), (3, 7)]:
        got = call(time_features, t, num_steps, fractions, what="time_features", hint=hint)
        expect_close(f"time features at t={t}, T={num_steps}", time_features_reference(t, num_steps, fractions),
                     got, hint, rtol=1e-4, atol=1e-6)
    print("time_features: correct at the start, the middle and the end of training")


def check_step(step):
    """step(d, mu, exp_mult, step_mult) -> Δ = d · exp(μ·exp_mult) · step_mult."""
    hint = ("the magnitude mu is scaled by exp_mult before it goes through the exponential, and step_mult "
            "scales the whole step")
    for exp_mult, step_mult in [(1e-3, 1e-3), (1.0, 0.1), (0.5, 2.0)]:
        d, mu = _RNG.normal(size=6), 3.0 * _RNG.normal(size=6)
        got = call(step, d, mu, exp_mult, step_mult, what="step", hint=hint)
        expect_close(f"step with exp_mult={exp_mult}, step_mult={step_mult}",
                     step_reference(d, mu, exp_mult, step_mult), got, hint, rtol=1e-4, atol=1e-9)
    print("step: correct for 3 settings of (c1, c2)")


def check_tensor_update(tensor_update):
    """tensor_update(lopt, theta, g, p, m, v, t, num_steps) -> (update, new_m, new_v) for one tensor,
    exactly what `lopt.optimizer(theta, num_steps).update` does to that tensor."""
    hint = ("update m and v with g FIRST, build the channels from the new m and v, normalise them per tensor, "
            "append the time features, run the network, and return MINUS the step")
    lopt = MLPLOpt(step_mult=0.1, exp_mult=0.5)
    theta = lopt.init(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(theta)
    theta = treedef.unflatten([x + 0.2 * _RNG.normal(size=x.shape).astype(np.float32) for x in leaves])
    for shape, t in [((3, 4), 0), ((5,), 7), ((2, 2, 3), 19)]:
        g, p = _RNG.normal(size=shape).astype(np.float32), _RNG.normal(size=shape).astype(np.float32)
        m = 0.3 * _RNG.normal(size=shape + (4,)).astype(np.float32)
        v = _RNG.uniform(0.01, 1.0, size=shape + (1,)).astype(np.float32)
        got = call(tensor_update, lopt, theta, g, p, m, v, t, 20, what="tensor_update", hint=hint)
        if not (isinstance(got, tuple) and len(got) == 3):
            fail("tensor_update must return (update, new_m, new_v)", "a triple of arrays", got, hint)
        want = tensor_update_reference(lopt, theta, g, p, m, v, t, 20)
        expect_close(f"new momentum (shape {shape}, t={t})", want[1], got[1], hint, rtol=1e-5, atol=1e-7)
        expect_close(f"new rms (shape {shape}, t={t})", want[2], got[2], hint, rtol=1e-5, atol=1e-7)
        expect_close(f"update (shape {shape}, t={t})", want[0], got[0], hint, rtol=1e-4, atol=1e-7)
    print("tensor_update: matches MLPLOpt on 3 tensors")


# ---- Investigative exercise: make the learned optimizer fail ---------------------------------------

FAILED, SOLVED = 0.5, 1e-2   # loss after the run over the loss before: "failed" above, "solved" below


def failure_optimizers(num_steps: int):
    """(name, optimizer): the meta-trained MLP optimizer that ships with minilopt (this lesson's MLPLOpt,
    meta-trained for 1000-step runs), and an untrained MLPLOpt (normalised momentum, step_mult 0.1)."""
    from ..lopt.pretrained import pretrained
    lopt = MLPLOpt(step_mult=0.1)
    return [("the shipped meta-trained MLP optimizer", pretrained("mlp", num_steps)),
            ("MLPLOpt at its initialisation", lopt.optimizer(lopt.init(jax.random.key(0)), num_steps))]


def loss_ratio(task, opt, steps: int, key) -> float:
    """L_last / L_first of `train.fit(task, opt, steps, key)`; inf when the run blew up."""
    import warnings

    from .. import train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = train.fit(task, opt, steps, key)
    ratio = float(result.train_loss[-1] / result.train_loss[0])
    return ratio if result.stopped_at is None and np.isfinite(ratio) else float("inf")


def check_failing_task(failing_task, steps: int = 100):
    """failing_task() -> a quadratic task (`tasks.quadratic(...)`) on which the learned optimizers of
    `failure_optimizers` fail (loss after `steps` steps above half the first loss), while plain SGD at
    lr = 1 / (largest curvature) solves it (below 1 % of the first): the task is easy, the learned
    optimizer is blind to what makes it so. Checked by running all three, not by the task's settings."""
    import optax

    from ..tasks.quadratic import QuadraticTask
    hint = ("look at what the learned optimizer can and cannot see: its channels are normalised over the tensor, "
            "so one thing about the gradient never reaches the network. Which quadratic needs exactly that thing "
            "(try the settings of tasks.quadratic, one at a time)?")
    task = call(failing_task, what="failing_task", hint=hint)
    if not isinstance(task, QuadraticTask):
        fail("failing_task() must return a quadratic, e.g. tasks.quadratic(...), so that SGD can vouch that it is "
             "easy", "a QuadraticTask", None if task is None else type(task).__name__, hint)
    key = jax.random.key(0)
    h_max = float(jnp.max(task.curvatures))
    sgd = loss_ratio(task, optax.sgd(1.0 / h_max), steps, key)
    if not sgd <= SOLVED:
        fail(f"plain SGD at lr = 1/h_max = {1 / h_max:.3g} does not solve your task either: its loss only fell to "
             f"{sgd:.2g} of the first in {steps} steps", f"<= {SOLVED:g}", sgd,
             "a task that defeats every optimizer says nothing about the learned one (a high condition number or "
             "noise slows SGD too): find a task that SGD solves easily and the learned optimizer cannot")
    for name, opt in failure_optimizers(steps):
        ratio = loss_ratio(task, opt, steps, key)
        if not ratio > FAILED:
            fail(f"{name} solved your task: its loss fell to {ratio:.2g} of the first in {steps} steps",
                 f"> {FAILED} (the loss at most halved)", ratio, hint)
        print(f"failing_task: {name} ends at {ratio:.2g} of the first loss")
    print(f"failing_task: plain SGD (lr = 1/h_max) ends at {sgd:.1e} of it: the task is easy, the learned "
          "optimizers fail")
