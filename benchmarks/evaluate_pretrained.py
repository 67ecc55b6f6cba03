"""The shipped learned optimizer against LR-tuned Adam on the held-out suite (VeLO-style).

    python benchmarks/evaluate_pretrained.py                      # full suite (24 tasks), GPU: a few minutes
    python benchmarks/evaluate_pretrained.py --quick              # 4 tasks, 300 steps, CPU
    python benchmarks/evaluate_pretrained.py --weights DIR        # other weights (config.json + theta.npz)
    python benchmarks/evaluate_pretrained.py --run RUN            # θ straight from a meta-training run
    python benchmarks/evaluate_pretrained.py --untrained          # MLPLOpt at its init (normalised momentum)
    python benchmarks/evaluate_pretrained.py --shard 0/2 ; ... --shard 1/2 ; ... --merge 2
                                                                  # split over calls with a time limit

Writes results/evaluate_<name>[_quick].json, a CDF plot (.png), a grid of loss
curves (_curves.png) and the markdown table (.md). The measure is stated in
`minilopt.evaluate` and copied into the JSON.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import tempfile
import time

import jax
import matplotlib

matplotlib.use("Agg")

from minilopt import evaluate as E  # noqa: E402
from minilopt.lopt import MLPLOpt  # noqa: E402
from minilopt.pretrained import export_run, load  # noqa: E402

from _common import RESULTS, device_info  # noqa: E402


def optimizer_factory(args):
    """(factory(num_steps) -> optax transform, name, trained horizon, description, recipe or None)."""
    if args.untrained:
        lopt = MLPLOpt()
        theta = lopt.init(jax.random.key(0))
        return (lambda T: lopt.optimizer(theta, T)), "untrained_mlp", 1000, \
            "MLPLOpt at its initialisation (per-tensor normalised momentum), NOT meta-trained", None
    if args.run:
        weights = load(export_run(args.run, args.recipe, tempfile.mkdtemp()).parent)
        name, what = pathlib.Path(args.run).name, f"theta from meta-training run {args.run}"
    else:
        weights = load(args.weights)
        name = "pretrained" if args.weights is None else pathlib.Path(args.weights).stem
        what = f"{weights.config['lopt']}{weights.config['kwargs']} weights from {args.weights or 'the shipped files'}"
    return ((lambda T: weights.lopt.optimizer(weights.theta, T)), name, weights.horizon, what,
            weights.config.get("recipe"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 tasks at 300 steps, for a CPU")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--weights", help="a pretrained directory or config.json (default: the shipped weights)")
    src.add_argument("--run", help="a meta-training output directory (with --recipe)")
    src.add_argument("--untrained", action="store_true", help="MLPLOpt at init, for comparison")
    ap.add_argument("--recipe", help="the recipe JSON of --run (optional: the run records its own)")
    ap.add_argument("--name", help="results are written as evaluate_<name>[_quick].*")
    ap.add_argument("--steps", type=int, help="step budget (default: the trained horizon; --quick: 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard", help="I/N: evaluate every N-th task from the I-th (0-based) and write a shard file; "
                                    "for machines with a per-command time limit")
    ap.add_argument("--merge", type=int, metavar="N", help="combine the N shard files into the final results")
    args = ap.parse_args()

    factory, name, horizon, what, recipe = optimizer_factory(args)
    name = args.name or name
    steps = args.steps or (300 if args.quick else horizon)
    in_family = E.meta_training_families(recipe)
    suite = E.suite(steps, quick=args.quick, in_family=in_family)
    families = [f if isinstance(f, str) else f.name for f in in_family]
    stem = RESULTS / f"evaluate_{name}{'_quick' if args.quick else ''}"
    shard_file = lambda i, n: RESULTS / f"{stem.name}.shard{i}of{n}.json"
    if args.merge:
        shards = [E.load_results(shard_file(i, args.merge)) for i in range(args.merge)]
        order = {e.name: k for k, e in enumerate(suite)}
        rows = sorted((r for sh in shards for r in sh["tasks"]), key=lambda r: order.get(r["name"], len(order)))
        missing = sorted(set(order) - {r["name"] for r in rows})
        if missing:
            raise SystemExit(f"the shards lack {missing}; run those shards again")
        results = {**shards[0], "tasks": rows, "summary": E.summary(rows),
                   "seconds": sum(sh["seconds"] for sh in shards), "command": re.sub(r" --shard[ =]\S+", "", shards[0]["command"])}
        write_outputs(results, stem, what, steps, horizon)
        return
    if args.shard:
        i, n = (int(x) for x in args.shard.split("/"))
        suite = suite[i::n]
    print(f"{what}\nmeta-training families {families}\n{len(suite)} tasks, budget {steps} steps "
          f"(trained horizon {horizon}), on {jax.devices()[0]}")
    t0 = time.perf_counter()
    results = E.evaluate(factory, suite, jax.random.key(args.seed), name=name)
    results.update(description=what, trained_horizon=horizon, budget=steps, seed=args.seed, in_family=families,
                   seconds=time.perf_counter() - t0, device=device_info(),
                   command="python benchmarks/evaluate_pretrained.py " + " ".join(sys.argv[1:]))
    if args.shard:
        E.save_results(results, shard_file(i, n))
        print(f"{results['seconds']:.0f} s; wrote {shard_file(i, n)}; when all {n} are done: --merge {n}")
        return
    write_outputs(results, stem, what, steps, horizon)


def write_outputs(results, stem, what, steps, horizon):
    E.save_results(results, stem.with_suffix(".json"))
    table = E.speedup_table(results)
    stem.with_suffix(".md").write_text(f"# {what}\n\nbudget {steps} steps, trained horizon {horizon}; "
                                       f"{results['measure']}\n\nReproduce: `{results['command']}`\n\n{table}")
    E.plot_cdf(results).figure.savefig(stem.with_suffix(".png"), dpi=80, bbox_inches="tight")
    E.plot_task_curves(results, ncols=6).savefig(f"{stem}_curves.png", dpi=60, bbox_inches="tight")
    print(table)
    print(json.dumps(results["summary"], indent=1))
    print(f"{results['seconds']:.0f} s of evaluation; wrote {stem}.json, .md, .png, _curves.png")

if __name__ == "__main__":
    main()
