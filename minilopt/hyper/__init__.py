"""Hyperoptimizers ("Gradient Descent: The Ultimate Optimizer", Chandra et al. 2022).

    from minilopt import hyper
    opt = hyper.stack(hyper.adam(1e-3), hyper.sgd(1e-5))         # Adam / SGD
    opt = hyper.hyperoptimize(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
                              by=optax.sgd(1e-5))                 # any optax optimizer

`rules`: the paper's update rules with raw, differentiable hyperparameters.
`stack`: hyperoptimize / stack, the read-outs hyperparams and hypergrads.
`trace`: training runs that record every level's hyperparameters.
`lopt_scale`: scaled(opt), a learned optimizer's step multiplier as a hyperparameter to learn.
"""
from . import lopt_scale, rules, trace
from .lopt_scale import scaled
from .rules import RuleState, adagrad, adam, rmsprop, sgd, sgd_per_param, values
from .stack import HyperState, hypergrads, hyperoptimize, hyperparams, learned_names, stack
from .trace import Trajectory, run, trajectory

__all__ = ["rules", "trace", "RuleState", "values", "sgd", "sgd_per_param", "adagrad", "rmsprop", "adam",
           "HyperState", "hyperoptimize", "stack", "hyperparams", "hypergrads", "learned_names",
           "Trajectory", "run", "trajectory", "lopt_scale", "scaled"]
