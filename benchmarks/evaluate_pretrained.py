"""The shipped learned optimizers against LR-tuned Adam on the held-out suite.

    python benchmarks/evaluate_pretrained.py                  # every shipped optimizer, full suite (30 tasks)
    python benchmarks/evaluate_pretrained.py --quick          # 4 tasks at 300 steps, for a CPU
    python benchmarks/evaluate_pretrained.py --names velo     # some of them
    python benchmarks/evaluate_pretrained.py --weights DIR    # other weights (config.json + theta.npz)
    python benchmarks/evaluate_pretrained.py --resume         # keep the tasks already in the results files,
                                                              # run the rest (split a run over time-limited calls)
    python benchmarks/evaluate_pretrained.py --baselines DIR  # keep each task's Adam sweeps in DIR and reuse them
    python benchmarks/evaluate_pretrained.py --baselines DIR --only-baselines --tasks ...   # fill DIR only

The measure and both baselines (tuned Adam at a constant rate, and with warmup +
cosine decay) are those of `minilopt.evaluate`; one Adam sweep per task serves every
optimizer. Results are written after every task: results/evaluate_<name>[_quick].json,
a CDF plot (.png), loss curves (_curves.png), the per-task table (.md), and
results/evaluate_pretrained[_quick].md, the summary of all. Exits 1 if a shipped
optimizer diverged, or ended above its first loss, on any task.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")

from minilopt import evaluate as E  # noqa: E402
from minilopt.lopt.checkpoint import write_npz  # noqa: E402
from minilopt.train import SweepResult  # noqa: E402

from _common import RESULTS, device_info  # noqa: E402

from minilopt.lopt import pretrained as P  # noqa: E402


def candidates(args) -> dict:
    """{name: Pretrained} of the optimizers to evaluate."""
    if args.weights:
        return {pathlib.Path(args.weights).name: P.load(args.weights)}
    return {name: P.load(P.weights_dir(name)) for name in (args.names or P.NAMES)}


def cached_baselines(directory, entry, key, seed: int) -> dict:
    """`E.adam_baselines(entry, key)`, kept in `directory` as one .npz per task and
    reused while the task's name, budget, seed and Adam grid are those it was made
    with (they are stored in the file and compared, so a changed suite recomputes)."""
    if directory is None:
        return E.adam_baselines(entry, key)
    tag = {"name": entry.name, "steps": entry.steps, "seed": seed, "grid": [float(x) for x in E.ADAM_LRS]}
    path = pathlib.Path(directory) / (entry.name.replace("/", "__") + ".npz")
    if path.exists():
        with np.load(path) as f:
            if json.loads(str(f["tag"])) == tag:
                return {s: SweepResult(*(f[f"{s}/{k}"] for k in SweepResult._fields[:-2]),
                                       int(f[f"{s}/best_index"]), float(f[f"{s}/best_lr"]))
                        for s in E.SCHEDULES}
        print(f"{path}: made for another task, budget, seed or grid; recomputing", flush=True)
    sweeps = E.adam_baselines(entry, key)
    arrays = {f"{s}/{k}": np.asarray(v) for s, sweep in sweeps.items() for k, v in sweep._asdict().items()}
    write_npz(path, {**arrays, "tag": np.asarray(json.dumps(tag))})
    return sweeps


def write_outputs(results, stem):
    E.save_results(results, stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(
        f"# {results['optimizer']}\n\n{results['description']}\n\n{results['measure']}\n\n"
        f"Reproduce: `{results['command']}`\n\n{E.speedup_table(results)}")
    E.plot_cdf(results).figure.savefig(stem.with_suffix(".png"), dpi=80, bbox_inches="tight")
    E.plot_task_curves(results, ncols=6).savefig(f"{stem}_curves.png", dpi=60, bbox_inches="tight")
    matplotlib.pyplot.close("all")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 tasks at 300 steps, for a CPU")
    ap.add_argument("--names", nargs="+", choices=P.NAMES, help="shipped optimizers to evaluate (default: all)")
    ap.add_argument("--weights", help="other weights: a directory with config.json and theta.npz")
    ap.add_argument("--tasks", nargs="+", help="only these suite tasks (by name)")
    ap.add_argument("--resume", action="store_true", help="keep tasks already in the results files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baselines", help="a directory that keeps each task's tuned-Adam sweeps for reuse")
    ap.add_argument("--only-baselines", action="store_true", help="fill --baselines and stop")
    args = ap.parse_args()

    opts = candidates(args)
    horizons = {w.horizon for w in opts.values()}
    if len(horizons) != 1:
        raise SystemExit(f"these optimizers were meta-trained for different horizons {horizons}: evaluate apart")
    steps = 300 if args.quick else horizons.pop()
    full = E.suite(steps, quick=args.quick, in_family=("random",))
    suite = full
    if args.tasks:
        unknown = sorted(set(args.tasks) - {e.name for e in full})
        if unknown:
            raise SystemExit(f"no suite tasks named {unknown}; the suite has {[e.name for e in full]}")
        suite = [e for e in full if e.name in args.tasks]
    suffix = "_quick" if args.quick else ""
    stems = {name: RESULTS / f"evaluate_{name}{suffix}" for name in opts}
    rows = {name: [] for name in opts}
    if args.resume:     # keep the finished tasks of this suite, labelled as this suite labels them
        group = {e.name: e.group for e in full}
        for name, stem in stems.items():
            if stem.with_suffix(".json").exists():
                rows[name] = [{**r, "group": group[r["name"]]} for r in
                              E.load_results(stem.with_suffix(".json"))["tasks"] if r["name"] in group]
    command = "python benchmarks/evaluate_pretrained.py " + " ".join(sys.argv[1:])
    key, t0 = jax.random.key(args.seed), time.perf_counter()
    print(f"{len(suite)} tasks, budget {steps} steps, {list(opts)}, on {jax.devices()[0]}", flush=True)
    if args.baselines:
        pathlib.Path(args.baselines).mkdir(parents=True, exist_ok=True)
    if args.only_baselines:
        if not args.baselines:
            raise SystemExit("--only-baselines needs --baselines DIR")
        for entry in suite:
            cached_baselines(args.baselines, entry, key, args.seed)
            print(f"baselines {entry.name} {time.perf_counter() - t0:.0f} s", flush=True)
        return
    for entry in suite:
        todo = [n for n in opts if entry.name not in {r["name"] for r in rows[n]}]
        if not todo:
            continue
        baselines = cached_baselines(args.baselines, entry, key, args.seed)
        for name in todo:
            w = opts[name]
            row = E.evaluate_task(lambda T, w=w: w.lopt.optimizer(w.theta, T), entry, key, baselines=baselines)
            rows[name].append(row)
            print(f"{name:10s} {entry.name:36s} {entry.group:13s} {row['speedup']:5.2f}x (cosine "
                  f"{row['cosine']['speedup']:5.2f}x)  loss {row['lopt']['final_train']} vs tuned Adam "
                  f"{row['adam']['final_train']}  {time.perf_counter() - t0:.0f} s", flush=True)
            order = {e.name: i for i, e in enumerate(full)}
            ordered = sorted(rows[name], key=lambda r: order.get(r["name"], len(order)))
            write_outputs({"optimizer": name, "description": f"{w.config['lopt']} {w.config['kwargs']}, "
                           f"meta-trained for {w.horizon} steps", "measure": E.MEASURE, "budget": steps,
                           "adam_learning_rates": list(E.ADAM_LRS), "backend": jax.default_backend(),
                           "device": device_info(), "command": command, "tasks": ordered,
                           "summary": E.summary(ordered), "summary_cosine": E.summary(ordered, "cosine")},
                          stems[name])
    lines = [f"# The shipped learned optimizers against tuned Adam\n\nReproduce: `{command}`\n\n{E.MEASURE}\n"]
    failed = []
    for name, stem in stems.items():
        results = E.load_results(stem.with_suffix(".json"))
        lines.append(f"## {name} ({len(results['tasks'])} tasks)\n\n{E.summary_table(results)}")
        failed += [f"{name}: {r['name']} ({'diverged' if r['speedup'] == 0 else 'ended above its start'})"
                   for r in results["tasks"] if r["speedup"] == 0 or r.get("ended_above_start")]
    if not args.weights:   # the combined page is the shipped set's
        (RESULTS / f"evaluate_pretrained{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if failed:
        print(f"DIVERGED OR BLEW UP: {failed}", file=sys.stderr)
        raise SystemExit(1)

if __name__ == "__main__":
    main()
