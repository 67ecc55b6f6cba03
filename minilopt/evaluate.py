"""Does a learned optimizer beat learning-rate-tuned Adam on tasks it never saw?

The VeLO-style evaluation, at the scale of this course:

    tasks   = suite()                                    # >= 20 held-out tasks, labelled
    results = evaluate(lambda T: pretrained(T), tasks, key)
    print(speedup_table(results)); plot_cdf(results)

**The suite.** "in-family" tasks are held-out draws of the families the optimizer
was meta-trained on (`suite(in_family=...)` names them): `RandomFamily`'s held-out
split (widths 24/48, batch size 64, which the training split never samples; init
scales from held-out keys), `QuadraticFamily`'s held-out split, or held-out draws
of one meta-trained `ImageFamily` structure. "out-of-family" tasks change something
the families never contained: the dataset and architecture (the character LSTM LM),
the depth or width (logistic regression, a 3-layer MLP, width 256, a 3-layer CNN),
the activation, the batch size, the init scale, the noise of a quadratic, its
dimension and conditioning, and the horizon (4x the budget). Every entry has a
fixed step budget T.

**The baselines.** Adam tuned per task over a log-spaced grid of learning rates
(13 from 1e-4 to 1, extended past an edge while the best rate sits on it), with
`train.lr_sweep`: the rate with the lowest final training loss wins. Twice: at a
constant rate (VeLO's headline baseline), and with 5% linear warmup then cosine
decay to 0 at T (what a practitioner would pick; a learned optimizer learns a
schedule, and this row shows how much of a win is "just a schedule"). The same T,
the same initial parameters and the same batches as the learned optimizer (one key
per task). Adam at its default 1e-3 is reported too.

**The measure** (one rule for every task and either baseline):

1. Smooth both training curves with the same trailing moving average over full
   windows, S(t) = mean(loss[t-w+1 .. t]) for t >= w, w = ceil(T/10). The final
   loss is L = S(T) (= `train.final_loss`, the number Adam is tuned on). n_X(l) is
   the first t >= w with S_X(t) <= l.
2. The learned optimizer ends lower or equal (L_lopt <= L_adam):
       speedup = T / n_lopt(L_adam)   (>= 1: it matched tuned Adam in that many times fewer steps)
   Tuned Adam ends lower:
       speedup = n_adam(L_lopt) / T   (< 1: Adam matched it in that fraction of the budget)
   Equal final losses score exactly 1.
3. The optimizer that ends worse is always charged the whole budget T: it needed
   all of it to end where it ended. (Charging it its first hit of its own final
   loss instead credits a learned optimizer that stalls early, and reports a win
   where tuned Adam ends orders of magnitude lower.)
4. A learned optimizer that diverges (a non-finite loss) scores 0. If every Adam
   rate diverges, the score is T/w, flagged.
5. The range is [w/T, T/w] = [0.1, 10]. A value at the top (n_lopt = w) is flagged
   `speedup_is_lower_bound` (it may be faster still), one at the bottom (n_adam = w)
   `speedup_is_upper_bound`.

Per task we also report log10(L_lopt / L_adam), the final-loss ratio, and the same
on the held-out eval loss. Over a group of tasks: the fraction with speedup > 1,
>= 2 and >= 4, the median, the interquartile mean (IQM: the mean of the middle 50%)
and the number that diverged, for "in-family" and "out-of-family" apart.
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import time
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax

from . import tasks as T
from . import train

GROUPS = ("in-family", "out-of-family")
ADAM_LRS = tuple(float(x) for x in np.logspace(-4, 0, 13))   # 10^(k/3): 1e-4 ... 1, 1e-3 included
DEFAULT_ADAM_LR = 1e-3
CURVE_POINTS = 200        # smoothed curves are stored at this many evenly spaced steps
MEASURE = ("w = ceil(T/10); S = trailing mean over full windows of w steps; L = S(T); n_X(l) = first t >= w "
           "with S_X(t) <= l. If L_lopt <= L_adam: speedup = T / n_lopt(L_adam); else speedup = n_adam(L_lopt) / T; "
           "equal final losses: 1. Diverged learned optimizer: 0; every Adam rate diverged: T/w. Range [w/T, T/w]; "
           "values at either end are flagged as bounds. A learned optimizer that ends above its loss at step 0 "
           "(L_lopt > its first loss, finite) is counted apart: it blew up, whatever its speedup.")
SCHEDULES = ("constant", "cosine")   # the two tuned-Adam baselines


class SuiteTask(NamedTuple):
    """One evaluation task: `task`, trained for `steps` steps; `group` is
    "in-family" or "out-of-family"; `note` says what is held out or new."""
    name: str
    task: Any
    steps: int
    group: str
    note: str


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------
def heldout_structures(family: T.RandomFamily, quotas: dict, max_seeds: int = 200) -> list:
    """Distinct held-out structures of `family`, the first draws by seed, at most
    `quotas[(dataset, model)]` of each kind: [(seed, ImageFamily), ...]."""
    picked, names, count = [], set(), {kind: 0 for kind in quotas}
    for seed in range(max_seeds):
        structure = family.structure(jax.random.PRNGKey(seed), "heldout")
        kind = (structure.dataset, structure.model)
        if kind in quotas and count[kind] < quotas[kind] and structure.name not in names:
            picked.append((seed, structure))
            names.add(structure.name)
            count[kind] += 1
        if count == quotas:
            break
    return picked


def _heldout_draws(steps, in_family, quotas, num_quadratics, structure_draws):
    """Held-out draws of the course's families: labelled "in-family" only where that
    family is among the meta-training families `in_family`."""
    family, quadratics = T.RandomFamily(), T.QuadraticFamily()
    label = lambda trained: "in-family" if trained else "out-of-family"
    untrained = "" if "random" in in_family else "; RandomFamily was not meta-trained on"
    entries = []
    for seed, structure in heldout_structures(family, quotas):
        task = structure.sample(jax.random.PRNGKey(seed), "heldout")
        entries.append(SuiteTask(f"heldout/{structure.name}", task, steps, label("random" in in_family),
                                 f"RandomFamily held-out draw (seed {seed}): width and batch size never "
                                 f"sampled in its training split{untrained}"))
    for seed in range(num_quadratics):
        task = quadratics.sample(jax.random.PRNGKey(seed), "heldout")
        entries.append(SuiteTask(f"heldout/quadratic_{quadratics.dim}d_s{seed}", task, steps,
                                 label("quadratic" in in_family), f"QuadraticFamily held-out draw (seed {seed})"
                                 + ("" if "quadratic" in in_family else "; not meta-trained on")))
    for structure in (f for f in in_family if isinstance(f, T.ImageFamily)):
        for seed in range(structure_draws):
            entries.append(SuiteTask(f"heldout/{structure.name}_s{seed}",
                                     structure.sample(jax.random.PRNGKey(seed), "heldout"), steps, "in-family",
                                     f"held-out draw (seed {seed}) of the meta-trained structure: new init scale "
                                     "and initial weights, new batches"))
    return entries


def _out_of_family(steps, quick):
    o = lambda name, task, note, mult=1: SuiteTask(name, task, mult * steps, "out-of-family", note)
    entries = [
        o("digits_logreg", T.digits_logreg(), "no hidden layer (family: 1-2 layers)"),
        o("noisy_quadratic", T.noisy_quadratic(dim=10, noise=1.0, batch_size=8), "noisy targets (family: noise-free)"),
    ]
    if quick:
        return entries
    return entries + [
        o("digits_mlp_deep", T.digits_mlp(hidden=(64, 64, 64), activation="relu"), "depth 3"),
        o("digits_mlp_wide", T.digits_mlp(hidden=(256,), activation="tanh"), "width 256"),
        o("digits_mlp_batch8", T.digits_mlp(hidden=(32,), activation="relu", batch_size=8), "batch size 8"),
        o("mnist1d_mlp_100x100", T.mnist1d_mlp(), "the standard MNIST-1D MLP, width 100"),
        o("mnist1d_cnn_deep", T.mnist1d_cnn(channels=(32, 32, 32)), "3 conv layers of 32 channels"),
        o("mnist1d_mlp_swish_init3", T.mnist1d_mlp(hidden=(64,), activation="swish", init_scale=3.0),
          "swish activation, init scale 3 (family: 0.5-2)"),
        o("char_lm", T.char_lm(), "LSTM language model on text: new data, new architecture"),
        o("char_lm_wide", T.char_lm(embed=64, hidden=128), "a wider LSTM language model"),
        o("quadratic_100d_cond1e4", T.quadratic(dim=100, condition=1e4), "dimension 100, condition 1e4"),
        o("digits_mlp_48_long", T.digits_mlp(hidden=(48,), activation="tanh", batch_size=64),
          "4x the step budget (the trained horizon)", mult=4),
        o("digits_mlp_48_long10x", T.digits_mlp(hidden=(48,), activation="tanh", batch_size=64),
          "10x the step budget", mult=10),
        o("char_transformer", T.char_transformer(), "a causal transformer LM (2 blocks, 4 heads): attention, "
          "layer norm, never seen"),
        o("breast_cancer_mlp", T.tabular_mlp("breast_cancer"), "tabular data: 30 standardised features, 2 classes"),
        o("digits_autoencoder", T.digits_autoencoder(), "an MLP autoencoder 64-32-8-32-64, squared error: a new "
          "objective"),
        o("mnist1d_cnn_wide", T.mnist1d_cnn(channels=(64, 64), name="mnist1d_cnn_wide"),
          "64 channels (family: at most 16)"),
        o("mnist1d_mlp_100k", T.mnist1d_mlp(hidden=(300, 300), name="mnist1d_mlp_100k"),
          "105,610 parameters (family: under 20k)"),
    ]


def suite(steps: int = 1000, *, quick: bool = False, in_family=("random", "quadratic")) -> list[SuiteTask]:
    """The evaluation suite: 12 held-out draws and 18 out-of-family tasks (`quick`: 2 + 2, for a CPU).

    `in_family` names the families the optimizer was meta-trained on: "random"
    (`RandomFamily`) and/or "quadratic" (`QuadraticFamily`); their held-out draws
    are labelled "in-family", the others "out-of-family". It may also hold
    fixed-shape `ImageFamily` objects (what `minilopt meta-train --family random`
    trains on: one structure): 4 held-out draws of each (1 if `quick`) are added as
    in-family tasks."""
    if not (isinstance(steps, int) and steps >= 10):
        raise ValueError(f"steps must be an int >= 10 (the step budget), got {steps!r}")
    for f in in_family:
        if not (f in ("random", "quadratic") or isinstance(f, T.ImageFamily)):
            raise ValueError(f"in_family entries are 'random', 'quadratic' or ImageFamily objects, got {f!r}")
    quotas = ({("digits", "mlp"): 1} if quick else
              {("digits", "mlp"): 4, ("mnist1d", "mlp"): 3, ("mnist1d", "cnn"): 3})
    entries = _heldout_draws(steps, tuple(in_family), quotas, 1 if quick else 2, 1 if quick else 4)
    return entries + _out_of_family(steps, quick)


def meta_training_families(recipe: dict | None) -> tuple:
    """`suite(in_family=...)` for an optimizer meta-trained with `recipe` (the config of
    `minilopt meta-train`, stored in the pretrained weights' config.json). No recipe:
    the default ("random", "quadratic")."""
    if recipe is None:
        return ("random", "quadratic")
    family = recipe.get("family")
    if family == "random" and recipe.get("structures", 1) > 1:
        return ("random",)
    if family == "quadratic":
        return ("quadratic",)
    # one fixed-shape family, drawn exactly as `minilopt meta-train` draws it
    return (T.fixed_shape_family(family, recipe.get("family_args"), recipe.get("seed", 0)),)


# ---------------------------------------------------------------------------
# The measure
# ---------------------------------------------------------------------------
def default_window(steps: int) -> int:
    """w = ceil(T/10): the smoothed last value is then `train.final_loss`."""
    return max(1, math.ceil(steps / 10))


def trailing_mean(curve, window: int) -> np.ndarray:
    """Trailing moving average over full windows: S[i] = mean(curve[i-w+1 : i+1]) for
    i >= w-1, NaN before (float64, same length as `curve`). Each window is summed on
    its own, so equal windows give bitwise-equal means (a flat curve stays flat). A
    NaN in the curve (a stopped run) makes every later value NaN: a stopped run never
    "reaches" a loss. The measure's S, and what `viz` draws as a smoothed curve."""
    c = np.asarray(curve, np.float64)
    if not (isinstance(window, (int, np.integer)) and window >= 1):
        raise ValueError(f"window must be a positive int, got {window!r}")
    out = np.full(c.shape, np.nan)
    if len(c) >= window:
        out[window - 1:] = np.lib.stride_tricks.sliding_window_view(c, window).mean(axis=-1)
    bad = np.flatnonzero(np.isnan(c))
    if bad.size:
        out[bad[0]:] = np.nan
    return out


def steps_to_reach(smoothed, level: float) -> int | None:
    """The first step count n (1-based) with smoothed[n-1] <= level, or None."""
    hit = np.flatnonzero(np.asarray(smoothed) <= level)
    return int(hit[0]) + 1 if hit.size else None


class Speedup(NamedTuple):
    speedup: float          # the module's measure (0 if the learned optimizer diverged)
    target_loss: float      # the loss the better optimizer had to match: the worse final loss
    steps_adam: int | None  # n_adam(L_lopt) if Adam ends lower, else T (None if Adam diverged)
    steps_lopt: int | None  # n_lopt(L_adam) if the learned optimizer ends lower or equal, else T
    final_adam: float       # smoothed last value (inf if diverged)
    final_lopt: float
    lower_bound: bool       # at the top of the range: the true speedup may be larger
    upper_bound: bool = False   # at the bottom of the range: the true speedup may be smaller


def _final(smoothed) -> float:
    last = float(smoothed[-1]) if len(smoothed) else math.nan
    return last if math.isfinite(last) else math.inf


def speedup(adam_curve, lopt_curve, window: int | None = None) -> Speedup:
    """The module's measure on two raw training curves of equal length T (see the module doc)."""
    adam_curve, lopt_curve = np.asarray(adam_curve, np.float64), np.asarray(lopt_curve, np.float64)
    if adam_curve.shape != lopt_curve.shape or adam_curve.ndim != 1 or len(adam_curve) < 1:
        raise ValueError(f"need two 1-D curves of the same length, got shapes {adam_curve.shape} "
                         f"and {lopt_curve.shape}")
    steps = len(adam_curve)
    window = window or default_window(steps)
    if window > steps:
        raise ValueError(f"the smoothing window ({window}) is longer than the curves ({steps} steps)")
    s_adam, s_lopt = trailing_mean(adam_curve, window), trailing_mean(lopt_curve, window)
    final_adam, final_lopt = _final(s_adam), _final(s_lopt)
    if math.isinf(final_lopt):
        return Speedup(0.0, math.inf, None, None, final_adam, final_lopt, False)
    if math.isinf(final_adam):
        return Speedup(steps / window, final_lopt, None, window, final_adam, final_lopt, True)
    if final_lopt == final_adam:
        return Speedup(1.0, final_adam, steps, steps, final_adam, final_lopt, False)
    if final_lopt < final_adam:
        n_lopt = steps_to_reach(s_lopt, final_adam)
        return Speedup(steps / n_lopt, final_adam, steps, n_lopt, final_adam, final_lopt, n_lopt == window)
    n_adam = steps_to_reach(s_adam, final_lopt)
    return Speedup(n_adam / steps, final_lopt, n_adam, steps, final_adam, final_lopt, False, n_adam == window)


def iqm(values) -> float | None:
    """The interquartile mean: the mean of the middle 50% of the sorted values (a
    quarter of the values, in fractions where n is not a multiple of 4, is cut from
    each end and the rest weighed by how much of it lies inside)."""
    v = np.sort(np.asarray(list(values), np.float64))
    n = v.size
    if n == 0:
        return None
    # value i covers [i, i+1) of [0, n); keep the overlap of each with [n/4, 3n/4)
    lo, hi = n / 4, 3 * n / 4
    idx = np.arange(n)
    weight = np.clip(np.minimum(idx + 1, hi) - np.maximum(idx, lo), 0.0, 1.0)
    return float(np.sum(weight * v) / np.sum(weight))


def summarize(speedups: Sequence[float]) -> dict:
    """Fraction of tasks with speedup > 1, >= 2 and >= 4, the median, the IQM and how
    many diverged (speedup 0); None where there are no tasks."""
    s = np.asarray(list(speedups), np.float64)
    if s.size == 0:
        return {"tasks": 0, "faster_than_1x": None, "at_least_2x": None, "at_least_4x": None, "median": None,
                "iqm": None, "diverged": 0}
    return {"tasks": int(s.size), "faster_than_1x": float(np.mean(s > 1)), "at_least_2x": float(np.mean(s >= 2)),
            "at_least_4x": float(np.mean(s >= 4)), "median": float(np.median(s)), "iqm": iqm(s),
            "diverged": int(np.sum(s == 0))}


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------
def task_key(key, name: str):
    """One key per task, from its name: a subset of the suite gives the same numbers."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def adam_with_schedule(schedule: str, steps: int) -> Callable:
    """lr -> Adam for a run of `steps`: at a constant rate, or with 5% linear warmup
    from 0 and then cosine decay to 0 at `steps`."""
    if schedule == "constant":
        return optax.adam
    if schedule == "cosine":
        warmup = max(1, math.ceil(0.05 * steps))
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps, 0.0)   # peak 1; lr may be traced
        return lambda lr: optax.adam(lambda count: lr * unit(count))
    raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")


def tuned_adam(task, steps: int, key, learning_rates=ADAM_LRS, *, schedule: str = "constant",
               max_extensions: int = 2):
    """`train.lr_sweep` of Adam (`schedule`: "constant" or "cosine"); while the best
    rate sits on an edge of the grid, the grid grows by 3 rates (same log spacing)
    past that edge, at most `max_extensions` times. Returns the SweepResult of the
    final grid."""
    lrs = np.sort(np.asarray(learning_rates, np.float64))
    if len(lrs) < 10:
        raise ValueError(f"tune Adam over at least 10 learning rates, got {len(lrs)}")
    make = adam_with_schedule(schedule, steps)
    ratio = lrs[1] / lrs[0]
    for extension in range(max_extensions + 1):
        sweep = train.lr_sweep(task, make, lrs, steps, key, eval_every=steps)
        if extension == max_extensions or 0 < sweep.best_index < len(lrs) - 1:
            return sweep
        grow = lrs[-1] * ratio ** np.arange(1, 4) if sweep.best_index else lrs[0] / ratio ** np.arange(3, 0, -1)
        lrs = np.sort(np.concatenate([lrs, grow]))
    return sweep


def adam_baselines(entry: SuiteTask, key, learning_rates=ADAM_LRS) -> dict:
    """{schedule: SweepResult} of tuned Adam on one suite entry, with the task's key."""
    key = task_key(key, entry.name)
    return {schedule: tuned_adam(entry.task, entry.steps, key, learning_rates, schedule=schedule)
            for schedule in SCHEDULES}


def _downsample(curve, points=CURVE_POINTS):
    curve = np.asarray(curve, np.float64)
    idx = np.unique(np.linspace(0, len(curve) - 1, min(points, len(curve))).round().astype(int))
    return idx, curve[idx]


def _num(x):
    """A JSON-safe float: None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def _listed(a, digits=6):
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in np.asarray(a, np.float64)]


def log_ratio(lopt_loss, adam_loss):
    """log10(lopt_loss / adam_loss), None unless both are finite and positive."""
    ok = all(x is not None and math.isfinite(x) and x > 0 for x in (lopt_loss, adam_loss))
    return math.log10(lopt_loss / adam_loss) if ok else None


def _against(sweep, lopt_run, window) -> tuple[Speedup, dict]:
    """The measure against one tuned-Adam sweep, and its JSON row."""
    best = sweep.best_index
    measure = speedup(sweep.train_loss[best], lopt_run.train_loss, window)
    lopt_eval, adam_eval = _num(lopt_run.eval_loss[-1]), _num(sweep.eval_loss[best, -1])
    lrs = np.asarray(sweep.learning_rates, np.float64)
    return measure, {
        "speedup": measure.speedup, "speedup_is_lower_bound": measure.lower_bound,
        "speedup_is_upper_bound": measure.upper_bound, "target_loss": _num(measure.target_loss),
        "steps_adam": measure.steps_adam, "steps_lopt": measure.steps_lopt,
        "final_loss_ratio_log10": log_ratio(_num(measure.final_lopt), _num(measure.final_adam)),
        "eval_loss_ratio_log10": log_ratio(lopt_eval, adam_eval),
        "adam": {"lr": float(lrs[best]), "final_train": _num(measure.final_adam), "final_eval": adam_eval,
                 "best_at_edge": best in (0, len(lrs) - 1)}}


def evaluate_task(optimizer_factory: Callable[[int], Any], entry: SuiteTask, key, *,
                  learning_rates=ADAM_LRS, window: int | None = None, baselines: dict | None = None) -> dict:
    """One task: the learned optimizer's run against tuned Adam at a constant rate
    (the top-level "speedup" and "adam") and with warmup + cosine decay ("cosine",
    "adam_cosine"), plus Adam at 1e-3. `baselines` ({schedule: SweepResult}, from
    `adam_baselines`) skips the sweeps."""
    if entry.group not in GROUPS:
        raise ValueError(f"suite entry {entry.name!r} has group {entry.group!r}; use one of {GROUPS}")
    t0 = time.perf_counter()
    # one eval at the end (eval_every=steps): a single scan compiles several times faster
    lopt = train.fit(entry.task, optimizer_factory(entry.steps), entry.steps, task_key(key, entry.name),
                     eval_every=entry.steps)
    sweeps = baselines or adam_baselines(entry, key, learning_rates)
    constant = sweeps["constant"]
    lrs = np.asarray(constant.learning_rates, np.float64)
    default = int(np.argmin(np.abs(np.log(lrs / DEFAULT_ADAM_LR))))
    if not np.isclose(lrs[default], DEFAULT_ADAM_LR, rtol=1e-4):
        raise ValueError(f"the Adam grid must contain the default rate {DEFAULT_ADAM_LR}; got {lrs}")
    window = window or default_window(entry.steps)
    measure, row = _against(constant, lopt, window)
    _, cosine = _against(sweeps["cosine"], lopt, window)
    adam_cosine = cosine.pop("adam")
    steps_idx, lopt_curve = _downsample(trailing_mean(lopt.train_loss, window))
    smoothed = lambda curve: _listed(trailing_mean(curve, window)[steps_idx])
    final = lambda i: _num(_final(trailing_mean(constant.train_loss[i], window)))
    # a finite loss far above where training began is a blow-up that the measure's
    # lower bound (w/T) would hide among merely slow runs: it is flagged on its own
    initial, final_lopt = _num(lopt.train_loss[0]), _num(measure.final_lopt)
    ended_above_start = initial is not None and final_lopt is not None and final_lopt > initial
    return {
        "name": entry.name, "group": entry.group, "note": entry.note, "steps": entry.steps, "window": window,
        **row, "cosine": cosine, "ended_above_start": ended_above_start,
        "lopt": {"initial_train": initial, "final_train": final_lopt, "final_eval": _num(lopt.eval_loss[-1]),
                 "stopped_at": lopt.stopped_at},
        "adam_cosine": adam_cosine,
        "adam_default": {"lr": DEFAULT_ADAM_LR, "final_train": final(default),
                         "final_eval": _num(constant.eval_loss[default, -1])},
        "grid": {"lr": lrs.tolist(), "final_train": [final(i) for i in range(len(lrs))],
                 "sweep_final_loss": _listed(constant.final_loss)},
        "curves": {"step": (steps_idx + 1).tolist(), "lopt": _listed(lopt_curve),
                   "adam": smoothed(constant.train_loss[constant.best_index]),
                   "adam_cosine": smoothed(sweeps["cosine"].train_loss[sweeps["cosine"].best_index]),
                   "adam_default": smoothed(constant.train_loss[default])},
        "seconds": time.perf_counter() - t0,
    }


def summary(task_results: Sequence[dict], baseline: str = "constant") -> dict:
    """`summarize` per group, and over all tasks, against one of the baselines."""
    get = (lambda r: r["speedup"]) if baseline == "constant" else (lambda r: r[baseline]["speedup"])

    def of(rows):
        return {**summarize([get(r) for r in rows]),
                "ended_above_start": sum(bool(r.get("ended_above_start")) for r in rows)}

    return {**{g: of([r for r in task_results if r["group"] == g]) for g in GROUPS}, "all": of(task_results)}


def evaluate(optimizer_factory: Callable[[int], Any], suite: Sequence[SuiteTask], key, *,
             name: str = "learned optimizer", learning_rates=ADAM_LRS, window: int | None = None,
             progress: bool = True, baselines: dict | None = None) -> dict:
    """Evaluate `optimizer_factory(num_steps) -> optax transform` on every suite entry
    against both tuned-Adam baselines. Returns a JSON-ready dict: {"optimizer",
    "measure", "tasks", "summary" (against constant-rate Adam), "summary_cosine"}.

    `baselines`, a dict, caches the Adam sweeps by task name: pass the same dict when
    evaluating several optimizers on one suite with one key, and each sweep runs once."""
    if len(suite) == 0:
        raise ValueError("the suite is empty; build one with evaluate.suite()")
    names = [e.name for e in suite]
    if len(set(names)) != len(names):
        raise ValueError(f"suite task names must be unique, got duplicates {sorted({n for n in names if names.count(n) > 1})}")
    cache = {} if baselines is None else baselines
    rows = []
    for i, entry in enumerate(suite):
        if entry.name not in cache:
            cache[entry.name] = adam_baselines(entry, key, learning_rates)
        rows.append(evaluate_task(optimizer_factory, entry, key, learning_rates=learning_rates, window=window,
                                  baselines=cache[entry.name]))
        if progress:
            r = rows[-1]
            print(f"[{i + 1:2d}/{len(suite)}] {entry.name:38s} {entry.group:13s} speedup {r['speedup']:6.2f}x "
                  f"(cosine {r['cosine']['speedup']:5.2f}x)  loss {r['lopt']['final_train']} vs Adam "
                  f"{r['adam']['final_train']} (lr {r['adam']['lr']:.2g})  {r['seconds']:.1f}s", flush=True)
    return {"optimizer": name, "measure": MEASURE,
            "adam_learning_rates": list(learning_rates), "backend": jax.default_backend(),
            "tasks": rows, "summary": summary(rows), "summary_cosine": summary(rows, "cosine")}


def save_results(results: dict, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1)
    # lists of numbers (the curves) on one line each: a smaller file, still readable
    text = re.sub(r"\[\n\s+([-\d.eE, \nnulltrufas]*?)\n\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    path.write_text(text + "\n")
    return path


def load_results(path) -> dict:
    """Results written by `save_results` (a ValueError names a file that is not one)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation results at {path}; produce them with "
                                "`python benchmarks/evaluate_pretrained.py` (see its --help)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run the evaluation") from None
    if not (isinstance(results, dict) and isinstance(results.get("tasks"), list)):
        raise ValueError(f"{path} is not an evaluation result: expected a dict with a 'tasks' list")
    return results


