"""Checkers for lesson 02: hypergradient descent (Baydin et al. 2018)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import call, expect_close, fail

_RNG = np.random.default_rng(2)


def baydin_hypergradient_reference(g_now, g_prev):
    """∂f_t/∂α for w_t = w_{t−1} − α·g_{t−1}: the chain rule gives −⟨g_t, g_{t−1}⟩."""
    return -float(np.vdot(g_now, g_prev))


def hypergradient_by_vjp_reference(update, h, g_prev, g_now):
    """Pull g_now back through h ↦ update(g_prev, h) (the previous step), in h only."""
    _, pullback = jax.vjp(lambda h: update(g_prev, h), h)
    return pullback(g_now)[0]


def baydin_alphas_reference(grads, alpha0, kappa):
    """α after each step of SGD/SGD fed the gradients grads[0], grads[1], ...:
    α_t = α_{t−1} + κ·⟨g_t, g_{t−1}⟩, with nothing to correlate at the first step."""
    alphas, alpha, prev = [], alpha0, None
    for g in np.asarray(grads):
        if prev is not None:
            alpha = alpha + kappa * float(np.vdot(g, prev))
        alphas.append(alpha)
        prev = g
    return np.array(alphas)


def check_baydin_hypergradient(baydin_hypergradient):
    """baydin_hypergradient(g_now, g_prev) -> ∂f_t/∂α, a number."""
    hint = ("alpha reaches f_t only through w_t: differentiate the previous step in alpha, then chain it with "
            "the gradient at w_t; mind the sign")
    for case in range(3):
        g_now, g_prev = _RNG.normal(size=6), _RNG.normal(size=6)
        got = call(baydin_hypergradient, g_now, g_prev, what="baydin_hypergradient", hint=hint)
        expect_close(f"hypergradient (case {case})", baydin_hypergradient_reference(g_now, g_prev), got, hint)
    print("baydin_hypergradient: correct on 3 cases")


def _test_rules():
    """(name, update(g_prev, h) -> Δ, h) pairs: plain SGD, a per-coordinate scale, an Adam-like first step."""
    sgd = lambda g, h: -h["alpha"] * g
    scaled = lambda g, h: -h["alpha"] * g / (1.0 + h["c"] * g**2)
    adam_first = lambda g, h: -h["alpha"] * ((1 - h["b1"]) * g) / (jnp.sqrt((1 - 0.999) * g**2) + 1e-8)
    return [("sgd", sgd, {"alpha": jnp.array(0.1)}),
            ("scaled", scaled, {"alpha": jnp.array(0.05), "c": jnp.array(0.3)}),
            ("adam-like", adam_first, {"alpha": jnp.array(1e-3), "b1": jnp.array(0.9)})]


def check_hypergradient_by_vjp(hypergradient_by_vjp):
    """hypergradient_by_vjp(update, h, g_prev, g_now) -> {name: ∂f_t/∂h_name}."""
    hint = ("differentiate in h only (g_prev is a constant of yesterday's update), and pull back today's "
            "gradient: the cotangent is g_now, not a vector of ones")
    for name, update, h in _test_rules():
        g_prev, g_now = jnp.asarray(_RNG.normal(size=5)), jnp.asarray(_RNG.normal(size=5))
        got = call(hypergradient_by_vjp, update, h, g_prev, g_now, what="hypergradient_by_vjp", hint=hint)
        want = hypergradient_by_vjp_reference(update, h, g_prev, g_now)
        if not isinstance(got, dict) or set(got) != set(want):
            fail(f"hypergradient_by_vjp must return a dict with one entry per hyperparameter ({name} rule)",
                 {k: float(v) for k, v in want.items()}, got, hint)
        for k in want:
            expect_close(f"d f_t / d {k} for the {name} rule", want[k], got[k], hint, rtol=1e-4)
    print("hypergradient_by_vjp: correct for SGD, a scaled rule and an Adam-like step")


def check_baydin_alphas(baydin_alphas):
    """baydin_alphas(grads, alpha0, kappa) -> α after each of len(grads) steps."""
    hint = ("alpha moves by kappa times the agreement of today's and yesterday's gradients; the first step has "
            "no yesterday, so alpha stays put there; record alpha after updating it")
    for case, (alpha0, kappa) in enumerate([(0.1, 0.01), (0.01, 0.1), (1.0, 1e-3)]):
        grads = _RNG.normal(size=(8, 3)) + 0.5
        got = call(baydin_alphas, grads, alpha0, kappa, what="baydin_alphas", hint=hint)
        expect_close(f"alpha after each step (alpha0={alpha0}, kappa={kappa})",
                     baydin_alphas_reference(grads, alpha0, kappa), got, hint)
    print("baydin_alphas: correct on 3 gradient sequences")


# ---- Investigative exercise: where does hypergradient descent recover? -----------------------------

RECOVERED = 0.9            # test accuracy after the run that counts as "recovered"
RANGE_FLOOR, RANGE_CEILING = 1e-6, 100.0   # the α0 the search looks at


@functools.lru_cache(maxsize=None)
def recovery_setup(steps: int = 600, chunk: int = 8):
    """(final_accuracy, steps): final_accuracy(make_optimizer, alpha0s) trains the lesson's digits MLP
    (64 tanh units, batch 32, key 1) for `steps` steps once per α0 and returns the test accuracies.
    `make_optimizer(alpha0)` must accept a traced α0, as the rules do. The runs are vmapped, `chunk` at a
    time, so each make_optimizer compiles once, whatever the number of α0 asked for (and the setup is made
    once per process, so a second check reuses the compiled runs)."""
    from .. import hyper, tasks
    task = tasks.digits_mlp(hidden=(64,), activation="tanh", batch_size=32)
    k_init, k_run = jax.random.split(jax.random.key(1))
    params, keys = task.init(k_init), jax.random.split(k_run, steps)
    loss_fn = lambda p, k: task.loss(p, task.batch(k))                       # noqa: E731
    compiled = {}   # id(make_optimizer) -> (make_optimizer, its jitted, vmapped run)

    def final_accuracy(make_optimizer, alpha0s):
        if compiled.get(id(make_optimizer), (None,))[0] is not make_optimizer:
            one = lambda a: task.accuracy(hyper.run(loss_fn, params, make_optimizer(a), keys).params,  # noqa: E731
                                          task.eval_batch(None))
            compiled[id(make_optimizer)] = (make_optimizer, jax.jit(jax.vmap(one)))
        run = compiled[id(make_optimizer)][1]
        a = np.asarray(alpha0s, np.float32).ravel()
        padded = np.concatenate([a, np.repeat(a[-1:], -len(a) % chunk)]).reshape(-1, chunk)
        return np.concatenate([np.asarray(run(jnp.asarray(c))) for c in padded])[: len(a)]
    return final_accuracy, steps


@functools.lru_cache(maxsize=None)
def _recovery_cases():
    """The same two make_optimizer functions on every call, so their compiled runs are reused."""
    from .. import hyper
    return ((lambda a: hyper.sgd(a), "plain SGD"),
            (lambda a: hyper.stack(hyper.sgd(a), hyper.sgd(0.01)), "SGD/SGD (kappa = 0.01)"))


def check_recovery_range(recovery_range, slack: float = 0.02):
    """recovery_range(make_optimizer, final_accuracy) -> (lo, hi): the range of α0 in [1e-6, 100] from which
    the run recovers (test accuracy >= 0.9), for plain SGD and for SGD/SGD. Checked by properties: it
    recovers at lo, at hi and between them; it does not at 2·hi, nor at lo/2 unless lo is the floor 1e-6.
    (`slack` absorbs the few test examples a re-run may flip next to an edge.)"""
    final_accuracy, steps = recovery_setup()
    hint = ("sweep alpha0 over the whole search range on a log grid, finer than a factor 2 between neighbours, "
            "in one vmapped call; then read off the first and the last alpha0 that reach the target accuracy")
    found = {}
    for make, what in _recovery_cases():
        got = call(recovery_range, make, final_accuracy, what="recovery_range", hint=hint)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            fail(f"recovery_range for {what} must return (lo, hi)", "two step sizes", got, hint)
        try:
            lo, hi = float(got[0]), float(got[1])
        except (TypeError, ValueError):
            fail(f"recovery_range for {what}: lo and hi must be numbers", "two positive numbers", got, hint)
        if not (RANGE_FLOOR * (1 - 1e-6) <= lo <= hi <= RANGE_CEILING * (1 + 1e-6)):
            fail(f"recovery_range for {what}: need {RANGE_FLOOR:g} <= lo <= hi <= {RANGE_CEILING:g}",
                 "lo <= hi inside the search range", got, hint)
        points = [lo, float(np.sqrt(lo * hi)), hi, 2 * hi] + ([lo / 2] if lo > RANGE_FLOOR * 1.01 else [])
        acc = final_accuracy(make, points)
        for a0, a in zip(points[:3], acc[:3]):
            if a < RECOVERED - slack:
                fail(f"{what} from alpha0 = {a0:.3g} (inside your range [{lo:.3g}, {hi:.3g}]) does not recover: "
                     f"test accuracy {a:.3f} after {steps} steps", f">= {RECOVERED}", float(a),
                     "the hypergradient needs two gradients before it can move alpha, so the first steps are "
                     "taken at alpha0 itself: ask what those steps do when alpha0 is large" if a0 == hi else
                     "the range must hold only alpha0 that recover: look at what happens between your edges"
                     if a0 != lo else hint)
        if acc[3] >= RECOVERED + slack:
            fail(f"{what} still recovers from alpha0 = {2 * hi:.3g}, twice your hi (test accuracy {acc[3]:.3f})",
                 f"< {RECOVERED} at 2 * hi", float(acc[3]), "the upper edge is further up: extend the sweep")
        if len(acc) > 4 and acc[4] >= RECOVERED + slack:
            fail(f"{what} still recovers from alpha0 = {lo / 2:.3g}, half your lo (test accuracy {acc[4]:.3f})",
                 f"< {RECOVERED} at lo / 2", float(acc[4]),
                 "the lower edge is further down, perhaps at the floor of the search (1e-6): extend the sweep")
        found[what] = (lo, hi)
        print(f"recovery_range for {what}: alpha0 from {lo:.3g} to {hi:.3g} ({np.log10(hi / lo):.1f} decades)")
    return found
