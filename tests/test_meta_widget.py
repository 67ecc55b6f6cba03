"""Lesson 07's explorer: its callback redraws, and its numbers are the facts it illustrates."""
import numpy as np

from minilopt import widgets


def test_es_explorer_callback_redraws_without_recompiling_sigma():
    explorer = widgets.es_explorer(replicas=48)
    png = explorer.update(sigma=0.05)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert explorer.values() == {"sigma": 0.05, "truncation": 10, "particles": 4}
    assert widgets.es_spread.cache_info().currsize == 1  # σ is traced: one compiled function serves every σ


def test_es_explorer_estimates_show_bias_and_unbiasedness():
    est = widgets.es_explorer(replicas=48).estimates(0.01, 10, 4)
    truth = float(est["jax.grad"])
    se = {k: v.std(ddof=1) / np.sqrt(len(v)) for k, v in est.items() if k != "jax.grad"}
    assert abs(est["PES"].mean() - truth) < 4 * se["PES"]
    assert abs(est["ES (full horizon)"].mean() - truth) < 4 * se["ES (full horizon)"]
    assert est["truncated ES"].mean() - truth > 4 * se["truncated ES"]  # short-horizon bias
