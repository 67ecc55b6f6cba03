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


# ---- lesson 03: the hyperoptimizer explorer --------------------------------------------

def hyper_explorer(task=None, steps: int = 300, seed: int = 0) -> Explorer:
    """Sliders for the initial step size α₀ and the hyper-step κ (log10 of each).

    Each redraw trains plain SGD(α₀) and the tower SGD(α₀)/SGD(κ) from the same weights
    and batches (one jitted run; α₀ and κ are traced, so moving a slider never
    recompiles) and shows both loss curves and α's trajectory."""
    import ipywidgets as widgets
    import jax
    import numpy as np

    from . import tasks
    from .hyper import rules, stack, trace

    task = task if task is not None else tasks.digits_mlp(hidden=(64,), activation="tanh", batch_size=64)
    k_init, k_run = jax.random.split(jax.random.PRNGKey(seed))
    params, keys = task.init(k_init), jax.random.split(k_run, steps)
    loss_fn = lambda p, k: task.loss(p, task.batch(k))

    @jax.jit
    def curves(alpha, kappa):
        plain = trace.run(loss_fn, params, rules.sgd(alpha), keys)
        tower = trace.run(loss_fn, params, stack(rules.sgd(alpha), rules.sgd(kappa)), keys)
        return plain.loss, tower.loss, tower.hyperparams[0]["alpha"]

    def render(log10_alpha, log10_kappa):
        alpha, kappa = 10.0 ** log10_alpha, 10.0 ** log10_kappa
        plain, tower, alphas = (np.asarray(x) for x in curves(alpha, kappa))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.5, 3))
        ax1.semilogy(plain, label=f"SGD({alpha:.1e})", alpha=0.8)
        ax1.semilogy(tower, label=f"SGD({alpha:.1e}) / SGD({kappa:.1e})", alpha=0.8)
        ax1.set_xlabel("step")
        ax1.set_ylabel("minibatch loss")
        ax1.legend(fontsize=7)
        ax2.plot(alphas, color="C1")
        ax2.axhline(alpha, color="k", ls=":", lw=1, label="α₀")
        ax2.set_xlabel("step")
        ax2.set_ylabel("α learned by the tower")
        ax2.legend(fontsize=7)
        fig.suptitle(f"{task.name}: plain SGD vs SGD/SGD", fontsize=9)
        fig.tight_layout()
        return fig

    explorer = Explorer(
        render,
        log10_alpha=widgets.FloatSlider(value=-3.0, min=-6.0, max=1.0, step=0.5, description="log10 α₀"),
        log10_kappa=widgets.FloatSlider(value=-3.0, min=-6.0, max=0.0, step=0.5, description="log10 κ"),
    )
    explorer.curves = curves  # the pure, jitted computation behind each frame (for tests)
    return explorer


# ---- lesson 05: the VeLO explorer ------------------------------------------------------

def velo_explorer(theta=None, num_steps: int = 100, span: float = 1.0, n: int = 41) -> Explorer:
    """Sliders for the training fraction t/T and the second-moment level (log10 rms).

    Each frame shows VeLO's update (what it adds to a parameter) over a grid of
    gradients g and momenta m, from `lopt.velo.update_surface` (jitted once; the
    sliders are traced values, so moving them never recompiles). `theta` defaults to
    a random H=32, P=16 VeLO."""
    import ipywidgets as widgets
    import jax
    import numpy as np

    from .lopt import velo

    theta = theta if theta is not None else velo.init_theta(jax.random.PRNGKey(0), 32, 16)

    def render(fraction, log10_rms):
        g, m, update, lr_mult = (np.asarray(x) for x in velo.update_surface(
            theta, fraction, log10_rms, span=span, n=n, num_steps=num_steps))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.5, 3.2))
        lim = float(np.abs(update).max()) or 1.0
        im = ax1.imshow(update, origin="lower", extent=(g[0], g[-1], m[0], m[-1]), cmap="RdBu_r",
                        vmin=-lim, vmax=lim, aspect="auto")
        fig.colorbar(im, ax=ax1, label="update added to p")
        ax1.set_xlabel("gradient g")
        ax1.set_ylabel("momentum m (all decays)")
        ax1.set_title(f"t/T = {fraction:.2f}, rms = 1e{log10_rms:+.1f}, lr_mult = {float(lr_mult):.3g}", fontsize=9)
        for row in (0, n // 2, n - 1):
            ax2.plot(g, update[row], label=f"m = {m[row]:+.2f}")
        ax2.axhline(0, color="k", lw=0.5)
        ax2.set_xlabel("gradient g")
        ax2.set_ylabel("update")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        return fig

    explorer = Explorer(
        render,
        fraction=widgets.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.05, description="t / T"),
        log10_rms=widgets.FloatSlider(value=-2.0, min=-6.0, max=1.0, step=0.5, description="log10 rms"),
    )
    explorer.surface = lambda fraction, log10_rms: velo.update_surface(
        theta, fraction, log10_rms, span=span, n=n, num_steps=num_steps)
    return explorer


