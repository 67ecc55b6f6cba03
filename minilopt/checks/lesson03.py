"""Checkers for lesson 03: stacking hyperoptimizers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import ExerciseError, call, expect_close, fail
from .. import hyper

_RNG = np.random.default_rng(3)


def level2_hypergradient_reference(g_now, g_prev, g_prev2):
    """∂f_t/∂κ in SGD/SGD/SGD: κ moved α_{t−1} by κ·⟨g_{t−1}, g_{t−2}⟩, and α moves f_t by
    −⟨g_t, g_{t−1}⟩ per unit, so ∂f_t/∂κ = −⟨g_t, g_{t−1}⟩·⟨g_{t−1}, g_{t−2}⟩."""
    return -float(np.vdot(g_now, g_prev) * np.vdot(g_prev, g_prev2))


def tower_reference(alpha0, height):
    """An SGD tower of `height` hyper-levels over plain SGD, every level starting at α0."""
    return hyper.stack(*[hyper.sgd(alpha0) for _ in range(height + 1)])


def hyper_adam_reference(lr, hyper_lr):
    """optax's Adam whose learning rate is learned by optax.sgd(hyper_lr)."""
    return hyper.hyperoptimize(optax.inject_hyperparams(optax.adam)(learning_rate=lr), by=optax.sgd(hyper_lr))


def _feed(opt, grads):
    """Updates and readable hyperparameters after feeding `grads` (T, d) to `opt`."""
    state = opt.init(jnp.zeros_like(grads[0]))
    updates, levels = [], []
    for g in grads:
        u, state = opt.update(g, state, jnp.zeros_like(g))
        updates.append(np.asarray(u))
        levels.append(jax.tree.map(np.asarray, hyper.hyperparams(state)))
    return np.array(updates), levels


def _is_optimizer(x) -> bool:
    return hasattr(x, "init") and hasattr(x, "update")


def check_level2_hypergradient(level2_hypergradient):
    """level2_hypergradient(g_now, g_prev, g_prev2) -> ∂f_t/∂κ, a number."""
    hint = ("kappa acts through alpha: chain lesson 02's hypergradient of f_t in alpha with how much alpha moved "
            "per unit of kappa one step earlier; mind the sign")
    for case in range(3):
        g = [_RNG.normal(size=4) for _ in range(3)]
        got = call(level2_hypergradient, *g, what="level2_hypergradient", hint=hint)
        expect_close(f"level-2 hypergradient (case {case})", level2_hypergradient_reference(*g), got, hint)
    print("level2_hypergradient: correct on 3 cases")


def check_tower(tower):
    """tower(alpha0, height) -> an optax optimizer: SGD with `height` SGD levels above it."""
    hint = ("height counts the hyper-levels above the weights' SGD, so a tower of height h has h + 1 "
            "levels, every one an SGD starting at alpha0, listed bottom-up")
    grads = jnp.asarray(_RNG.normal(size=(6, 3)) + 0.3)
    for alpha0, height in [(0.1, 0), (0.05, 1), (0.02, 3)]:
        opt = call(tower, alpha0, height, what="tower", hint=hint)
        if not _is_optimizer(opt):
            fail(f"tower({alpha0}, {height}) must return an optax optimizer", "an object with init and update",
                 opt, hint)
        want_u, want_levels = _feed(tower_reference(alpha0, height), grads)
        got_u, got_levels = _feed(opt, grads)
        expect_close(f"updates of tower({alpha0}, {height}) on 6 gradients", want_u, got_u, hint)
        for k, (w, g) in enumerate(zip(want_levels[-1], got_levels[-1]), start=1):
            expect_close(f"level {k}'s alpha after 6 steps of tower({alpha0}, {height})", w.get("alpha"),
                         g.get("alpha"), hint)
    print("tower: correct for heights 0, 1 and 3")


