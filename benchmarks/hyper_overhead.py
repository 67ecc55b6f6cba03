"""The cost of hyperoptimizing: step time and memory per stack height, against optax.adam.

Model: a tanh MLP 784-W-W-10 (W=1024: 1.86M parameters) on synthetic data held on
the device, minibatches sampled inside the jitted loop. For each optimizer we time
many steps inside one jitted `lax.scan` and divide, best of several repeats, all in
this process:

    optax.adam                        the baseline
    minilopt Adam                     height 0 (the paper's Adam rule, v starting at eps)
    Adam/SGD, Adam/SGD/SGD, ...       heights 1..3 (mode="auto": forward mode here)
    hyperoptimize(optax adam)         height 1 through optax.inject_hyperparams
    reverse mode: Adam/SGD, .../SGD   heights 1, 2 with the paper's vjp from stored inputs

Memory: the optimizer state's bytes, and the extra bytes each level adds, also in
units of one parameter-sized copy.

If a Python with PyTorch and the released `gradient_descent_the_ultimate_optimizer`
package is given (--gdtuo-python PATH; see tests/tools/make_gdtuo_reference.py to make
one; never a default path, so that no file someone left in /tmp is run), the same MLP, batch and stacks are
timed there too, in a subprocess, with the package's own training loop and the same
statistic: the mean step of a block of steps (minilopt's blocks in --quick), best of 3
blocks. Its fastest single step is recorded too (an extreme order statistic: a ratio
against it is not like for like). We also record how its resident memory grows
(create_graph keeps references alive).

    python benchmarks/hyper_overhead.py --quick   # CPU: batch 64, fewer steps (about a minute on 2 cores)
    python benchmarks/hyper_overhead.py           # full (GPU): batches 256 and 2048, 500 steps per timing

Compiles: on a GPU, XLA autotunes the model's matmuls at each compile and its choices
differ from one process to the next: the same optax.adam step took 93 to 99 us in
different processes, more than a level's margin. So the full run times everything in
`--compiles` fresh processes (default 3) and reports, per optimizer, the median of the
per-process ratios to optax.adam, with their range.

Writes results/hyper_overhead[_quick]_<platform>.json and .png. Needs only jax, optax,
numpy, matplotlib and minilopt (PyTorch is optional and only ever in the subprocess).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minilopt import hyper, nn  # noqa: E402
from minilopt.hyper import rules  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
N_DATA = 4096
KAPPA = (1e-6, 1e-10, 1e-14)  # the SGD hyper-step size at levels 1, 2, 3 (see `optimizers`)


def optimizers():
    """label -> (height, optimizer).

    The hyper-step sizes shrink by 1e-4 per level (1e-6, 1e-10, 1e-14): each level's
    hypergradient is a product of the ones below, so its scale grows. With 1e-6 at
    every level the towers of height 2 and 3 diverge to NaN within 10 steps, and a
    benchmark should time the optimizer people would run."""
    kappa = KAPPA
    sgd = lambda level: rules.sgd(kappa[level - 1])  # noqa: E731
    return {
        "optax.adam": (None, optax.adam(1e-3)),
        "Adam (height 0)": (0, rules.adam(1e-3)),
        "Adam/SGD": (1, hyper.stack(rules.adam(1e-3), sgd(1))),
        "Adam/SGD/SGD": (2, hyper.stack(rules.adam(1e-3), sgd(1), sgd(2))),
        "Adam/SGD/SGD/SGD": (3, hyper.stack(rules.adam(1e-3), sgd(1), sgd(2), sgd(3))),
        "hyperoptimize(optax adam)/SGD": (1, hyper.hyperoptimize(
            optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), by=optax.sgd(kappa[0]))),
        "reverse mode: Adam/SGD": (1, hyper.stack(rules.adam(1e-3), sgd(1), mode="reverse")),
        "reverse mode: Adam/SGD/SGD": (2, hyper.stack(rules.adam(1e-3), sgd(1), sgd(2), mode="reverse")),
    }


def make_problem(width, key):
    k_x, k_y, k_p = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (N_DATA, 784))
    y = jax.random.randint(k_y, (N_DATA,), 0, 10)
    params = nn.mlp_init(k_p, (784, width, width, 10))

    def loss(params, idx):
        return nn.softmax_cross_entropy(nn.mlp(params, x[idx], jnp.tanh), y[idx])
    return params, loss


def make_loop(loss, opt, batch, steps):
    opt = optax.with_extra_args_support(opt)

    def run(params, state, key):
        def step(carry, k):
            params, state = carry
            l, g = jax.value_and_grad(loss)(params, jax.random.randint(k, (batch,), 0, N_DATA))
            updates, state = opt.update(g, state, params, value=l)
            return (optax.apply_updates(params, updates), state), l
        (params, state), losses = jax.lax.scan(step, (params, state), jax.random.split(key, steps))
        return params, state, losses[-1]
    return jax.jit(run, donate_argnums=(0, 1))


def nbytes(tree) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def time_minilopt(width, batch, steps, repeats):
    params0, loss = make_problem(width, jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree.leaves(params0))
    param_bytes = nbytes(params0)
    runs, rows = {}, {}
    for label, (height, opt) in optimizers().items():
        loop = make_loop(loss, opt, batch, steps)
        params = jax.tree.map(jnp.copy, params0)
        state = jax.tree.map(jnp.copy, opt.init(params))  # own buffers: the loop donates them
        rows[label] = {"height": height, "state_bytes": nbytes(state),
                       "state_in_param_copies": nbytes(state) / param_bytes, "step_times": []}
        runs[label] = [loop, *loop(params, state, jax.random.PRNGKey(1))]  # compile and warm up
    for r in range(repeats):  # round robin, so a busy moment hurts every optimizer alike
        for label, run in runs.items():
            loop, params, state, _ = run
            t0 = time.perf_counter()
            params, state, l = loop(params, state, jax.random.PRNGKey(2 + r))
            jax.block_until_ready(l)
            rows[label]["step_times"].append((time.perf_counter() - t0) / steps)
            runs[label] = [loop, params, state, l]
    for label, row in rows.items():
        row["step_s"], row["final_loss"] = min(row["step_times"]), float(runs[label][3])
        print(f"{label:32s} {1e3 * row['step_s']:8.3f} ms/step   state {row['state_bytes'] / 2**20:7.2f} MiB "
              f"({row['state_in_param_copies']:.2f}x params)")
    base = rows["optax.adam"]["step_s"]
    for label, r in rows.items():
        r["ratio_to_optax_adam"] = r["step_s"] / base
    add_per_level(rows)
    return {"n_params": int(n_params), "param_bytes": param_bytes, "rows": rows}


def across_compiles(results: list[dict]) -> dict:
    """One time_minilopt result from several processes': the median step time and ratio
    to optax.adam over the processes (each ratio taken within its process), and the range."""
    merged = {k: v for k, v in results[0].items() if k != "rows"}
    merged["compiles"], rows = len(results), {}
    for label, first in results[0]["rows"].items():
        per = [r["rows"][label] for r in results]
        ratios = [x["ratio_to_optax_adam"] for x in per]
        rows[label] = {**{k: v for k, v in first.items() if k not in ("step_times", "final_loss")},
                       "step_s": float(np.median([x["step_s"] for x in per])),
                       "ratio_to_optax_adam": float(np.median(ratios)),
                       "ratio_range": [min(ratios), max(ratios)],
                       "per_compile": [{"step_s": x["step_s"], "ratio_to_optax_adam": x["ratio_to_optax_adam"],
                                        "final_loss": x["final_loss"]} for x in per]}
    add_per_level(rows)
    merged["rows"] = rows
    return merged


def time_in_fresh_processes(args, batch, steps, repeats) -> dict:
    results = []
    for c in range(args.compiles):
        proc = subprocess.run([sys.executable, __file__, "--worker", "--width", str(args.width), "--batch", str(batch),
                               "--steps", str(steps), "--repeats", str(repeats)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"   compile {c + 1}: " + ", ".join(f"{k} {r['ratio_to_optax_adam']:.3f}x"
                                                 for k, r in results[-1]["rows"].items() if r["height"]))
    merged = across_compiles(results)
    for label, r in merged["rows"].items():
        print(f"{label:32s} {1e3 * r['step_s']:8.3f} ms/step  {r['ratio_to_optax_adam']:.3f}x optax.adam "
              f"({r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f})  state {r['state_in_param_copies']:.2f}x params")
    return merged


def add_per_level(rows):
    """Each tower height's step time over the height below, and the state bytes it adds."""
    tower = tower_rows(rows)
    for h in range(1, len(tower)):
        tower[h]["ratio_to_height_below"] = tower[h]["step_s"] / tower[h - 1]["step_s"]
        tower[h]["extra_state_bytes"] = tower[h]["state_bytes"] - tower[h - 1]["state_bytes"]


