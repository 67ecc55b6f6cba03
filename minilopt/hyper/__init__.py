"""Hyperoptimizers ("Gradient Descent: The Ultimate Optimizer", Chandra et al. 2022).

    from minilopt import hyper
    opt = hyper.stack(hyper.adam(1e-3), hyper.sgd(1e-5))         # Adam / SGD
    opt = hyper.hyperoptimize(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
                              by=optax.sgd(1e-5))                 # any optax optimizer

`rules`: the paper's update rules with raw, differentiable hyperparameters.
`tower`: hyperoptimize / stack, the paper's method (reverse mode).
`forward`: the same hypergradient in forward mode (`mode="forward"`, or "auto").
`fast`: the forms XLA runs fastest of a few plain functions, each tested equal to it.
`trace`: the read-outs hyperparams / hypergrads, and runs that record them every step.
`lopt_scale`: scaled(opt), a learned optimizer's step multiplier as a hyperparameter to learn.
"""
from . import fast, forward, lopt_scale, rules, tower, trace
from .lopt_scale import scaled
from .rules import RuleState, adagrad, adam, rmsprop, sgd, sgd_per_param, values
from .forward import ForwardState
from .tower import HyperState, ReverseState, hyperoptimize, learned_names, stack
from .trace import Trajectory, hypergrads, hyperparams, run, trajectory

__all__ = ["rules", "tower", "forward", "fast", "trace", "lopt_scale",
           "RuleState", "values", "sgd", "sgd_per_param", "adagrad", "rmsprop", "adam",
           "HyperState", "ReverseState", "ForwardState", "hyperoptimize", "stack", "learned_names",
           "hyperparams", "hypergrads", "Trajectory", "run", "trajectory", "scaled"]