def check_hyper_adam(hyper_adam):
    """hyper_adam(lr, hyper_lr) -> optax's Adam with its learning rate learned by optax.sgd(hyper_lr)."""
    hint = ("hyperoptimize can only learn what lives in the optimizer's state: build Adam through "
            "optax.inject_hyperparams, and let an SGD of rate hyper_lr learn its learning rate")
    grads = jnp.asarray(_RNG.normal(size=(6, 3)) + 0.3)
    for lr, hyper_lr in [(1e-2, 1e-3), (1e-3, 1e-2)]:
        opt = call(hyper_adam, lr, hyper_lr, what="hyper_adam", hint=hint)
        if not _is_optimizer(opt):
            fail("hyper_adam must return an optax optimizer", "an object with init and update", opt, hint)
        try:
            got_u, got_levels = _feed(opt, grads)
        except ValueError as e:
            raise ExerciseError(f"hyper_adam({lr}, {hyper_lr}) could not run: {e}\n  hint: {hint}") from None
        want_u, want_levels = _feed(hyper_adam_reference(lr, hyper_lr), grads)
        got_lr = [levels[0].get("learning_rate") if levels else None for levels in got_levels]
        if any(x is None for x in got_lr):
            fail("the learned learning rate (hyperparams(state)[0]['learning_rate'])",
                 [float(levels[0]["learning_rate"]) for levels in want_levels], None, hint)
        expect_close(f"learning rate after each step (lr={lr}, hyper_lr={hyper_lr})",
                     [levels[0]["learning_rate"] for levels in want_levels], got_lr, hint)
        expect_close(f"updates (lr={lr}, hyper_lr={hyper_lr})", want_u, got_u, hint, rtol=1e-4, atol=1e-7)
    print("hyper_adam: correct; the learning rate moves exactly as in minilopt")


# ---- Investigative exercise: a tower that survives alpha0 = 1 --------------------------------------

SURVIVED = 0.10     # test error after 500 steps that counts as "survived" (lesson 03's towers: 3-5 %)


def survival_setup(steps: int = 500):
    """(loss_fn, params, keys, test_error): lesson 03's digits MLP (64 tanh units, batch 32, key 2)."""
    from .. import tasks
    task = tasks.digits_mlp(hidden=(64,), activation="tanh", batch_size=32)
    k_init, k_run = jax.random.split(jax.random.key(2))
    params, keys = task.init(k_init), jax.random.split(k_run, steps)
    loss_fn = lambda p, k: task.loss(p, task.batch(k))                        # noqa: E731
    test_error = lambda p: 1.0 - float(task.accuracy(p, task.eval_batch(None)))  # noqa: E731
    return loss_fn, params, keys, test_error


def check_survivor(survivor, alpha0: float = 1.0):
    """survivor(alpha0) -> a list of hyper rules (bottom-up, as `hyper.stack` takes them) with at least one
    hyper-level, EVERY level's step size starting at alpha0, whose tower ends lesson 03's 500-step digits
    run below 10 % test error from alpha0 = 1 (where the SGD/SGD tower of the sensitivity experiment ends
    near 90 %). Checked by the run's outcome, not by the shape of the tower."""
    hint = ("at alpha0 = 1 every hyper-step is as large as the weights' step, and the level below overreacts to "
            "each noisy hypergradient: look for what damps or re-scales a level's moves (the lesson's sensitivity "
            "table, or the other parameterisations the rules offer), and try a few towers")
    loss_fn, params, keys, test_error = survival_setup()
    levels = call(survivor, alpha0, what="survivor", hint=hint)
    if not (isinstance(levels, (list, tuple)) and len(levels) >= 2 and all(_is_optimizer(lv) for lv in levels)):
        fail(f"survivor({alpha0}) must return a list of at least two hyper rules (the weights' level and one "
             "above it), bottom-up", "[rule for the weights, rule for its step size, ...]", levels,
             "plain SGD is not a tower: at least one level must learn the step size of the level below")
    try:
        tower = hyper.stack(*levels)
        starts = hyper.hyperparams(tower.init(params))
    except (TypeError, ValueError) as e:
        raise ExerciseError(f"survivor({alpha0}): hyper.stack could not build the tower: {e}\n  hint: use the rules "
                            "of minilopt.hyper (hyper.sgd, hyper.adam, ...), one per level") from None
    for k, level in enumerate(starts, start=1):
        a = level.get("alpha")
        if a is None or not np.isclose(float(a), alpha0, rtol=1e-5):
            fail(f"level {k}'s step size must start at alpha0 = {alpha0:g}, as in the sensitivity experiment",
                 alpha0, a, "every level starts at alpha0: change the tower's shape or rules, not its starting "
                 "step sizes")
    traj = jax.jit(lambda: hyper.run(loss_fn, params, tower, keys))()
    err = test_error(traj.params)
    if not err < SURVIVED:
        fail(f"a tower of {len(levels)} levels, every one starting at alpha0 = {alpha0:g}: test error after "
             f"{len(keys)} steps", f"< {SURVIVED:.0%}", f"{err:.1%}", hint)
    alpha = np.asarray(traj.hyperparams[0]["alpha"])
    print(f"survivor: {len(levels)} levels from alpha0 = {alpha0:g}, test error {err:.1%}; the weights' step size "
          f"went {alpha[0]:.3g} -> {alpha[-1]:.3g}")
    return err
