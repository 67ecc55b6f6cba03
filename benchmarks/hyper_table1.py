"""Table 1 of "Gradient Descent: The Ultimate Optimizer", scaled to scikit-learn's digits.

For the SGD, Adam, AdaGrad and RMSProp families: the final test error of the plain
optimizer, of its hyperoptimized stacks, and of the plain optimizer re-run with the
hyperparameters the stack learned (its final level-1 values). Tanh MLP 64-128-10,
batch 32, several seeds (initial weights and batch order), mean ± std.

    python benchmarks/hyper_table1.py --quick   # CPU: 10 epochs, 3 seeds (~2 min on 2 cores)
    python benchmarks/hyper_table1.py           # 30 epochs, 5 seeds

Writes results/hyper_table1[_quick]_<platform>.json and .png.
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
TRAIN_SIZE = 1438  # digits training split

# family: the plain optimizer, its stacks (bottom-up; the paper's hyper-step sizes
# scaled to digits), and the stack whose learned hyperparameters the re-run uses.
FAMILIES = {
    "SGD": {"plain": ("sgd", {"alpha": 0.01}),
            "stacks": {"SGD/SGD": [("sgd", {"alpha": 0.01}), ("sgd", {"alpha": 0.01})],
                       "SGD/Adam": [("sgd", {"alpha": 0.01}), ("adam", {"alpha": 0.01})]},
            "rerun": "SGD/SGD"},
    "Adam": {"plain": ("adam", {"alpha": 1e-3}),
             "stacks": {"Adam/SGD": [("adam", {"alpha": 1e-3}), ("sgd", {"alpha": 1e-5})],
                        "Adam/Adam": [("adam", {"alpha": 1e-3}), ("adam", {"alpha": 1e-3})]},
             "rerun": "Adam/SGD"},
    "AdaGrad": {"plain": ("adagrad", {"alpha": 0.01}),
                "stacks": {"AdaGrad/AdaGrad": [("adagrad", {"alpha": 0.01}), ("adagrad", {"alpha": 0.01})]},
                "rerun": "AdaGrad/AdaGrad"},
    "RMSProp": {"plain": ("rmsprop", {"alpha": 0.01, "gamma": 0.99}),
                "stacks": {"RMSProp_ag/RMSProp": [("rmsprop", {"alpha": 0.01, "gamma": 0.99}),
                                                  ("rmsprop", {"alpha": 1e-4})]},
                "rerun": "RMSProp_ag/RMSProp"},
}
RULES = {"sgd": rules.sgd, "adam": rules.adam, "adagrad": rules.adagrad, "rmsprop": rules.rmsprop}


def make(levels):
    return hyper.stack(*(RULES[name](**kw) for name, kw in levels))


def make_error_fn(task, steps):
    """(optimizer factory, key) -> (test error, level-1 hyperparameters at the end, diverged)."""
    def error(make_opt, key, *args):
        k_init, k_run = jax.random.split(key)
        params = task.init(k_init)
        loss_fn = lambda p, k: task.loss(p, task.batch(k))
        traj = hyper.run(loss_fn, params, make_opt(*args), jax.random.split(k_run, steps))
        acc = task.accuracy(traj.params, task.eval_batch(key))
        final_hp = jax.tree.map(lambda x: x[-1], traj.hyperparams[0])
        return 1.0 - acc, final_hp, ~jnp.all(jnp.isfinite(traj.loss))
    return error


def summary(errors) -> dict:
    e = 100 * np.asarray(errors, dtype=float)
    return {"mean": float(e.mean()), "std": float(e.std(ddof=1)) if len(e) > 1 else 0.0, "per_seed": e.round(3).tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 epochs, 3 seeds (CPU)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    epochs = args.epochs or (10 if args.quick else 30)
    seeds = args.seeds or (3 if args.quick else 5)
    task = tasks.digits_mlp(hidden=(128,), activation="tanh", batch_size=32)
    steps = epochs * TRAIN_SIZE // 32
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    error = make_error_fn(task, steps)
    t0 = time.perf_counter()

    rows = []
    for family, spec in FAMILIES.items():
        name, kw = spec["plain"]
        runs = {family: make([spec["plain"]])}
        runs.update({label: make(levels) for label, levels in spec["stacks"].items()})
        learned = {}
        for label, opt in runs.items():
            err, hp, diverged = jax.jit(jax.vmap(lambda k: error(lambda: opt, k)))(keys)
            learned[label] = hp
            rows.append({"family": family, "optimizer": label, "test_error_pct": summary(err),
                         "diverged_seeds": int(np.sum(diverged)),
                         "final_level1_hyperparams": jax.tree.map(lambda x: np.asarray(x).tolist(), hp)})
        # the plain optimizer again, with the hyperparameters its stack learned (per seed)
        hp = learned[spec["rerun"]]
        label = f"{family} with {spec['rerun']}'s learned hyperparameters"
        if float(jnp.min(hp["alpha"])) <= 0:
            rows.append({"family": family, "optimizer": label, "test_error_pct": None,
                         "note": "the stack's learned alpha is <= 0 for some seed: no plain re-run"})
        else:
            rerun = lambda k, h: error(lambda h: make([(name, {**kw, **h})]), k, h)
            err, _, diverged = jax.jit(jax.vmap(rerun))(keys, hp)
            rows.append({"family": family, "optimizer": label, "test_error_pct": summary(err),
                         "diverged_seeds": int(np.sum(diverged)),
                         "hyperparams": jax.tree.map(lambda x: np.asarray(x).tolist(), hp)})
        for r in rows[-len(runs) - 1:]:
            e = r["test_error_pct"]
            print(f"{r['optimizer']:55s} " + (f"{e['mean']:6.2f} ± {e['std']:.2f} %" if e else r["note"]))

    payload = {"device": {"platform": jax.devices()[0].platform, "device": jax.devices()[0].device_kind,
                          "jax": jax.__version__, "host": platform.machine()},
               "task": "digits, tanh MLP 64-128-10, batch 32", "epochs": epochs, "steps": steps, "seeds": seeds,
               "seconds": time.perf_counter() - t0, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"hyper_table1{'_quick' if args.quick else ''}_{jax.devices()[0].platform}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(rows, epochs, seeds, stem.with_suffix(".png"))
    print(f"wrote {stem}.json/.png in {payload['seconds']:.0f} s")


def plot(rows, epochs, seeds, path):
    shown = [r for r in rows if r["test_error_pct"]]
    colors = {f: c for f, c in zip(FAMILIES, ["C0", "C1", "C2", "C3"])}
    fig, ax = plt.subplots(figsize=(8, 4.2))
    y = np.arange(len(shown))[::-1]
    ax.barh(y, [r["test_error_pct"]["mean"] for r in shown], xerr=[r["test_error_pct"]["std"] for r in shown],
            color=[colors[r["family"]] for r in shown], alpha=0.8)
    ax.set_yticks(y, [r["optimizer"].replace(" with ", "\n with ") for r in shown], fontsize=7)
    ax.set_xlabel("test error (%)")
    ax.set_title(f"digits, tanh MLP: plain vs hyperoptimized ({epochs} epochs, {seeds} seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=75)


if __name__ == "__main__":
    main()
