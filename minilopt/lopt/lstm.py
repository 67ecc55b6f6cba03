"""The coordinate-wise LSTM optimizer of "Learning to learn by gradient descent by
gradient descent" (Andrychowicz et al. 2016).

One small LSTM, shared by every coordinate of every tensor, reads that coordinate's
gradient and writes its update. Each coordinate keeps its own LSTM state, so the
network can build momentum-like or Adam-like memories per coordinate:

    x_t          = preprocess(g_t)                         (2 numbers per coordinate)
    h_t, state_t = LSTM_2layers(x_t, state_{t−1})          (hidden 20 per layer)
    p_{t+1}      = p_t + output_scale · (w·h_t + b)        (output_scale = 0.1)

Gradients span many orders of magnitude, which an LSTM reads badly, so the paper
feeds it the log-magnitude and the sign (with p = 10):

    preprocess(g) = (log|g| / p, sign g)   if |g| ≥ e^−p
                    (−1,         e^p · g)  otherwise

Both numbers are continuous at |g| = e^−p: log(e^−p)/p = −1 and e^p·e^−p = 1.

`LSTMLOpt.init` draws the LSTM weights at random and sets the output layer to zero,
so a fresh optimizer makes no update at all: meta-training starts from "do
nothing", never from a random walk, and the output layer's meta-gradient is
nonzero from the first step.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .. import nn
from . import features
from .mlp import check_num_steps, clean_gradient


def preprocess_gradient(g, p: float = 10.0):
    """The paper's (log-magnitude, sign) pair, stacked on a new last axis.

        |g| ≥ e^−p:  (log|g| / p, sign g)        otherwise:  (−1, e^p · g)
    """
    g = jnp.asarray(g, jnp.float32)
    big = jnp.abs(g) >= jnp.exp(-p)
    safe_abs = jnp.where(big, jnp.abs(g), 1.0)   # keeps log (and its gradient) finite where unused
    magnitude = jnp.where(big, jnp.log(safe_abs) / p, -1.0)
    sign = jnp.where(big, jnp.sign(g), jnp.exp(p) * g)
    return jnp.stack([magnitude, sign], axis=-1)


class LSTMLOptState(NamedTuple):
    count: jax.Array   # t, the number of updates so far (int32)
    hidden: object     # tree: per leaf, a tuple of (h, c) per layer, each p.shape + (hidden,)


class LSTMLOpt:
    """The L2L coordinate-wise LSTM learned optimizer.

        lopt  = LSTMLOpt()
        theta = lopt.init(key)                  # {"lstm_0", "lstm_1", "output"}
        opt   = lopt.optimizer(theta, num_steps=T)

    `num_steps` is checked but not read: this optimizer has no notion of the horizon.
    It reads neither the parameters (only their dtypes) nor the loss (`value=` is ignored)."""

    def __init__(self, hidden: int = 20, layers: int = 2, preprocess_p: float = 10.0, output_scale: float = 0.1):
        if hidden < 1 or layers < 1:
            raise ValueError(f"need hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
        self.hidden, self.layers = int(hidden), int(layers)
        self.preprocess_p, self.output_scale = float(preprocess_p), float(output_scale)

    def init(self, key) -> dict:
        """Random LSTM layers (fan-in scaled, zero biases), a zero output layer."""
        keys = jax.random.split(key, self.layers)
        sizes = [2] + [self.hidden] * (self.layers - 1)
        theta = {f"lstm_{i}": nn.lstm_init(k, n_in, self.hidden) for i, (k, n_in) in enumerate(zip(keys, sizes))}
        theta["output"] = {"w": jnp.zeros((self.hidden, 1)), "b": jnp.zeros((1,))}
        return theta

    def initial_state(self, p) -> tuple:
        """Zero (h, c) for every layer, one per coordinate: shapes p.shape + (hidden,)."""
        zeros = jnp.zeros(jnp.shape(p) + (self.hidden,), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.layers))

    def network(self, theta, x, state: tuple):
        """The stacked LSTM then the output layer: x (..., 2) → (update (...), new state)."""
        new_state = []
        for i, layer_state in enumerate(state):
            x, layer_state = nn.lstm_cell(theta[f"lstm_{i}"], x, layer_state)
            new_state.append(layer_state)
        out = nn.linear(theta["output"], x)[..., 0]
        return self.output_scale * out, tuple(new_state)

    def optimizer(self, theta, num_steps: int) -> optax.GradientTransformationExtraArgs:
        check_num_steps(num_steps)

        def init_fn(params):
            features.check_params(params)
            return LSTMLOptState(jnp.zeros((), jnp.int32), jax.tree.map(self.initial_state, params))

        def update_fn(updates, state, params=None, **extra_args):
            del extra_args  # the loss is not an input of this optimizer
            # each update takes its parameter's dtype (the gradient's if no params are given)
            dtypes = updates if params is None else params
            features.check_params(dtypes)

            def one_tensor(g, like, hidden):
                x = preprocess_gradient(clean_gradient(g), self.preprocess_p)
                step, hidden = self.network(theta, x, hidden)
                return step.astype(jnp.result_type(like)), hidden

            treedef = jax.tree.structure(updates)
            out = [one_tensor(g, like, h) for g, like, h in zip(
                treedef.flatten_up_to(updates), treedef.flatten_up_to(dtypes), treedef.flatten_up_to(state.hidden))]
            steps = treedef.unflatten([s for s, _ in out])
            hidden = treedef.unflatten([h for _, h in out])
            return steps, LSTMLOptState(state.count + 1, hidden)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def __repr__(self):
        return f"LSTMLOpt(hidden={self.hidden}, layers={self.layers}, output_scale={self.output_scale})"
