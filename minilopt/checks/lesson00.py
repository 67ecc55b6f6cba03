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
    hint = ("carry x through jax.lax.scan; each step records the loss at the current x, then takes the step "
            "x - lr * grad f(x); the scan stacks the records")
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
    hint = ("a key is used once: split it into two keys and draw a from one and b from the other, with "
            "jax.random (numpy's global generator ignores the key)")
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
