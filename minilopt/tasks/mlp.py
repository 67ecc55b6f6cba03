"""Classification tasks: logistic regression and MLPs on digits or MNIST-1D.

    logits = mlp(params, x)         (hidden=() is logistic regression)
    loss   = mean cross-entropy of the batch's labels

Batches are sampled with replacement from the device-resident training set, inside
jit. `eval_batch` is the whole test set, so eval losses are exact, not sampled.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import nn
from . import data
from .base import Task, check_batch_shape, check_split, pytree_dataclass, static


class Classifier(Task):
    """Shared batching, loss and accuracy. Subclasses define `init` and `logits`."""

    dataset: str
    batch_size: int

    @property
    def data(self) -> data.Dataset:
        return data.load(self.dataset)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.data.x_train.shape[1:])

    def batch(self, key, split: str = "train"):
        d = self.data
        x, y = (d.x_train, d.y_train) if check_split(split, ("train", "test")) == 0 else (d.x_test, d.y_test)
        idx = jax.random.randint(key, (self.batch_size,), 0, x.shape[0])
        return x[idx], y[idx]

    def eval_batch(self, key):
        return self.data.x_test, self.data.y_test

    def _checked(self, batch):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"{self.name}: a batch is a pair (inputs, labels); build it with task.batch(key)")
        x, y = batch
        check_batch_shape(self.name, "the inputs", x, self.input_shape)
        check_batch_shape(self.name, "the labels", y, ())
        return x, y

    def loss(self, params, batch):
        x, y = self._checked(batch)
        return nn.softmax_cross_entropy(self.logits(params, x), y)

    def accuracy(self, params, batch):
        x, y = self._checked(batch)
        return jnp.mean(jnp.argmax(self.logits(params, x), axis=-1) == y)


@pytree_dataclass
class MLPTask(Classifier):
    init_scale: jnp.ndarray                   # multiplies the 1/sqrt(fan_in) init
    dataset: str = static("digits")
    hidden: tuple = static((64,))
    activation: str = static("tanh")
    batch_size: int = static(128)
    name: str = static("digits_mlp")

    def init(self, key):
        sizes = (self.input_shape[0], *self.hidden, self.data.num_classes)
        return nn.mlp_init(key, sizes, scale=self.init_scale)

    def logits(self, params, x):
        return nn.mlp(params, x, nn.activation(self.activation))


def mlp_task(dataset="digits", hidden=(64,), activation="tanh", batch_size=128, init_scale=1.0,
             name=None) -> MLPTask:
    data.load(dataset)  # fail early, with the list of names, on a typo
    nn.activation(activation)
    name = name or f"{dataset}_{'mlp' if hidden else 'logreg'}"
    return MLPTask(jnp.asarray(init_scale, jnp.float32), dataset, tuple(hidden), activation, batch_size, name)


def digits_logreg(batch_size=128, **kw):
    return mlp_task("digits", (), batch_size=batch_size, **kw)


def digits_mlp(hidden=(64,), activation="tanh", batch_size=128, **kw):
    return mlp_task("digits", hidden, activation, batch_size, **kw)


def mnist1d_mlp(hidden=(100, 100), activation="relu", batch_size=128, **kw):
    return mlp_task("mnist1d", hidden, activation, batch_size, **kw)
