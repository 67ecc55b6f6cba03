"""Meta-training: truncated unrolls, meta-gradient estimators, and the outer loop.

    unroll = TruncatedUnroll(lopt, family, horizon=200, truncation=20)
    estimator = pes(unroll, num_pairs=16, sigma=0.01)
    result = meta_train(estimator, lopt.init(key), steps=500, key=key, out="runs/pes")
"""
from .estimators import ESTIMATORS, Estimator, es, full_grad, pes, truncated_es, truncated_grad
from .trainer import load_theta, meta_train, read_metrics
from .unroll import FixedFamily, InnerState, TruncatedUnroll

__all__ = ["TruncatedUnroll", "InnerState", "FixedFamily", "Estimator", "ESTIMATORS", "full_grad", "truncated_grad",
           "es", "truncated_es", "pes", "meta_train", "load_theta", "read_metrics"]
