"""The lesson-03 explorer: its callback trains, redraws and returns a PNG."""
import numpy as np

from minilopt import tasks, widgets


def test_hyper_explorer_callback_redraws_and_learns_alpha():
    task = tasks.digits_logreg(batch_size=32)
    explorer = widgets.hyper_explorer(task, steps=60)
    first = explorer.png
    assert first.startswith(b"\x89PNG")
    png = explorer.update(log10_alpha=-1.0, log10_kappa=-2.0)
    assert png.startswith(b"\x89PNG") and png != first
    assert explorer.values() == {"log10_alpha": -1.0, "log10_kappa": -2.0}
    # the frame's numbers: same first loss for both runs, and the tower's α moved off α₀
    plain, tower, alphas = (np.asarray(x) for x in explorer.curves(0.1, 0.01))
    assert plain.shape == tower.shape == alphas.shape == (60,)
    assert plain[0] == tower[0]
    assert abs(alphas[-1] - 0.1) > 1e-4
    bundle = explorer._repr_mimebundle_()
    assert "image/png" in bundle  # the static frame for non-live notebooks
