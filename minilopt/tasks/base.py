"""The task interface: what an optimizer is asked to train.

A `Task` is a frozen dataclass and a JAX pytree. Its numeric fields (an init scale,
a quadratic's curvatures) are pytree leaves, so tasks can be vmapped, stored in a
meta-training state, and sampled inside `jit`. Everything that fixes a shape (the
dataset, the widths, the batch size) is static metadata.

    params = task.init(key)
    batch  = task.batch(key)             # split="train"; "test" for held-out data
    loss   = task.loss(params, batch)    # a scalar

All three are pure and jittable. A `TaskFamily` samples tasks:
`family.sample(key, split="train" | "heldout") -> Task`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

SPLITS = ("train", "heldout")


def pytree_dataclass(cls):
    """Make `cls` a frozen dataclass and a pytree. Fields declared with
    `static()` are metadata (hashed, fixed at trace time); the rest are leaves."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if f.metadata.get("static")]
    data = [f.name for f in fields if not f.metadata.get("static")]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


def static(default=dataclasses.MISSING):
    """A dataclass field that is pytree metadata, not a leaf."""
    return dataclasses.field(default=default, metadata={"static": True})


class Task:
    """Base class. Subclasses set `name` and implement init, loss and batch."""

    name: str

    def init(self, key):
        raise NotImplementedError

    def loss(self, params, batch):
        raise NotImplementedError

    def batch(self, key, split: str = "train"):
        raise NotImplementedError

    def eval_batch(self, key):
        """The batch `fit` evaluates on; by default a test batch."""
        return self.batch(key, "test")

    def __repr__(self):
        return f"<Task {self.name}>"


class TaskFamily:
    """Samples tasks. `sample(key, split)` with split "train" or "heldout"; the two
    splits never share a task, so meta-training can be evaluated honestly."""

    name: str

    def sample(self, key, split: str = "train") -> Task:
        raise NotImplementedError

    def __repr__(self):
        return f"<TaskFamily {self.name}>"


def check_split(split: str, allowed=SPLITS) -> int:
    """The split's index, or a ValueError naming the allowed values."""
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; use one of {allowed}")
    return allowed.index(split)


def split_key(key, split: str):
    """A key for `split`: the same key gives unrelated tasks in the two splits."""
    return jax.random.fold_in(key, 1000 + check_split(split))


def check_batch_shape(task_name: str, what: str, got, expected: tuple):
    """Raise a ValueError if `got.shape[1:]` is not `expected` (the batch axis is free)."""
    shape = tuple(jnp.shape(got))
    if len(shape) != len(expected) + 1 or shape[1:] != tuple(expected):
        raise ValueError(
            f"{task_name}: {what} has shape {shape}, expected (batch, {', '.join(map(str, expected))})"
            + ("" if expected else " i.e. (batch,)")
            + "; build batches with task.batch(key)"
        )
