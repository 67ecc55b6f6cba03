"""Checkers for the JAX primer: pytrees, per-example gradients, lax.scan, PRNG keys."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import call, expect_close, fail


def tree_sq_norm_reference(tree) -> float:
    """Σ over every leaf of Σ leaf²: the squared Euclidean norm of the whole pytree."""
    return float(sum(np.sum(np.square(np.asarray(leaf, np.float64))) for leaf in jax.tree.leaves(tree)))


def check_tree_sq_norm(tree_sq_norm):
    """tree_sq_norm(tree) -> one number, for any nesting of dicts, lists and tuples."""
    hint = "visit every leaf of the tree, however deeply nested, and add up the squares of all its entries"
    cases = [
        {"w": np.arange(6.0).reshape(2, 3), "b": np.array([1.0, 2.0])},
        [{"a": np.array(3.0)}, (np.ones(4), {"deep": {"x": -2.0 * np.ones((2, 2))}})],
        np.array(5.0),
    ]
    for tree in cases:
        got = call(tree_sq_norm, jax.tree.map(jnp.asarray, tree), what="tree_sq_norm", hint=hint)
        shape = jax.tree.map(np.shape, tree)
        expect_close(f"squared norm of a tree shaped {shape}", tree_sq_norm_reference(tree), got, hint, rtol=1e-5)
    print("tree_sq_norm: correct on 3 trees, nested ones included")


def _regression_loss(params, x, y):
    return 0.5 * (jnp.dot(x, params["w"]) + params["b"] - y) ** 2


def check_per_example_grads(per_example_grads):
    """per_example_grads(loss, params, xs, ys) -> the params tree, each leaf with a leading example axis."""
    hint = ("one gradient per example: take the gradient of the one-example loss, and map it over the "
            "examples only (the parameters are shared, so they are not mapped)")
    rng = np.random.default_rng(0)
    for n, d in [(5, 3), (1, 4), (8, 2)]:
        params = {"w": jnp.asarray(rng.normal(size=d), jnp.float32), "b": jnp.asarray(0.3, jnp.float32)}
        xs = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
        ys = jnp.asarray(rng.normal(size=n), jnp.float32)
        # Closed form: for ½ r² with r = x·w + b − y, ∂/∂w = r x and ∂/∂b = r.
        r = np.asarray(xs, np.float64) @ np.asarray(params["w"], np.float64) + 0.3 - np.asarray(ys, np.float64)
        want = {"w": r[:, None] * np.asarray(xs, np.float64), "b": r}
        got = call(per_example_grads, _regression_loss, params, xs, ys, what="per_example_grads", hint=hint)
        if not isinstance(got, dict) or set(got) != {"w", "b"}:
            fail(f"per_example_grads must return a tree like params (keys 'w' and 'b'), for {n} examples",
                 "a dict with 'w' of shape (n, d) and 'b' of shape (n,)", got, hint)
        for name in ("w", "b"):
            expect_close(f"per-example gradient of {name!r} for {n} examples of dimension {d}",
                         want[name], got[name], hint, rtol=1e-4, atol=1e-5)
    print("per_example_grads: one gradient per example, on 3 batches")


def check_gd_scan(gd_scan):
    """gd_scan(f, x0, lr, steps) -> (x_final, losses), losses[i] = f(x_i) before step i."""
    hint = ("the carry is x; each step records the loss at the x it starts from (before moving), then moves "
            "downhill; the scan stacks the records")
    for h, lr, steps in [(np.array([1.0, 0.5, 0.1]), 0.5, 10), (np.array([2.0]), 0.1, 1), (np.array([1.0, 3.0]), 0.3, 25)]:
        f = lambda x, h=h: 0.5 * jnp.sum(jnp.asarray(h, jnp.float32) * x**2)
        x0 = jnp.ones(len(h), jnp.float32)
        # Closed form: on ½ Σ h x², each step multiplies x by (1 − lr h).
        xs = np.array([(1 - lr * h) ** i for i in range(steps + 1)])
        want_losses = 0.5 * np.sum(h * xs[:steps] ** 2, axis=1)
        got = call(gd_scan, f, x0, lr, steps, what="gd_scan", hint=hint)
        if not (isinstance(got, tuple) and len(got) == 2):
            fail("gd_scan must return (x_final, losses)", "a pair", got, hint)
        expect_close(f"losses of {steps} steps (h={h.tolist()}, lr={lr})", want_losses, got[1], hint, rtol=1e-4)
        expect_close(f"final x after {steps} steps (h={h.tolist()}, lr={lr})", xs[steps], got[0], hint, rtol=1e-4)
    print("gd_scan: losses and final point correct on 3 quadratics")


def check_two_normals(two_normals):
    """two_normals(key, shape) -> (a, b): independent standard normals, reproducible from `key`.

    Checked by properties, not by exact values: the same key gives the same numbers, a
    different key different ones, a and b differ, and their moments are those of
    independent N(0, 1) draws."""
    hint = ("a key is used once: derive two new keys from it, one per array, and draw with jax.random "
            "(numpy's global generator ignores the key)")
    key = jax.random.key(7)
    got = call(two_normals, key, (20_000,), what="two_normals", hint=hint)
    if not (isinstance(got, tuple) and len(got) == 2):
        fail("two_normals must return (a, b)", "a pair of arrays", got, hint)
    a, b = (np.asarray(x, np.float64) for x in got)
    if a.shape != (20_000,) or b.shape != (20_000,):
        fail("two_normals(key, (20000,)): shapes", "(20000,) and (20000,)", (a.shape, b.shape), hint)
    again = np.asarray(call(two_normals, key, (20_000,), what="two_normals", hint=hint)[0])
    if not np.array_equal(a, again):
        fail("the same key gave different numbers", a, again, hint)
    if np.array_equal(a, b):
        fail("a and b are the same numbers: the key was used twice", "two different arrays", b, hint)
    other = np.asarray(call(two_normals, jax.random.key(8), (20_000,), what="two_normals", hint=hint)[0])
    if np.array_equal(a, other):
        fail("a different key gave the same numbers", "different numbers", other, hint)
    # 20,000 draws: the standard error of a mean, of a standard deviation and of a correlation
    # is below 0.01, so 0.05 is five standard errors.
    for name, x in (("a", a), ("b", b)):
        if abs(x.mean()) > 0.05 or abs(x.std() - 1) > 0.05:
            fail(f"{name} is not standard normal", "mean 0, std 1",
                 f"mean {x.mean():.3f}, std {x.std():.3f}", hint)
    corr = float(np.corrcoef(a, b)[0, 1])
    if abs(corr) > 0.05:
        fail("a and b are correlated", "a correlation near 0", corr, hint)
    print(f"two_normals: reproducible, independent (correlation {corr:+.3f}), standard normal")


# ---- Investigative exercise: where a finite-difference check breaks --------------------------------

FD_ACCURATE, FD_BROKEN = 1e-3, 0.1   # relative errors: "agrees with grad" and "useless as a check"


def fd_problems():
    """(f, x, f'(x) in closed form, description): smooth scalar functions, evaluated in float32."""
    return [(lambda x: jnp.sin(3.0 * x), 0.7, 3.0 * np.cos(2.1), "sin(3x) at x = 0.7"),
            (lambda x: jnp.exp(x) * x**2, 1.3, float(np.exp(1.3) * (1.3**2 + 2 * 1.3)), "x² eˣ at x = 1.3")]


def central_difference_error(f, x, eps, exact) -> float:
    """|(f(x + ε) − f(x − ε)) / 2ε − f'(x)| / |f'(x)|, computed in float32 (JAX's default)."""
    x32, e32 = np.float32(x), np.float32(eps)
    fd = (f(jnp.float32(x32 + e32)) - f(jnp.float32(x32 - e32))) / (2 * jnp.float32(e32))
    return float(abs(float(fd) - exact) / abs(exact))


def check_fd_steps(fd_steps):
    """fd_steps(f, x) -> (too_small, good, too_large): three step sizes ε for the central difference
    (f(x + ε) − f(x − ε)) / 2ε in float32, in increasing order, where it is useless (relative error
    ≥ 0.1), accurate (≤ 1e-3), and useless again. Checked by the errors at the returned steps, on two
    functions whose derivative is known in closed form, not by exact values."""
    hint = ("measure before you answer: compare the central difference with jax.grad(f)(x) over many step "
            "sizes, decades apart, and look at where the relative error is smallest and where it grows again "
            "on either side")
    for f, x, exact, what in fd_problems():
        got = call(fd_steps, f, x, what="fd_steps", hint=hint)
        if not (isinstance(got, (tuple, list)) and len(got) == 3):
            fail(f"fd_steps for {what} must return (too_small, good, too_large)", "three step sizes", got, hint)
        try:
            steps = [float(s) for s in got]
        except (TypeError, ValueError):
            fail(f"fd_steps for {what}: each step size must be a number", "three positive numbers", got, hint)
        if not all(np.isfinite(s) and s > 0 for s in steps):
            fail(f"fd_steps for {what}: step sizes must be finite and positive", "three positive numbers", got, hint)
        too_small, good, too_large = steps
        if not too_small < good < too_large:
            fail(f"fd_steps for {what}: return the steps in increasing order (too_small, good, too_large)",
                 "too_small < good < too_large", got, "the too-small step is the smallest of the three")
        err = {name: central_difference_error(f, x, s, exact)
               for name, s in zip(("too_small", "good", "too_large"), steps)}
        if not err["good"] <= FD_ACCURATE:
            fail(f"at your good step {good:.3g}, the central difference of {what} is off by a relative "
                 f"{err['good']:.2g}", f"<= {FD_ACCURATE:g}", err["good"], hint)
        if not err["too_small"] >= FD_BROKEN:
            fail(f"at your too-small step {too_small:.3g}, the central difference of {what} is still accurate "
                 f"(relative error {err['too_small']:.2g}): rounding has not taken over yet",
                 f">= {FD_BROKEN:g}", err["too_small"],
                 "float32 keeps about 7 significant digits: as the step shrinks, f(x + eps) - f(x - eps) "
                 "loses more of them, but only when few are left does the quotient become useless. Go smaller")
        if not err["too_large"] >= FD_BROKEN:
            fail(f"at your too-large step {too_large:.3g}, the central difference of {what} is still accurate "
                 f"(relative error {err['too_large']:.2g})", f">= {FD_BROKEN:g}", err["too_large"],
                 "the central difference is exact for a parabola; it fails once the step is as large as the "
                 "distance over which f stops looking like one. Go larger")
        print(f"fd_steps on {what}: relative error {err['too_small']:.2g} at {too_small:.2g}, "
              f"{err['good']:.1e} at {good:.2g}, {err['too_large']:.2g} at {too_large:.2g}")