# ---------------------------------------------------------------------------
# Lesson 07: bias and variance of ES, truncated ES and PES
# ---------------------------------------------------------------------------
import functools  # noqa: E402


@functools.lru_cache(maxsize=8)  # one compile per (K, N): moving σ never recompiles
def es_spread(truncation: int, particles: int, replicas: int, horizon: int = 100):
    """A jitted `(sigma, key) -> {name: (replicas,) estimates}` of dL/dlog_lr for SGD on a
    fixed quadratic (lesson 07's problem), and the exact gradient under "jax.grad".
    Truncated estimators are averaged over one whole episode (horizon / truncation calls)."""
    import jax

    from . import tasks
    from .lopt.hand import LearnableSGD
    from .meta import estimators
    from .meta.unroll import TruncatedUnroll

    lopt = LearnableSGD(0.3)
    theta = lopt.init()
    unroll = TruncatedUnroll(lopt, tasks.quadratic(dim=10, condition=100.0, init_scale=0.0), horizon, truncation,
                             stagger=False, clip=1e6)

    @jax.jit
    def spread(sigma, key):
        keys = jax.random.split(key, replicas)
        exact = estimators.full_grad(unroll, 1)(theta, (), key)[0]["log_lr"]
        episodes = lambda est, calls: estimators.episode_estimates(est, theta, keys, calls)["log_lr"]  # noqa: E731
        return {"ES (full horizon)": episodes(estimators.es(unroll, particles, sigma), 1),
                "truncated ES": episodes(estimators.truncated_es(unroll, particles, sigma), horizon // truncation),
                "PES": episodes(estimators.pes(unroll, particles, sigma), horizon // truncation),
                "jax.grad": exact}

    return spread


def es_explorer(replicas: int = 64):
    """Sliders for σ, the truncation K and the number of antithetic pairs N. Each frame
    shows `replicas` independent estimates of dL/dlog_lr from full-horizon ES, truncated
    ES and PES (T = 100, SGD on a fixed quadratic), against jax.grad of the whole unroll:
    PES centres on the truth, truncated ES does not, and N trades variance for compute."""
    import ipywidgets as widgets
    import jax
    import numpy as np

    def estimates(sigma, truncation, particles):
        out = es_spread(int(truncation), int(particles), replicas)(float(sigma), jax.random.PRNGKey(0))
        return {k: np.asarray(v, np.float64) for k, v in out.items()}

    def render(sigma, truncation, particles):
        est = estimates(sigma, truncation, particles)
        truth = float(est.pop("jax.grad"))
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        for i, (name, x) in enumerate(est.items()):
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(x))
            ax.plot(np.full(len(x), i) + jitter, x, ".", alpha=0.35)
            se = x.std(ddof=1) / np.sqrt(len(x))
            ax.errorbar([i + 0.3], [x.mean()], yerr=[4 * se], fmt="ks", capsize=4)
            ax.text(i, x.max(), f"std {x.std(ddof=1):.3f}", ha="center", va="bottom", fontsize=8)
        ax.axhline(truth, color="crimson", lw=1.5, label=f"jax.grad of the whole unroll = {truth:.4f}")
        ax.set_xticks(range(len(est)), list(est))
        ax.set_ylabel("estimate of dL / d log lr")
        ax.set_title(f"σ = {sigma:.3g}, K = {truncation}, N = {particles} pairs; {replicas} estimates each "
                     "(black: mean ± 4 SE)", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        return fig

    explorer = Explorer(
        render,
        sigma=widgets.FloatLogSlider(value=0.01, base=10, min=-3, max=-0.5, step=0.25, description="σ"),
        truncation=widgets.SelectionSlider(options=[5, 10, 20, 50], value=10, description="K"),
        particles=widgets.SelectionSlider(options=[1, 2, 4, 8, 16], value=4, description="pairs N"),
    )
    explorer.estimates = estimates
    return explorer
