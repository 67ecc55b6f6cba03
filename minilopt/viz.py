"""Matplotlib helpers shared by the lessons and the benchmarks."""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np


def smooth(y, window: int = 1) -> np.ndarray:
    """Moving average over `window` steps (valid part only, so no edge artefacts)."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or len(y) < window:
        return y
    return np.convolve(y, np.ones(window) / window, mode="valid")


def plot_curves(curves: Mapping[str, np.ndarray], ax=None, *, window: int = 1, log: bool = True,
                title: str | None = None, xlabel: str = "step", ylabel: str = "training loss"):
    """One line per named loss curve (NaNs after a stop are simply not drawn)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for label, y in curves.items():
        y = smooth(y, window)
        ax.plot(np.arange(len(y)) + (window - 1 if window > 1 else 0), y, label=label)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return ax


def plot_lr_sweep(sweep, ax=None, *, title: str | None = None, label: str | None = None):
    """Final training loss against learning rate (log-log), best rate marked.
    Runs that stopped on a non-finite value are drawn as crosses at the top."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    lrs, final = np.asarray(sweep.learning_rates), np.asarray(sweep.final_loss)
    ok = np.isfinite(final)
    (line,) = ax.plot(lrs[ok], final[ok], "o-", label=label)
    if (~ok).any():
        top = final[ok].max() if ok.any() else 1.0
        ax.plot(lrs[~ok], np.full((~ok).sum(), top), "x", color=line.get_color(), label="diverged")
    ax.plot([sweep.best_lr], [final[sweep.best_index]], "*", ms=14, color="gold", mec="k",
            label=f"best lr = {sweep.best_lr:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final training loss", title=title)
    ax.legend(fontsize=8)
    return ax
