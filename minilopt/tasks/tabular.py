"""MLP classifiers on tables: scikit-learn's bundled breast-cancer and wine data.

    logits = mlp(params, x)         x: one row of standardised measurements
    loss   = mean cross-entropy of the batch's labels

The same `MLPTask` as the image classifiers; what changes is the data. Tabular
features are heterogeneous measurements (a radius, a texture, an alcohol content)
rather than pixels of one kind, there are few rows (455 and 142 for training), and
two or three classes rather than ten, so the loss at chance is log 2 or log 3.

| dataset         | rows (train / test) | features | classes |
|-----------------|---------------------|----------|---------|
| `breast_cancer` | 455 / 114           | 30       | 2       |
| `wine`          | 142 / 36            | 13       | 3       |
"""
from __future__ import annotations

from .mlp import MLPTask, mlp_task

TABULAR_DATASETS = ("breast_cancer", "wine")


def tabular_mlp(dataset="breast_cancer", hidden=(32,), activation="relu", batch_size=64, **kw) -> MLPTask:
    if dataset not in TABULAR_DATASETS:
        raise ValueError(f"unknown tabular dataset {dataset!r}; choose one of {TABULAR_DATASETS}")
    return mlp_task(dataset, hidden, activation, batch_size, **kw)
