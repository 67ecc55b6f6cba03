"""An MLP autoencoder: reconstruct each input through a narrow code.

    z    = encoder(x)  ∈ R^k          (input → hidden → ... → k, no activation on z)
    x̂    = decoder(z)  ∈ R^D          (k → ... reversed hidden ... → D)
    loss = mean over the batch and the D features of (x̂ − x)²

With k < D the net cannot copy its input; it must find a k-dimensional description
of the data, and the loss measures how much that description leaves out. Two
reference levels: an output of zero scores mean(x²), and the best constant output
(the per-feature mean) scores the mean per-feature variance. A linear autoencoder
can at best match PCA with k components; the nonlinear one can do better.

The labels of the dataset are unused. Batches are rows sampled with replacement from
the training set, inside jit; `eval_batch` is the whole test set.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import nn
from . import data
from .base import Task, check_batch_shape, check_split, pytree_dataclass, static


@pytree_dataclass
class AutoencoderTask(Task):
    init_scale: jnp.ndarray                   # multiplies the 1/sqrt(fan_in) init
    dataset: str = static("digits")
    hidden: tuple = static((32,))
    bottleneck: int = static(8)
    activation: str = static("relu")
    batch_size: int = static(128)
    name: str = static("digits_autoencoder")

    @property
    def data(self) -> data.Dataset:
        return data.load(self.dataset)

    @property
    def features(self) -> int:
        return self.data.x_train.shape[1]

    def init(self, key):
        k_enc, k_dec = jax.random.split(key)
        sizes = (self.features, *self.hidden, self.bottleneck)
        return {"encoder": nn.mlp_init(k_enc, sizes, scale=self.init_scale),
                "decoder": nn.mlp_init(k_dec, sizes[::-1], scale=self.init_scale)}

    def batch(self, key, split: str = "train"):
        x = self.data.x_train if check_split(split, ("train", "test")) == 0 else self.data.x_test
        return x[jax.random.randint(key, (self.batch_size,), 0, x.shape[0])]

    def eval_batch(self, key):
        return self.data.x_test

    def reconstruct(self, params, x):
        act = nn.activation(self.activation)
        return nn.mlp(params["decoder"], nn.mlp(params["encoder"], x, act), act)

    def loss(self, params, batch):
        check_batch_shape(self.name, "the batch of inputs", batch, (self.features,))
        return jnp.mean((self.reconstruct(params, batch) - batch) ** 2)


def autoencoder_task(dataset="digits", hidden=(32,), bottleneck=8, activation="relu", batch_size=128,
                     init_scale=1.0, name=None) -> AutoencoderTask:
    d = data.load(dataset)  # fail early, with the list of names, on a typo
    nn.activation(activation)
    if d.x_train.ndim != 2 or not jnp.issubdtype(d.x_train.dtype, jnp.floating):
        raise ValueError(f"an MLP autoencoder needs rows of real features; dataset {dataset!r} has "
                         f"{d.x_train.dtype} inputs of shape {d.x_train.shape[1:]}")
    if not (isinstance(bottleneck, int) and 1 <= bottleneck < d.x_train.shape[1]):
        raise ValueError(f"bottleneck must be an int from 1 to {d.x_train.shape[1] - 1} (narrower than the "
                         f"{d.x_train.shape[1]} input features of {dataset!r}), got {bottleneck!r}")
    return AutoencoderTask(jnp.asarray(init_scale, jnp.float32), dataset, tuple(hidden), bottleneck, activation,
                           batch_size, name or f"{dataset}_autoencoder")


def digits_autoencoder(hidden=(32,), bottleneck=8, activation="relu", batch_size=128, **kw):
    return autoencoder_task("digits", hidden, bottleneck, activation, batch_size, **kw)


def mnist1d_autoencoder(hidden=(64,), bottleneck=8, activation="relu", batch_size=128, **kw):
    return autoencoder_task("mnist1d", hidden, bottleneck, activation, batch_size, **kw)
