"""Learnable hand-designed optimizers: SGD and Adam whose hyperparameters are θ.

They have the same interface as a learned optimizer,

    theta = lopt.init(key)                       # a few scalars
    opt   = lopt.optimizer(theta, num_steps)     # an optax GradientTransformationExtraArgs

so meta-training code can be tested on them cheaply: θ has 1 to 4 numbers, and the
meta-loss as a function of θ is something we understand (for SGD on a quadratic,
a function of one learning rate). Hyperparameters are stored in unconstrained form,
so any real θ is a valid optimizer:

    lr  = exp(log_lr)          β = sigmoid(logit_β)          ε = exp(log_eps)

`num_steps` is accepted and ignored: these optimizers do not know the horizon.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def _check_theta(theta, keys, name):
    if not isinstance(theta, dict) or set(theta) != set(keys):
        got = sorted(theta) if isinstance(theta, dict) else type(theta).__name__
        raise ValueError(f"{name}: theta must be a dict with keys {sorted(keys)}, got {got}; "
                         f"build it with {name}().init(key)")


class LearnableSGD:
    """SGD (with optional fixed momentum) whose learning rate is learned: θ = {"log_lr"}."""

    def __init__(self, learning_rate: float = 0.1, momentum: float | None = None):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.learning_rate, self.momentum = learning_rate, momentum
        self.name = "sgd"

    def init(self, key=None) -> dict:
        """θ at the initial learning rate (the key is unused: nothing is random)."""
        return {"log_lr": jnp.asarray(np.log(self.learning_rate), jnp.float32)}

    def optimizer(self, theta, num_steps=None) -> optax.GradientTransformationExtraArgs:
        _check_theta(theta, ["log_lr"], "LearnableSGD")
        return optax.with_extra_args_support(optax.sgd(jnp.exp(theta["log_lr"]), momentum=self.momentum))

    def __repr__(self):
        return f"LearnableSGD(learning_rate={self.learning_rate}, momentum={self.momentum})"


class LearnableAdam:
    """Adam with all four hyperparameters learned: θ = {log_lr, logit_b1, logit_b2, log_eps}."""

    def __init__(self, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        if not (learning_rate > 0 and 0 < b1 < 1 and 0 < b2 < 1 and eps > 0):
            raise ValueError(f"need learning_rate > 0, 0 < b1, b2 < 1, eps > 0; got {learning_rate}, {b1}, {b2}, {eps}")
        self.defaults = dict(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
        self.name = "adam"

    def init(self, key=None) -> dict:
        d = self.defaults
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        return {"log_lr": f32(np.log(d["learning_rate"])), "logit_b1": f32(_logit(d["b1"])),
                "logit_b2": f32(_logit(d["b2"])), "log_eps": f32(np.log(d["eps"]))}

    def optimizer(self, theta, num_steps=None) -> optax.GradientTransformationExtraArgs:
        _check_theta(theta, ["log_lr", "logit_b1", "logit_b2", "log_eps"], "LearnableAdam")
        return optax.with_extra_args_support(optax.adam(
            jnp.exp(theta["log_lr"]), b1=jax.nn.sigmoid(theta["logit_b1"]), b2=jax.nn.sigmoid(theta["logit_b2"]),
            eps=jnp.exp(theta["log_eps"])))

    def __repr__(self):
        return "LearnableAdam(" + ", ".join(f"{k}={v}" for k, v in self.defaults.items()) + ")"
