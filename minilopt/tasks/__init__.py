"""Tasks and task families, all offline. `get(name)` and `family(name)` look them up."""
from __future__ import annotations

import jax

from . import data
from .autoencoder import AutoencoderTask, autoencoder_task, digits_autoencoder, mnist1d_autoencoder
from .base import Task, TaskFamily
from .conv import ConvTask, cnn_task, mnist1d_cnn
from .families import ImageFamily, RandomFamily
from .lm import CharLMTask, char_lm
from .mlp import MLPTask, digits_logreg, digits_mlp, mlp_task, mnist1d_mlp
from .quadratic import QuadraticFamily, QuadraticTask, noisy_quadratic, quadratic
from .tabular import tabular_mlp
from .transformer import CharTransformerTask, char_transformer

TASKS = {
    "quadratic": quadratic,
    "noisy_quadratic": noisy_quadratic,
    "digits_logreg": digits_logreg,
    "digits_mlp": digits_mlp,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "char_lm": char_lm,
    "char_transformer": char_transformer,
    "tabular_mlp": tabular_mlp,
    "digits_autoencoder": digits_autoencoder,
    "mnist1d_autoencoder": mnist1d_autoencoder,
}

FAMILIES = {
    "quadratic": QuadraticFamily,
    "digits_mlp": lambda **kw: ImageFamily("digits", "mlp", **kw),
    "mnist1d_mlp": lambda **kw: ImageFamily("mnist1d", "mlp", **kw),
    "mnist1d_cnn": lambda **kw: ImageFamily("mnist1d", "cnn", **kw),
    "random": RandomFamily,
}


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    return table[name]


def get(name: str, **kwargs) -> Task:
    """The task called `name`, e.g. get("digits_mlp", hidden=(128,))."""
    return _lookup(TASKS, "task", name)(**kwargs)


def family(name: str, **kwargs) -> TaskFamily:
    """The task family called `name`, e.g. family("random")."""
    return _lookup(FAMILIES, "task family", name)(**kwargs)


def fixed_shape_family(name: str, kwargs: dict | None = None, seed: int = 0) -> TaskFamily:
    """The family `name` as meta-training uses it: one whose tasks all share their shapes
    (runs are vmapped). A family whose shapes vary (RandomFamily) is drawn once, from `seed`."""
    chosen = family(name, **(kwargs or {}))
    if isinstance(chosen, RandomFamily):
        chosen = chosen.structure(jax.random.PRNGKey(seed))
    return chosen


__all__ = ["Task", "TaskFamily", "get", "family", "fixed_shape_family", "TASKS", "FAMILIES", "data", "quadratic", "noisy_quadratic",
           "digits_logreg", "digits_mlp", "mnist1d_mlp", "mnist1d_cnn", "char_lm", "mlp_task", "cnn_task",
           "QuadraticTask", "QuadraticFamily", "MLPTask", "ConvTask", "CharLMTask", "ImageFamily", "RandomFamily",
           "char_transformer", "CharTransformerTask", "tabular_mlp", "autoencoder_task", "digits_autoencoder",
           "mnist1d_autoencoder", "AutoencoderTask"]
