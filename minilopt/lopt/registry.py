"""Every learned optimizer of minilopt, by name: the one list that the command line
(`minilopt meta-train --lopt NAME`), `minilopt.pretrained` and `minilopt.evaluate` use.

    lopt = registry.make("velo", {"hidden": 32, "mixtures": 16})
    registry.name_of(lopt)        # "velo"

A name is the short command-line one ("mlp", "velo", ...); the class name
("MLPLOpt", "VeLO", ...) is accepted too, as older weight files record it.
"""
from __future__ import annotations

import inspect

from .hand import LearnableAdam, LearnableSGD
from .lstm import LSTMLOpt
from .mlp import MLPLOpt
from .scheduled import ScheduledLOpt
from .velo import VeLO

LOPTS = {
    "mlp": MLPLOpt,              # per-parameter MLP (small_fc_lopt style)
    "scheduled": ScheduledLOpt,  # Adam + learned correction, times a learned global schedule
    "velo": VeLO,                # per-tensor LSTM writing a per-parameter MLP
    "lstm": LSTMLOpt,            # L2L coordinate-wise LSTM
    "sgd": LearnableSGD,         # SGD with a learnable rate (and momentum)
    "adam": LearnableAdam,       # Adam with learnable hyperparameters
}
_BY_CLASS = {cls.__name__: name for name, cls in LOPTS.items()}


def canonical(name: str) -> str:
    """The registry name for `name` (a registry or a class name); ValueError listing the names."""
    if isinstance(name, str) and name in LOPTS:
        return name
    if isinstance(name, str) and name in _BY_CLASS:
        return _BY_CLASS[name]
    raise ValueError(f"unknown learned optimizer {name!r}; choose one of {sorted(LOPTS)}")


def make(name: str, kwargs: dict | None = None):
    """The learned optimizer `name` built with `kwargs`; a ValueError names an unknown
    name or argument and lists what is accepted."""
    cls = LOPTS[canonical(name)]
    if not isinstance(kwargs or {}, dict):
        raise ValueError(f"the arguments of {name!r} must be a dict of keyword arguments, got {kwargs!r}")
    kwargs = dict(kwargs or {})
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.__name__} has no argument(s) {unknown}; it accepts {accepted}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"cannot build {cls.__name__}(**{kwargs}): {e}") from None


def name_of(lopt) -> str:
    """The registry name of a learned optimizer object."""
    return canonical(type(lopt).__name__)
