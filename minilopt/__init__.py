"""minilopt: optimizers that tune themselves, in small readable JAX.

    from minilopt import tasks, train, hyper, lopt, meta

- `tasks`: offline tasks and task families.          - `train`: fit, lr_sweep.
- `hyper`: hyperoptimizers of any height.            - `lopt`: learned optimizers (MLP, LSTM, VeLO).
- `meta`: unrolls, ES/PES estimators, the trainer.   - `viz`, `widgets`, `checks`: for the lessons.

Each idea lives in its own module; this file only re-exports.
"""
__version__ = "0.1.0"

from . import hyper, lopt, meta, nn, tasks, train, viz
from .train import fit, lr_sweep

__all__ = ["__version__", "nn", "tasks", "train", "hyper", "lopt", "meta", "viz", "fit", "lr_sweep"]
