"""Checkers for lesson 06: meta-gradients by backprop.

The toy of the lesson: gradient descent on the double well f(x) = ¼(x² − 1)²,

    x_{t+1} = x_t − lr · f'(x_t),   x_0 = 0.1,    meta-loss L(lr, T) = (1/T) Σ_{t=1..T} f(x_t)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import call, expect_close, fail

X0 = 0.1


def f(x):
    """The double well ¼(x² − 1)², minima at ±1."""
    return 0.25 * (x**2 - 1.0) ** 2


def _run(lr, x0, steps):
    def step(x, _):
        x = x - lr * jax.grad(f)(x)
        return x, f(x)

    return jax.lax.scan(step, x0, None, length=steps)


def meta_loss_reference(lr, T):
    """(1/T) Σ_{t=1..T} f(x_t) from x_0 = 0.1."""
    return float(jnp.mean(_run(jnp.float32(lr), jnp.float32(X0), T)[1]))


def truncated_gradients_reference(lr, T, K):
    """dL_j/dlr for each truncation j = 0..T/K−1, where L_j is the mean of f(x_t) over the
    truncation's K steps and its starting x is treated as a constant."""
    lr = jnp.float32(lr)
    x, grads = jnp.float32(X0), []
    for _ in range(T // K):
        start = jax.lax.stop_gradient(x)
        g = jax.grad(lambda r: jnp.mean(_run(r, start, K)[1]))(lr)
        x = _run(lr, start, K)[0]
        grads.append(g)
    return np.asarray(grads)


def check_meta_loss(meta_loss):
    """meta_loss(lr, T) -> the mean of f(x_t) over t = 1..T."""
    hint = ("start at x = 0.1; each step x = x - lr * x * (x**2 - 1) (that is f'(x)); record f(x) AFTER the step; "
            "return the mean of the T recorded values (lax.scan or a Python loop both work)")
    for lr, T in [(0.5, 5), (0.3, 20), (1.2, 8)]:
        got = call(meta_loss, lr, T, what="meta_loss", hint=hint)
        expect_close(f"meta_loss(lr={lr}, T={T})", meta_loss_reference(lr, T), got, hint, rtol=1e-4, atol=1e-7)
    print("meta_loss: correct for 3 (lr, T)")


def check_truncated_gradients(truncated_gradients):
    """truncated_gradients(lr, T, K) -> array (T/K,) of truncated-BPTT meta-gradients."""
    hint = ("loop over the T//K truncations: start = jax.lax.stop_gradient(x); the gradient is jax.grad of the "
            "mean f over the K steps from `start` with respect to lr; then move x on by those K steps")
    for lr, T, K in [(0.5, 20, 5), (0.8, 12, 4)]:
        expected = truncated_gradients_reference(lr, T, K)
        got = call(truncated_gradients, lr, T, K, what="truncated_gradients", hint=hint)
        if got is not None and np.shape(got) == np.shape(expected) and np.allclose(
                got, _full_per_truncation(lr, T, K), rtol=1e-3, atol=1e-6) and not np.allclose(
                got, expected, rtol=1e-3, atol=1e-6):
            fail(f"truncated_gradients(lr={lr}, T={T}, K={K}) differentiates through the start of each truncation",
                 expected, got, "treat the start of each truncation as a constant: jax.lax.stop_gradient(x)")
        expect_close(f"truncated_gradients(lr={lr}, T={T}, K={K})", expected, got, hint, rtol=1e-3, atol=1e-6)
    print("truncated_gradients: correct, and different from the full gradients")


def _full_per_truncation(lr, T, K):
    """The same per-truncation losses, differentiated through everything before them too."""
    def losses(r):
        return _run(r, jnp.float32(X0), T)[1].reshape(T // K, K).mean(axis=1)
    return np.asarray(jax.jacobian(losses)(jnp.float32(lr)))
