"""Learned optimizers: shared features, VeLO, checkpoints."""
from . import features, checkpoint
from .mlp import MLPLOpt
from .lstm import LSTMLOpt
from .velo import VeLO, VeLOState, velo_optimizer, velo_step
