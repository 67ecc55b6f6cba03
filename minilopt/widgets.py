"""ipywidgets explorers for the lessons.

An explorer is sliders plus a pure `render(**values) -> matplotlib Figure`. The
widget only reads the sliders and calls `render`; all the work is in pure, tested
functions. Each explorer also carries a PNG of its first frame in its display
bundle, so a notebook that is not live (nbval, a static viewer) still shows a frame.

Lessons add their explorer factories at the end of this file.
"""
from __future__ import annotations

import base64
import io
from typing import Callable

import matplotlib.pyplot as plt


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (and closes it, so notebooks don't draw it twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class Explorer:
    """Sliders wired to `render`. `explorer.update(**values)` is the callback, public
    so tests can drive it without a browser; it returns the figure's PNG bytes."""

    def __init__(self, render: Callable, **sliders):
        import ipywidgets as widgets

        self.render = render
        self.sliders = sliders
        self.image = widgets.Image(format="png")
        self._busy = False
        for slider in sliders.values():
            slider.observe(lambda _change: self._redraw(), names="value")
        self.box = widgets.VBox([*sliders.values(), self.image])
        self.update()

    def values(self) -> dict:
        return {name: s.value for name, s in self.sliders.items()}

    def update(self, **values) -> bytes:
        """Set any given slider values, redraw, and return the PNG bytes."""
        for name in values:
            if name not in self.sliders:
                raise ValueError(f"unknown slider {name!r}; this explorer has {sorted(self.sliders)}")
        self._busy = True  # setting several sliders should redraw once, not once each
        try:
            for name, value in values.items():
                self.sliders[name].value = value
        finally:
            self._busy = False
        return self._redraw()

    def _redraw(self) -> bytes:
        if not self._busy:
            self.png = figure_png(self.render(**self.values()))
            self.image.value = self.png
        return self.png

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs) or {}
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle)
        bundle["image/png"] = base64.b64encode(self.png).decode("ascii")  # the static frame
        return bundle
