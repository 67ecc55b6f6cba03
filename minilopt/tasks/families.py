"""Task families: distributions over tasks, for meta-training and its evaluation.

Two kinds, because vmap needs static shapes:

- `ImageFamily` fixes the architecture and varies only numbers (the init scale, the
  seeds). Its `sample` is traceable: call it inside jit or vmap, as a meta-training
  state machine does when a run resets.
- `RandomFamily` also varies shapes: dataset, width, depth, activation, batch size.
  Its `sample` needs a concrete key. `structure(key)` returns the fixed-shape
  `ImageFamily` for one draw, so a meta-training batch can vmap within it.

The "heldout" split never meets the "train" split: its keys are folded apart and, for
`RandomFamily`, its widths and batch sizes come from disjoint lists.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import nn
from . import data
from .base import TaskFamily, check_split, split_key
from .conv import ConvTask
from .mlp import MLPTask


class ImageFamily(TaskFamily):
    """One architecture on one dataset; init scale log-uniform in `init_scale_range`."""

    def __init__(self, dataset="digits", model="mlp", hidden=(32,), activation="relu", batch_size=64,
                 init_scale_range=(0.5, 2.0), channels=(8, 8)):
        data.load(dataset)
        nn.activation(activation)
        if model not in ("mlp", "cnn"):
            raise ValueError(f"unknown model {model!r}; use 'mlp' or 'cnn'")
        self.dataset, self.model, self.hidden, self.activation = dataset, model, tuple(hidden), activation
        self.batch_size, self.init_scale_range, self.channels = batch_size, init_scale_range, tuple(channels)
        arch = "x".join(map(str, self.hidden if model == "mlp" else self.channels)) or "linear"
        self.name = f"{dataset}_{model}_{arch}_{activation}_b{batch_size}"

    def sample(self, key, split: str = "train"):
        lo, hi = self.init_scale_range
        u = jax.random.uniform(split_key(key, split), (), minval=np.log(lo), maxval=np.log(hi))
        scale = jnp.exp(u)
        if self.model == "mlp":
            return MLPTask(scale, self.dataset, self.hidden, self.activation, self.batch_size, self.name)
        return ConvTask(scale, self.dataset, self.channels, 5, self.activation, self.batch_size, self.name)


class RandomFamily(TaskFamily):
    """Random image-classification tasks with varying shapes (for meta-training).

    Per draw: a dataset, a model (MLP or 1-D CNN where the data is 1-D), a depth, a
    width, an activation and a batch size, then an init scale. Held-out draws use
    the `heldout_*` widths and batch sizes, which the training split never sees."""

    def __init__(self, datasets=("digits", "mnist1d"), depths=(1, 2), widths=(16, 32, 64),
                 heldout_widths=(24, 48), activations=("relu", "tanh", "gelu"), batch_sizes=(32, 128),
                 heldout_batch_sizes=(64,), init_scale_range=(0.5, 2.0), cnn=True):
        for d in datasets:
            data.load(d)
        for a in activations:
            nn.activation(a)
        if set(widths) & set(heldout_widths) or set(batch_sizes) & set(heldout_batch_sizes):
            raise ValueError("train and held-out widths / batch sizes must be disjoint")
        self.datasets, self.depths, self.activations = tuple(datasets), tuple(depths), tuple(activations)
        self.widths = {"train": tuple(widths), "heldout": tuple(heldout_widths)}
        self.batch_sizes = {"train": tuple(batch_sizes), "heldout": tuple(heldout_batch_sizes)}
        self.init_scale_range, self.cnn = init_scale_range, cnn
        self.name = "random_image"

    def structure(self, key, split: str = "train") -> ImageFamily:
        """The fixed-shape sub-family for one draw of the key (needs a concrete key)."""
        check_split(split)
        if isinstance(key, jax.core.Tracer):
            raise ValueError(
                "RandomFamily.sample varies shapes, so it cannot run inside jit or vmap. "
                "Call family.structure(key) outside jit to get a fixed-shape ImageFamily, "
                "and sample from that inside jit.")
        seed = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
        rng = np.random.default_rng([int(s) for s in seed.ravel()] + [check_split(split)])
        dataset = self.datasets[rng.integers(len(self.datasets))]
        model = "cnn" if (self.cnn and dataset == "mnist1d" and rng.random() < 0.5) else "mlp"
        depth = int(self.depths[rng.integers(len(self.depths))])
        width = int(self.widths[split][rng.integers(len(self.widths[split]))])
        return ImageFamily(
            dataset, model, hidden=(width,) * depth, activation=self.activations[rng.integers(len(self.activations))],
            batch_size=int(self.batch_sizes[split][rng.integers(len(self.batch_sizes[split]))]),
            init_scale_range=self.init_scale_range, channels=(max(4, width // 4),) * depth)

    def sample(self, key, split: str = "train"):
        k_struct, k_task = jax.random.split(key) if not isinstance(key, jax.core.Tracer) else (key, key)
        return self.structure(k_struct, split).sample(k_task, split)
