"""A small 1-D CNN, for MNIST-1D (or any dataset of 1-D signals).

    x (B, L) → [conv(k, stride 2) → act] × len(channels) → flatten → linear → logits
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import nn
from . import data
from .mlp import Classifier
from .base import pytree_dataclass, static


def conv1d(params, x, stride=2):
    """x (B, L, C_in) * w (k, C_in, C_out) with SAME padding, + b."""
    y = jax.lax.conv_general_dilated(x, params["w"], (stride,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
    return y + params["b"]


@pytree_dataclass
class ConvTask(Classifier):
    init_scale: jnp.ndarray
    dataset: str = static("mnist1d")
    channels: tuple = static((16, 16))
    kernel: int = static(5)
    activation: str = static("relu")
    batch_size: int = static(128)
    name: str = static("mnist1d_cnn")

    def init(self, key):
        keys = jax.random.split(key, len(self.channels) + 1)
        params, c_in, length = {}, 1, self.input_shape[0]
        for i, (k, c_out) in enumerate(zip(keys, self.channels)):
            fan_in = self.kernel * c_in
            params[f"conv{i}"] = {
                "w": nn.truncated_normal(k, (self.kernel, c_in, c_out), self.init_scale / jnp.sqrt(fan_in)),
                "b": jnp.zeros((c_out,)),
            }
            c_in, length = c_out, -(-length // 2)
        params["out"] = nn.linear_init(keys[-1], length * c_in, self.data.num_classes, self.init_scale)
        return params

    def logits(self, params, x):
        act = nn.activation(self.activation)
        h = x[..., None]
        for i in range(len(self.channels)):
            h = act(conv1d(params[f"conv{i}"], h))
        return nn.linear(params["out"], h.reshape(h.shape[0], -1))


def cnn_task(dataset="mnist1d", channels=(16, 16), kernel=5, activation="relu", batch_size=128,
             init_scale=1.0, name=None) -> ConvTask:
    d = data.load(dataset)
    if d.x_train.ndim != 2:
        raise ValueError(f"a 1-D CNN needs 1-D signals; dataset {dataset!r} has inputs of shape {d.x_train.shape[1:]}")
    nn.activation(activation)
    return ConvTask(jnp.asarray(init_scale, jnp.float32), dataset, tuple(channels), kernel, activation, batch_size,
                    name or f"{dataset}_cnn")


def mnist1d_cnn(**kw):
    return cnn_task("mnist1d", **kw)