def tower_rows(rows) -> dict:
    """height -> row, for the Adam/SGD/... tower."""
    return {r["height"]: r for k, r in rows.items() if k.startswith("Adam")}


GDTUO_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    import torch.nn.functional as F
    from gradient_descent_the_ultimate_optimizer import gdtuo
    width, batch, steps, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    heights, kappa = json.loads(sys.argv[5]), json.loads(sys.argv[6])
    torch.manual_seed(0)
    x, y = torch.randn(4096, 784), torch.randint(0, 10, (4096,))
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "steps_per_timing": steps,
           "repeats": repeats, "rows": {}}
    for h in heights:
        model = torch.nn.Sequential(torch.nn.Linear(784, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                    torch.nn.Tanh(), torch.nn.Linear(width, 10))
        opt = gdtuo.NoOpOptimizer()
        for level in range(h, 0, -1):  # built top-down; the same hyper-step sizes as minilopt's towers
            opt = gdtuo.SGD(kappa[level - 1], optimizer=opt)
        mw = gdtuo.ModuleWrapper(model, optimizer=gdtuo.Adam(1e-3, optimizer=opt))
        mw.initialize()
        def step():
            idx = torch.randint(0, 4096, (batch,))
            mw.begin()
            loss = F.cross_entropy(mw.forward(x[idx]), y[idx])
            mw.zero_grad()
            loss.backward(create_graph=True)
            mw.step()
            return loss.item()
        for _ in range(3):
            step()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        blocks, times = [], []
        for _ in range(repeats):
            t_block = time.perf_counter()
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            blocks.append((time.perf_counter() - t_block) / steps)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times.sort()
        # step_s is minilopt's statistic: the mean step of a block of `steps`, best of `repeats`
        out["rows"][str(h)] = {"step_s": min(blocks), "block_step_s": blocks, "median_step_s": times[len(times) // 2],
                               "fastest_step_s": times[0], "max_rss_growth_kib": rss1 - rss0}
    print(json.dumps(out))
""")


def time_gdtuo(python, width, batch, steps, repeats):
    if python is None:
        return {"skipped": "no --gdtuo-python given"}
    if not pathlib.Path(python).is_file():
        raise SystemExit(f"--gdtuo-python {python!r}: no such file; pass a Python with PyTorch and gdtuo")
    proc = subprocess.run([python, "-c", GDTUO_SCRIPT, str(width), str(batch), str(steps), str(repeats),
                           json.dumps([0, 1, 2, 3]), json.dumps(KAPPA)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"skipped": f"the gdtuo subprocess failed: {proc.stderr.strip()[-500:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 64, fewer steps (CPU)")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 256 2048; quick: 64)")
    ap.add_argument("--gdtuo-python", default=None,
                    help="a Python with PyTorch and gdtuo, e.g. /tmp/gdtuo-venv/bin/python (default: skip gdtuo)")
    ap.add_argument("--compiles", type=int, default=None,
                    help="fresh processes to time in, median reported (default 3; quick: 1, in this process)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = args.batch or ([64] if args.quick else [256, 2048])
    steps, repeats = (40, 3) if args.quick else (500, 5)
    steps, repeats = args.steps or steps, args.repeats or repeats
    gdtuo_steps, gdtuo_repeats = min(steps, 50), min(repeats, 3)  # quick: minilopt's own blocks (~30 ms a step)
    if args.worker:  # one process's timings, as JSON on the last line
        result = time_minilopt(args.width, batches[0], steps, repeats)
        print(json.dumps(result))
        return
    args.compiles = args.compiles or (1 if args.quick else 3)
    t0 = time.perf_counter()
    ours = {}
    for batch in batches:
        print(f"-- batch {batch}")
        ours[str(batch)] = (time_in_fresh_processes(args, batch, steps, repeats) if args.compiles > 1
                            else time_minilopt(args.width, batch, steps, repeats))
    n_params = next(iter(ours.values()))["n_params"]
    print(f"{n_params:,} parameters; gdtuo at batch {batches[0]}:")
    theirs = time_gdtuo(args.gdtuo_python, args.width, batches[0], gdtuo_steps, gdtuo_repeats)
    if "rows" in theirs:
        by_height = tower_rows(ours[str(batches[0])]["rows"])
        for h, r in theirs["rows"].items():
            ours_s = by_height[int(h)]["step_s"]
            r["gdtuo_over_minilopt"] = r["step_s"] / ours_s
            r["fastest_gdtuo_step_over_minilopt"] = r["fastest_step_s"] / ours_s
            print(f"gdtuo height {h}: {1e3 * r['step_s']:8.3f} ms/step = {r['gdtuo_over_minilopt']:.2f}x minilopt "
                  f"(its fastest single step: {r['fastest_gdtuo_step_over_minilopt']:.2f}x); "
                  f"max RSS grew {r['max_rss_growth_kib'] / 1024:.1f} MiB over {gdtuo_repeats * gdtuo_steps} steps")
    else:
        print(theirs["skipped"])
    payload = {"device": {"platform": jax.devices()[0].platform, "device": jax.devices()[0].device_kind,
                          "jax": jax.__version__, "host": platform.machine(), "cpus": os.cpu_count()},
               "model": f"tanh MLP 784-{args.width}-{args.width}-10, synthetic data", "n_params": n_params,
               "batches": batches, "steps_per_timing": steps, "repeats": repeats, "compiles": args.compiles,
               "minilopt": ours,
               "gdtuo": theirs, "seconds": time.perf_counter() - t0}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"hyper_overhead{'_quick' if args.quick else ''}_{jax.devices()[0].platform}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(payload, stem.with_suffix(".png"))
    print(f"wrote {stem}.json/.png in {payload['seconds']:.0f} s")


def plot(payload, path):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, (batch, result) in enumerate(payload["minilopt"].items()):
        rows = result["rows"]
        heights = sorted(tower_rows(rows).items())
        hs = [h for h, _ in heights]
        ax.plot(hs, [1e3 * r["step_s"] for _, r in heights], "o-", color=f"C{i}", label=f"minilopt, batch {batch}")
        ax.axhline(1e3 * rows["optax.adam"]["step_s"], color=f"C{i}", ls="--", lw=1, label=f"optax.adam, batch {batch}")
    if "rows" in payload["gdtuo"]:
        g = payload["gdtuo"]["rows"]
        ax.plot([int(h) for h in g], [1e3 * g[h]["step_s"] for h in g], "s-", color="C3",
                label=f"gdtuo (PyTorch), batch {payload['batches'][0]}")
    ax.set_yscale("log")
    ax.set_xticks(hs)
    ax.set_xlabel("stack height (Adam/SGD/...)")
    ax.set_ylabel("ms per step")
    ax.legend(fontsize=6)
    ax.set_title(f"{payload['n_params'] / 1e6:.2f}M params, {payload['device']['device']}", fontsize=9)
    ax2.bar(hs, [r["state_in_param_copies"] for _, r in heights], color="C0")
    ax2.axhline(rows["optax.adam"]["state_in_param_copies"], color="k", ls="--", label="optax.adam")
    ax2.set_xticks(hs)
    ax2.set_xlabel("stack height")
    ax2.set_ylabel("optimizer state (parameter copies)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=75)


if __name__ == "__main__":
    sys.exit(main())