# ---------------------------------------------------------------------------
# Tables and plots
# ---------------------------------------------------------------------------
def _fmt_speedup(r) -> str:
    """'>= 10.00x' for a lower bound, '<= 0.10x' for an upper bound."""
    lower, upper = r["speedup_is_lower_bound"], r.get("speedup_is_upper_bound", False)
    bound = "~" if lower and upper else ">= " if lower else "<= " if upper else ""
    return bound + f"{r['speedup']:.2f}x"


def _fmt(x, spec=".3g"):
    return "diverged" if x is None else format(x, spec)


def summary_table(results: dict) -> str:
    """Markdown: per group and baseline, the fractions faster, the median, IQM and divergences."""
    lines = ["| baseline | group | tasks | faster than 1x | at least 2x | at least 4x | median | IQM | diverged "
             "| ended above its start |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key in (("tuned Adam", "summary"), ("tuned Adam, warmup + cosine", "summary_cosine")):
        for group, s in results.get(key, {}).items():
            if s["tasks"]:
                lines.append(f"| {label} | {group} | {s['tasks']} | {s['faster_than_1x']:.0%} | "
                             f"{s['at_least_2x']:.0%} | {s['at_least_4x']:.0%} | {s['median']:.2f}x | "
                             f"{s['iqm']:.2f}x | {s['diverged']} | {s.get('ended_above_start', 'n/a')} |")
    return "\n".join(lines) + "\n"


def speedup_table(results: dict) -> str:
    """A markdown table: one row per task, then `summary_table`."""
    ratio = lambda x: "n/a" if x is None else f"{x:+.2f}"
    lines = ["| task | group | steps | speedup vs tuned Adam | vs cosine Adam | log10 final-loss ratio | "
             "log10 eval-loss ratio | final train loss: learned / tuned Adam / cosine Adam / Adam 1e-3 | "
             "tuned Adam lr |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in results["tasks"]:
        lines.append(f"| {r['name']} | {r['group']} | {r['steps']} | {_fmt_speedup(r)} | {_fmt_speedup(r['cosine'])} | "
                     f"{ratio(r['final_loss_ratio_log10'])} | {ratio(r['eval_loss_ratio_log10'])} | "
                     f"{_fmt(r['lopt']['final_train'])} / {_fmt(r['adam']['final_train'])} / "
                     f"{_fmt(r['adam_cosine']['final_train'])} / {_fmt(r['adam_default']['final_train'])} | "
                     f"{r['adam']['lr']:.2g}{' (edge)' if r['adam']['best_at_edge'] else ''} |")
    return "\n".join(lines) + "\n\n" + summary_table(results)


def cdf_points(speedups) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the survival curve: y = fraction of tasks with speedup >= x, at each sorted speedup."""
    s = np.sort(np.asarray(list(speedups), np.float64))
    return s, 1.0 - np.arange(len(s)) / max(len(s), 1)


def plot_cdf(results: dict, ax=None):
    """VeLO Figure-1 style: the fraction of tasks at least x times faster than tuned Adam, per group."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    floor = 0.05
    for group in GROUPS:
        s = [max(r["speedup"], floor) for r in results["tasks"] if r["group"] == group]
        if s:
            x, y = cdf_points(s)
            med = results["summary"][group]["median"]
            ax.step(np.concatenate([[floor], x]), np.concatenate([[1.0], y]), where="post",
                    label=f"{group} ({len(s)} tasks, median {med:.2f}x)")
    for k in (1, 2, 4):
        ax.axvline(k, color="k", lw=0.6, ls=":" if k > 1 else "-")
    ax.set(xscale="log", ylim=(0, 1.02), xlabel="speedup over LR-tuned Adam (steps to reach the same loss)",
           ylabel="fraction of tasks at least this fast", title=f"{results.get('optimizer', '')} vs tuned Adam")
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_task_curves(results: dict, ncols: int = 4, names: Sequence[str] | None = None):
    """A grid of smoothed training curves, one panel per task: learned, tuned Adam, Adam 1e-3."""
    import matplotlib.pyplot as plt

    rows = [r for r in results["tasks"] if names is None or r["name"] in names]
    ncols = max(1, min(ncols, len(rows)))
    nrows = max(1, -(-len(rows) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax, r in zip(axes.ravel(), rows):
        c = r["curves"]
        lines = [("learned", "lopt"), (f"Adam {r['adam']['lr']:.2g}", "adam"), ("Adam 1e-3", "adam_default")]
        if "adam_cosine" in c:
            lines.insert(2, (f"cosine Adam {r['adam_cosine']['lr']:.2g}", "adam_cosine"))
        for label, key in lines:
            y = np.array([np.nan if v is None else v for v in c[key]])
            ax.plot(c["step"], y, label=label, lw=1.2 if key != "adam_default" else 0.8)
        if r["target_loss"] is not None:
            ax.axhline(r["target_loss"], color="k", lw=0.5, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{r['name']}\n{r['group']}, {_fmt_speedup(r)}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    return fig
