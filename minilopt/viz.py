"""Matplotlib helpers shared by the lessons and the benchmarks."""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from .evaluate import trailing_mean


def _axes(ax):
    """`ax`, or the axes of a new 5 x 3.2 figure."""
    return plt.subplots(figsize=(5, 3.2))[1] if ax is None else ax


def plot_curves(curves: Mapping[str, np.ndarray], ax=None, *, window: int = 1, log: bool = True,
                title: str | None = None, xlabel: str = "step", ylabel: str = "training loss"):
    """One line per named loss curve, each the trailing mean over `window` steps
    (`evaluate.trailing_mean`: NaN, so not drawn, before the first full window and after a stop)."""
    ax = _axes(ax)
    for label, y in curves.items():
        y = trailing_mean(y, window)
        ax.plot(np.arange(len(y)), y, label=label)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return ax


def plot_lr_sweep(sweep, ax=None, *, title: str | None = None, label: str | None = None):
    """Final training loss against learning rate (log-log), best rate marked.
    Runs that stopped on a non-finite value are drawn as crosses at the top."""
    ax = _axes(ax)
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


# ---- the probes of minilopt.probe: one helper each, one line per named result ----------------

def _named(results):
    return results.items() if isinstance(results, Mapping) else [(None, results)]


def _legend(ax, results):
    """A legend when there are named results to tell apart."""
    if isinstance(results, Mapping):
        ax.legend(fontsize=8)
    return ax


def plot_impulse(results, ax=None, *, title: str = "impulse response"):
    """r_t / r_0 against t (probe.impulse), with each optimizer's time scale τ in the legend."""
    ax = _axes(ax)
    for label, r in _named(results):
        ax.plot(np.arange(len(r.response)), r.response / r.response[0],
                label=f"{label or ''} τ = {r.time_scale:.3g}".strip())
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="steps after the spike", ylabel="response / first response", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_gradient_scale(results, ax=None, *, title: str = "response to gradient scale"):
    """Update rms against gradient rms, log-log (probe.gradient_scale); slope 1 is SGD, 0 invariance."""
    ax = _axes(ax)
    for label, r in _named(results):
        ax.plot(r.scales, r.step, "o-", ms=3, label=label)
    ax.set(xscale="log", yscale="log", xlabel="gradient rms", ylabel="update rms", title=title)
    return _legend(ax, results)


def plot_schedule(results, ax=None, *, window: int = 1, title: str = "step size over training"):
    """rms(Δ)/rms(g) against the training fraction t/T (probe.schedule), log scale."""
    ax = _axes(ax)
    for label, r in _named(results):
        full = slice(window - 1, None)  # the full windows, each drawn at its middle
        y = trailing_mean(r.step, window)[full]
        ax.plot(np.asarray(r.fraction)[full] - (window - 1) / 2 / len(r.fraction), y, label=label)
    ax.set(yscale="log", xlabel="training fraction t / T", ylabel="step size |Δ| / |g|", title=title)
    return _legend(ax, results)


def plot_loss_trend(results, ax=None, *, title: str = "step size against the loss trend"):
    """Step size relative to a flat loss, against the loss trend ρ (probe.loss_trend)."""
    ax = _axes(ax)
    for label, r in _named(results):
        ax.plot(r.rates, r.relative, "o-", label=label)
    ax.axhline(1, color="k", lw=0.5)
    ax.set(yscale="log", xlabel="loss trend ρ (loss ∝ exp(ρ t/T))", ylabel="step / step with a flat loss",
           title=title)
    return _legend(ax, results)
