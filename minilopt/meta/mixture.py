"""Meta-train on several task families at once: the mean of their estimates.

vmap needs one shape per batch, so tasks of different shapes cannot share a
particle axis. A `Mixture` keeps one estimator per fixed-shape family (each with its
own particles and state) and, inside the same jitted call, averages their
meta-gradients:

    ĝ = (1/F) Σ_f ĝ_f(θ),    meta_loss = (1/F) Σ_f meta_loss_f

Each family weighs the same, whatever its loss scale, because every unroll already
normalises its meta-loss (see `unroll.py`).
"""
from __future__ import annotations

import jax

from .estimators import Estimator, clean


class Mixture(Estimator):
    name = "mixture"

    def __init__(self, estimators):
        estimators = tuple(estimators)
        if not estimators or not all(isinstance(e, Estimator) for e in estimators):
            raise ValueError("Mixture needs a non-empty list of estimators")
        if len({e.name for e in estimators}) != 1:
            raise ValueError(f"mix estimators of one kind, got {[e.name for e in estimators]}")
        self.parts = estimators
        self.num_particles = sum(e.num_particles for e in estimators)

    def with_sharding(self, sharding):
        new = super().with_sharding(sharding)
        new.parts = tuple(e.with_sharding(sharding) for e in self.parts)
        return new

    def config(self) -> dict:
        # The parts share the unroll's horizon, truncation and sigma: keep those at the top.
        return {**self.parts[0].config(), "estimator": f"mixture of {self.parts[0].name}",
                "num_particles": self.num_particles, "parts": [e.config() for e in self.parts]}

    def init(self, theta, key):
        return tuple(e.init(theta, jax.random.fold_in(key, i)) for i, e in enumerate(self.parts))

    def __call__(self, theta, state, key):
        grads, states, metrics = [], [], []
        for i, (e, s) in enumerate(zip(self.parts, state)):
            g, s, m = e(theta, s, jax.random.fold_in(key, i))
            grads.append(g), states.append(s), metrics.append(m)
        grad = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
        grad, bad, norm = clean(grad)
        mean = lambda k: sum(m[k] for m in metrics) / len(metrics)
        total = lambda k: sum(m[k] for m in metrics)
        return grad, tuple(states), {"meta_loss": mean("meta_loss"), "grad_norm": norm,
                                     "non_finite": total("non_finite") + bad,
                                     "non_finite_losses": total("non_finite_losses")}

    def __repr__(self):
        return f"mixture of {len(self.parts)} × {self.parts[0]!r}"
