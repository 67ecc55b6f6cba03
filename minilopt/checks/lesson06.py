"""Checkers for lesson 06: meta-gradients by backprop.

The toy of the lesson: gradient descent on the double well f(x) = ¼(x² − 1)²,

    x_{t+1} = x_t − lr · f'(x_t),   x_0 = 0.1,    meta-loss L(lr, T) = (1/T) Σ_{t=1..T} f(x_t)
"""
from __future__ import annotations

import functools

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
    hint = ("start at x = 0.1 and take T gradient-descent steps on f; record f AFTER each step, not before it "
            "(the starting point is not part of the meta-loss), and average the T recorded values")
    for lr, T in [(0.5, 5), (0.3, 20), (1.2, 8)]:
        got = call(meta_loss, lr, T, what="meta_loss", hint=hint)
        expect_close(f"meta_loss(lr={lr}, T={T})", meta_loss_reference(lr, T), got, hint, rtol=1e-4, atol=1e-7)
    print("meta_loss: correct for 3 (lr, T)")


def check_truncated_gradients(truncated_gradients):
    """truncated_gradients(lr, T, K) -> array (T/K,) of truncated-BPTT meta-gradients."""
    hint = ("each truncation differentiates only its own K steps: its starting point must be a constant for "
            "jax.grad, while the state itself still carries over from one truncation to the next")
    for lr, T, K in [(0.5, 20, 5), (0.8, 12, 4)]:
        expected = truncated_gradients_reference(lr, T, K)
        got = call(truncated_gradients, lr, T, K, what="truncated_gradients", hint=hint)
        if got is not None and np.shape(got) == np.shape(expected) and np.allclose(
                got, _full_per_truncation(lr, T, K), rtol=1e-3, atol=1e-6) and not np.allclose(
                got, expected, rtol=1e-3, atol=1e-6):
            fail(f"truncated_gradients(lr={lr}, T={T}, K={K}) differentiates through the start of each truncation",
                 expected, got, "treat the start of each truncation as a constant: stop the gradient there")
        expect_close(f"truncated_gradients(lr={lr}, T={T}, K={K})", expected, got, hint, rtol=1e-3, atol=1e-6)
    print("truncated_gradients: correct, and different from the full gradients")


def _full_per_truncation(lr, T, K):
    """The same per-truncation losses, differentiated through everything before them too."""
    def losses(r):
        return _run(r, jnp.float32(X0), T)[1].reshape(T // K, K).mean(axis=1)
    return np.asarray(jax.jacobian(losses)(jnp.float32(lr)))


@functools.lru_cache(maxsize=4)
def _masked_gradient(max_T):
    """A jitted (lr, T) -> dL(lr, T)/dlr for any T <= max_T with one compile: a scan of max_T steps
    whose losses after T are masked out of the mean."""
    def masked(r, T):
        losses = _run(r, jnp.float32(X0), max_T)[1]
        return jnp.sum(jnp.where(jnp.arange(1, max_T + 1) <= T, losses, 0.0)) / T
    return jax.jit(jax.grad(masked))


def meta_gradients_by_horizon(lr, max_T):
    """|dL(lr, T)/dlr| for every horizon T = 1..max_T, by backprop as jax.grad computes it.

    Where the run is chaotic, float32 backprop is itself good to only a few digits once the gradient
    is large (a different order of the same operations, vmap or forward mode, disagrees by 2x after
    ~30 steps): the checks use thresholds where neighbouring horizons differ by 2x."""
    grad = _masked_gradient(max_T)
    return np.abs(np.array([float(grad(jnp.float32(lr), T)) for T in range(1, max_T + 1)]))


def check_explosion_horizon(explosion_horizon, threshold=1e3, max_T=100):
    """explosion_horizon(lr, threshold, max_T) -> the first horizon T whose full-unroll meta-gradient
    |dL/dlr| exceeds `threshold`, or None if none up to max_T does. Checked by the defining properties:
    above the threshold at T, at or below it at every shorter horizon; None only where it never crosses."""
    hint = ("backprop's meta-gradient is a product of T Jacobians: measure |dL/dlr| (the gradient of the MEAN loss "
            "of lesson 06, as jax.grad computes it) horizon by horizon, and stop at the first one above the "
            "threshold; a finite difference stays below (range of L)/(2 eps) and never explodes")
    for lr in (1.5, 1.7, 0.5, 1.3):
        grads = meta_gradients_by_horizon(lr, max_T)
        crossing = np.nonzero(grads > threshold)[0]
        got = call(explosion_horizon, lr, threshold, max_T, what="explosion_horizon", hint=hint)
        if len(crossing) == 0:
            if got is not None:
                fail(f"explosion_horizon(lr={lr}): at this rate |dL/dlr| never exceeds {threshold:g} up to "
                     f"T={max_T} (its largest value is {grads.max():.3g})", None, got,
                     "return None when no horizon crosses the threshold; not every rate above 1 is chaotic")
            continue
        if got is None or isinstance(got, bool) or not np.issubdtype(np.asarray(got).dtype, np.integer) \
                or np.ndim(got) != 0 or not 1 <= int(got) <= max_T:
            fail(f"explosion_horizon(lr={lr}) must return a horizon, an int in 1..{max_T}: at this rate the "
                 f"meta-gradient does exceed {threshold:g}", f"an int in 1..{max_T}", got, hint)
        T = int(got)
        if not grads[T - 1] > threshold:
            fail(f"explosion_horizon(lr={lr}): at T={T} the meta-gradient is only {grads[T - 1]:.3g}, not above "
                 f"{threshold:g}", f"|dL/dlr| > {threshold:g}", grads[T - 1],
                 "return the first horizon whose gradient is ABOVE the threshold, not the last one below it. " + hint)
        if np.any(grads[:T - 1] > threshold):
            fail(f"explosion_horizon(lr={lr}): a shorter horizon than T={T} already has |dL/dlr| above "
                 f"{threshold:g}", f"a horizon below {T}", T,
                 "test every horizon in order (1, 2, 3, ...), and return the first that crosses")
    print(f"explosion_horizon: the first crossing of {threshold:g} is right at 2 chaotic rates, and there is none "
          "at 2 rates where the run is not chaotic")
