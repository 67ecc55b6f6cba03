"""Tiny pure-JAX layers: parameters are plain dicts, layers are functions.

No haiku, no flax: a learned optimizer's weights and a task's weights are both
ordinary pytrees, so `jax.grad`, `jax.vmap` and checkpoints need nothing special.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "swish": jax.nn.swish,
    "sigmoid": jax.nn.sigmoid,
}


def activation(name: str) -> Callable:
    """The activation function called `name`, or a ValueError listing the choices."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def truncated_normal(key, shape, std, dtype=jnp.float32):
    """Normal(0, std²) truncated at ±2 std, rescaled so the std really is `std`."""
    # 0.87962566 is the std of a standard normal truncated to [-2, 2].
    return (std / 0.87962566) * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def linear_init(key, fan_in: int, fan_out: int, scale: float = 1.0, dtype=jnp.float32) -> dict:
    """`{"w": (fan_in, fan_out), "b": (fan_out,)}` with w ~ TN(0, scale²/fan_in), b = 0."""
    w = truncated_normal(key, (fan_in, fan_out), scale / jnp.sqrt(fan_in), dtype)
    return {"w": w, "b": jnp.zeros((fan_out,), dtype)}


def linear(params: dict, x):
    """x @ w + b."""
    return x @ params["w"] + params["b"]


def mlp_init(key, sizes: Sequence[int], scale: float = 1.0, dtype=jnp.float32) -> list[dict]:
    """One `linear_init` per consecutive pair in `sizes`, e.g. (64, 128, 10)."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [linear_init(k, a, b, scale, dtype) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params: Sequence[dict], x, act: Callable = jax.nn.relu):
    """Linear layers with `act` between them and none after the last."""
    for layer in params[:-1]:
        x = act(linear(layer, x))
    return linear(params[-1], x)


def lstm_init(key, input_size: int, hidden: int, dtype=jnp.float32) -> dict:
    """An LSTM cell: one fused (input+hidden, 4·hidden) matrix, gates i, g, f, o."""
    return linear_init(key, input_size + hidden, 4 * hidden, dtype=dtype)


def lstm_cell(params: dict, x, state: tuple, forget_bias: float = 1.0):
    """One LSTM step. state = (h, c). Gate order i, g, f, o, with +forget_bias on f.

        i, g, f, o = split([x, h] @ W + b)
        c' = σ(f + forget_bias)·c + σ(i)·tanh(g)
        h' = σ(o)·tanh(c')
    """
    h, c = state
    z = linear(params, jnp.concatenate([x, h], axis=-1))
    i, g, f, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f + forget_bias) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, (h, c)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of integer `labels` under `logits` (..., classes)."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))
