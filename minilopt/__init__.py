"""minilopt: optimizers that tune themselves, in small readable JAX.

    from minilopt import tasks, train, hyper, lopt, meta

- `tasks`: offline tasks and task families.          - `train`: fit, lr_sweep.
- `hyper`: hyperoptimizers of any height.            - `lopt`: learned optimizers (MLP, LSTM, VeLO).
- `meta`: unrolls, ES/PES estimators, the trainer.   - `evaluate`: speedup vs LR-tuned Adam.
- `pretrained(num_steps)`: the shipped learned optimizer.  - `viz`, `widgets`, `checks`: for the lessons.
- `guard`: loss-guarded fallback, nominal term.         - `probe`: what an optimizer learned, measured.

Each idea lives in its own module; this file only re-exports.
"""
__version__ = "0.1.0"

from . import evaluate, guard, hyper, lopt, meta, nn, probe, tasks, train, viz
from .lopt.pretrained import pretrained
from .train import fit, lr_sweep

__all__ = ["__version__", "nn", "tasks", "train", "hyper", "lopt", "meta", "evaluate", "viz", "fit", "lr_sweep",
           "pretrained", "guard", "probe"]
