"""Sensitivity to the initial step size (paper §3.4, Fig. 4), on digits (or MNIST-1D).

Every level of an SGD tower of height 0..3 starts at the same α₀ (height 0 is plain
SGD, height 1 is SGD/SGD, ...). α₀ sweeps 10 decades, 1e-8 .. 1e2 (11 rates). For each height we
report the final test error per α₀, and over α₀ in [1e-5, 1e-1]: the spread
(max − min), the best and the median. Towers make the error far less sensitive to α₀;
no height recovers from α₀ ≥ 10 (the weights blow up before any hypergradient can
help), and we say so in the output rather than hide it.

    python benchmarks/hyper_sensitivity.py --quick   # CPU: 10 epochs, 1 seed (~2 min on 2 cores)
    python benchmarks/hyper_sensitivity.py           # 30 epochs, 3 seeds
    python benchmarks/hyper_sensitivity.py --dataset mnist1d [--quick]

Writes results/hyper_sensitivity[_quick]_<platform>.json and .png.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minilopt import hyper, tasks  # noqa: E402
from minilopt.hyper import rules  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# dataset: (task, description); the paper's MLP shape, tanh, batch 32
DATASETS = {
    "digits": (lambda: tasks.digits_mlp(hidden=(128,), activation="tanh", batch_size=32), "digits, tanh MLP 64-128-10"),
    "mnist1d": (lambda: tasks.mnist1d_mlp(hidden=(128,), activation="tanh", batch_size=32), "MNIST-1D, tanh MLP 40-128-10"),
}
ALPHAS = np.array([float(f"1e{e}") for e in range(-8, 3)])  # 1e-8 .. 1e2: 10 decades, 11 rates, exact literals
HEIGHTS = (0, 1, 2, 3)
WINDOW = (1e-5, 1e-1)


def tower(alpha0, height):
    return hyper.stack(*[rules.sgd(alpha0) for _ in range(height + 1)])


def make_sweep(task, steps, height):
    """(α₀ values, seed keys) -> test error (n_alpha, n_seeds), diverged flags; one jit."""
    def error(alpha0, key):
        k_init, k_run = jax.random.split(key)
        loss_fn = lambda p, k: task.loss(p, task.batch(k))
        traj = hyper.run(loss_fn, task.init(k_init), tower(alpha0, height), jax.random.split(k_run, steps))
        acc = task.accuracy(traj.params, task.eval_batch(key))
        diverged = ~jnp.all(jnp.isfinite(traj.loss))
        return jnp.where(diverged, 1.0 - 0.1, 1.0 - acc), diverged  # a NaN net guesses: 90% error
    return jax.jit(jax.vmap(jax.vmap(error, (None, 0)), (0, None)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 epochs, 1 seed (CPU)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    args = ap.parse_args()
    epochs, seeds = (10, 1) if args.quick else (30, 3)
    make_task, description = DATASETS[args.dataset]
    task = make_task()
    steps = epochs * task.data.x_train.shape[0] // 32
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    t0 = time.perf_counter()

    results = {}
    in_window = (ALPHAS >= WINDOW[0]) & (ALPHAS <= WINDOW[1])
    for h in HEIGHTS:
        err, diverged = make_sweep(task, steps, h)(jnp.asarray(ALPHAS, jnp.float32), keys)
        err = 100 * np.asarray(err).mean(axis=1)  # mean over seeds
        w = err[in_window]
        results[h] = {"test_error_pct": err.round(3).tolist(),
                      "diverged": np.asarray(diverged).any(axis=1).tolist(),
                      "spread_in_window": float(w.max() - w.min()), "best_in_window": float(w.min()),
                      "median_in_window": float(np.median(w)),
                      "recovers_from_alpha_ge_10": bool(np.all(err[ALPHAS >= 10] < 50))}
        r = results[h]
        print(f"height {h}: spread {r['spread_in_window']:5.1f} pts, best {r['best_in_window']:5.2f} %, "
              f"median {r['median_in_window']:5.2f} % over alpha0 in {WINDOW};  "
              f"alpha0 >= 10: {'recovers' if r['recovers_from_alpha_ge_10'] else 'does NOT recover'}")
        print("   error % by alpha0: " + "  ".join(f"{a:.0e}:{e:.1f}" for a, e in zip(ALPHAS, err)))

    spreads = [results[h]["spread_in_window"] for h in HEIGHTS]
    payload = {"device": {"platform": jax.devices()[0].platform, "device": jax.devices()[0].device_kind,
                          "jax": jax.__version__, "host": platform.machine()},
               "task": f"{description}, batch 32, SGD towers, every level starts at alpha0",
               "epochs": epochs, "steps": steps, "seeds": seeds, "alphas": ALPHAS.tolist(), "window": WINDOW,
               "heights": results, "spread_shrinks_with_height": bool(np.all(np.diff(spreads) <= 0.5)),
               "no_height_recovers_from_alpha_ge_10": not any(r["recovers_from_alpha_ge_10"]
                                                               for r in results.values()),
               "seconds": time.perf_counter() - t0}
    RESULTS.mkdir(exist_ok=True)
    name = "hyper_sensitivity" + ("" if args.dataset == "digits" else f"_{args.dataset}")
    stem = RESULTS / f"{name}{'_quick' if args.quick else ''}_{jax.devices()[0].platform}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, f"{description}, {epochs} epochs, {seeds} seed{'s' * (seeds > 1)}", stem.with_suffix(".png"))
    print(f"spread shrinks with height: {payload['spread_shrinks_with_height']}; "
          f"wrote {stem}.json/.png in {payload['seconds']:.0f} s")


def plot(results, title, path):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for h, r in results.items():
        ax.semilogx(ALPHAS, r["test_error_pct"], "o-", label=f"height {h}: spread {r['spread_in_window']:.1f} pts")
    ax.axvspan(*WINDOW, color="0.92", zorder=0, label="spread window")
    ax.axvspan(10, ALPHAS[-1] * 2, color="mistyrose", zorder=0, label="α₀ ≥ 10: nothing recovers")
    ax.set_xlabel("initial step size α₀ (every level)")
    ax.set_ylabel("final test error (%)")
    ax.set_title(f"SGD towers: {title}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=75)


if __name__ == "__main__":
    main()
