"""Steps per second of `minilopt.train.fit` (one jitted lax.scan) against a Python
loop that calls a jitted step, on the same task, optimizer and batches, in one process.

    python benchmarks/train_loop.py --quick     # CPU, a few seconds
    python benchmarks/train_loop.py             # full (GPU)

Writes results/train_loop[_quick]_<platform>.json and a PNG beside it.
"""
from __future__ import annotations

import argparse

import jax
import matplotlib
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minilopt import tasks, train  # noqa: E402

from _common import best_time, write  # noqa: E402


def python_loop(task, opt, steps):
    """The baseline: a jitted single step, called from Python `steps` times."""
    @jax.jit
    def step(params, state, key):
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(key))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    def run(key, params):
        state = opt.init(params)
        for k in jax.random.split(key, steps):
            params, state, loss = step(params, state, k)
        return jax.block_until_ready(loss)
    return run


def measure(task, steps, repeats):
    opt = optax.adam(1e-3)
    key = jax.random.key(0)
    params = task.init(key)
    scan = jax.jit(train.make_run(task, opt, steps, eval_every=steps))
    jax.block_until_ready(scan(key, params))            # compile once
    loop = python_loop(task, opt, steps)
    loop(key, params)                                   # compile once
    t_scan = best_time(lambda: jax.block_until_ready(scan(key, params)), repeats)
    t_loop = best_time(lambda: loop(key, params), repeats)
    return {"task": task.name, "steps": steps, "fit_steps_per_s": steps / t_scan,
            "loop_steps_per_s": steps / t_loop, "speedup": t_loop / t_scan}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run for a CPU")
    args = ap.parse_args()
    steps, repeats = (500, 3) if args.quick else (5000, 5)
    suite = [tasks.digits_logreg(), tasks.digits_mlp(), tasks.mnist1d_cnn()]
    if not args.quick:
        suite.append(tasks.char_lm())
    rows = []
    for task in suite:
        row = measure(task, steps, repeats)
        rows.append(row)
        print(f"{row['task']:14s} fit {row['fit_steps_per_s']:9.0f} steps/s   python loop "
              f"{row['loop_steps_per_s']:8.0f} steps/s   ratio {row['speedup']:.1f}x")
    path = write("train_loop", {"rows": rows}, args.quick)
    fig, ax = plt.subplots(figsize=(5, 3))
    names = [r["task"] for r in rows]
    ax.bar(names, [r["speedup"] for r in rows])
    ax.axhline(1, color="k", lw=0.8)
    ax.set(ylabel="fit / python loop (steps/s)", title=f"lax.scan vs Python loop ({jax.devices()[0].platform})")
    fig.savefig(path.with_suffix(".png"), dpi=80, bbox_inches="tight")
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
