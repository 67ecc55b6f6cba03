"""The explorer base and the plot helpers."""
import matplotlib

matplotlib.use("Agg")
import base64  # noqa: E402
import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minilopt import viz, widgets  # noqa: E402
from minilopt.train import SweepResult  # noqa: E402


def test_explorer_renders_once_per_update_and_keeps_a_static_frame():
    calls = []

    def render(a, b):
        calls.append((a, b))
        fig, ax = plt.subplots()
        ax.plot([0, 1], [a, b])
        return fig

    ex = widgets.Explorer(render, a=ipywidgets.FloatSlider(value=1.0), b=ipywidgets.IntSlider(value=2))
    assert calls == [(1.0, 2)]
    png = ex.update(a=3.0, b=4)
    assert calls[-1] == (3.0, 4) and len(calls) == 2          # one redraw for two sliders
    assert png.startswith(b"\x89PNG")
    ex.sliders["a"].value = 5.0                                # a user dragging a slider redraws too
    png_after_drag = ex.png
    assert calls[-1] == (5.0, 4)
    assert base64.b64decode(ex._repr_mimebundle_()["image/png"]) == ex.png == png_after_drag
    with pytest.raises(ValueError, match="unknown slider 'c'"):
        ex.update(c=1)


def test_plot_curves_draws_the_trailing_mean_at_the_step_it_ends():
    # window 2 over [1, 2, 3, 4, nan, 6]: nothing at step 0, (1+2)/2 at step 1, ..., nothing from the stop on
    ax = viz.plot_curves({"run": [1.0, 2.0, 3.0, 4.0, np.nan, 6.0]}, window=2, log=False)
    x, y = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    np.testing.assert_array_equal(x, np.arange(6))
    np.testing.assert_allclose(y, [np.nan, 1.5, 2.5, 3.5, np.nan, np.nan])
    plt.close("all")


def test_plot_lr_sweep_marks_the_best_and_the_diverged():
    sweep = SweepResult(np.array([1e-3, 1e-2, 1e-1]), np.zeros((3, 4)), np.array([0, 4]), np.zeros((3, 2)),
                        np.array([0.5, 0.1, np.inf]), np.array([-1, -1, 2]), 1, 1e-2)
    ax = viz.plot_lr_sweep(sweep)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "diverged" in labels and any("best lr = 0.01" in s for s in labels)
    plt.close("all")
