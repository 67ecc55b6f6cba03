"""Learned optimizers: shared features, VeLO, checkpoints."""
from . import features
from .mlp import MLPLOpt
