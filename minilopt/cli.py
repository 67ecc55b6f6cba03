"""The `minilopt` command: meta-train a learned optimizer, and evaluate one.

    minilopt meta-train --lopt mlp --family digits_mlp --estimator pes \\
        --particles 16 --horizon 200 --truncation 20 --steps 500 --out runs/pes
    minilopt meta-train ... --out runs/pes --resume        # continue after a stop
    minilopt evaluate runs/pes --family digits_mlp --tasks 4 --out runs/pes/eval

`meta-train` writes DIR/checkpoint.npz, DIR/metrics.jsonl, DIR/config.json and
DIR/meta_loss.png. `evaluate` trains held-out tasks with the learned optimizer and
with Adam tuned over a learning-rate grid (`train.lr_sweep`), scores each task with
`minilopt.evaluate`'s speedup measure, and writes DIR/evaluate.png and
DIR/evaluate.json. Both print where their outputs went.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

from .lopt.registry import LOPTS, make as make_lopt   # the one registry of learned optimizers


def make_family(name: str, kwargs: dict | None = None, seed: int = 0):
    """A fixed-shape task family by name (a random family is drawn once, from `seed`)."""
    from . import tasks

    try:
        return tasks.fixed_shape_family(name, kwargs, seed)
    except TypeError as e:  # an unknown or misplaced keyword argument
        raise ValueError(f"--family {name} --family-args {json.dumps(kwargs)}: {e}") from None


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"hidden\": [32]}}', got {text!r}")
    return value


def plot_meta_loss(history: dict, path: pathlib.Path) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import trailing_mean

    fig, ax = plt.subplots(figsize=(5, 3.2))
    loss = history["meta_loss"]
    window = max(1, len(loss) // 20)
    ax.plot(history["step"], loss, alpha=0.3, label="meta-loss")
    ax.plot(history["step"], trailing_mean(loss, window), label=f"moving average ({window})")
    ax.set(xlabel="outer step", ylabel="meta-loss", title="meta-training")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def warm_start(path, like):
    """θ to start a new run from: exported weights (a directory with config.json, as
    `python -m minilopt.lopt.pretrained` writes) or a meta-training run (its checkpoint.npz).
    It must have the structure of `like`. A warm start is a NEW run: the outer step,
    the meta-optimizer's state and the particles all start afresh (use --resume to
    continue a run exactly)."""
    from .lopt import pretrained as weights
    from .meta import trainer

    path = pathlib.Path(path)
    if not (path / trainer.CHECKPOINT).is_file() and (path / weights.CONFIG).is_file():
        loaded = weights.load(path)
        if jax_structure(loaded.theta) != jax_structure(like):
            raise ValueError(f"--init-theta {path} holds weights of another learned optimizer or size "
                             f"({loaded.config['lopt']} {loaded.config['kwargs']}); "
                             "pass weights of the --lopt and --lopt-args you meta-train")
        return loaded.theta
    return trainer.load_theta(path / trainer.CHECKPOINT if path.is_dir() else path, like)


def jax_structure(tree):
    import jax
    return jax.tree.structure(tree), [getattr(x, "shape", ()) for x in jax.tree.leaves(tree)]


def meta_train_command(args) -> dict:
    import jax
    import optax

    from .meta import estimators, trainer
    from .meta.mixture import Mixture
    from .meta.unroll import TruncatedUnroll

    lopt = make_lopt(args.lopt, args.lopt_args)
    if args.structures < 1 or args.particles % args.structures:
        raise ValueError(f"--particles {args.particles} must split evenly over --structures {args.structures}")
    # One fixed-shape family per structure (a random family is drawn once per structure),
    # each with its share of the particles; a Mixture averages their meta-gradients.
    families = [make_family(args.family, args.family_args, args.seed + i) for i in range(args.structures)]
    parts = [estimators.make(args.estimator, TruncatedUnroll(lopt, f, args.horizon, args.truncation,
                                                             clip=args.loss_clip, log_loss=args.log_loss),
                             args.particles // args.structures, args.sigma) for f in families]
    estimator = parts[0] if len(parts) == 1 else Mixture(parts)
    meta_opt = optax.chain(optax.clip_by_global_norm(args.clip_grad), optax.adam(args.lr))
    config = {"cli": {"lopt": args.lopt, "lopt_args": args.lopt_args, "family": args.family,
                      "family_args": args.family_args, "seed": args.seed, "lr": args.lr, "clip_grad": args.clip_grad,
                      "structures": args.structures, "log_loss": args.log_loss}}
    key = jax.random.PRNGKey(args.seed)
    theta = lopt.init(jax.random.fold_in(key, 1))
    if args.init_theta:
        theta = warm_start(args.init_theta, theta)
        config["cli"]["init_theta"] = args.init_theta
    result = trainer.meta_train(estimator, theta, args.steps, key,
                                meta_optimizer=meta_opt, out=args.out, checkpoint_every=args.checkpoint_every,
                                resume=args.resume, progress=not args.quiet, config=config)
    out = pathlib.Path(args.out)
    history = trainer.read_metrics(out)
    outputs = {"checkpoint": out / trainer.CHECKPOINT, "metrics": out / trainer.METRICS,
               "config": out / trainer.CONFIG}
    if len(history.get("step", [])):
        outputs["plot"] = plot_meta_loss(history, out / "meta_loss.png")
    names = ", ".join(f.name for f in families)
    print(f"meta-trained {args.lopt} on {names} with {estimator!r} for {result.step} outer steps")
    for what, path in outputs.items():
        print(f"  {what}: {path}")
    return outputs


def evaluate_command(args) -> dict:
    """`minilopt.evaluate`'s measure on held-out draws of one family: per task, the
    learned optimizer's run against Adam tuned over the --num-lrs grid on the same
    task, batches and budget, scored by `evaluate.speedup` (both curves smoothed by
    `evaluate.trailing_mean`, w = ceil(T/10)) and summarised by `evaluate.summarize`.
    The whole suite, with the cosine baseline, is `evaluate.evaluate(...)`."""
    import jax
    import numpy as np
    import optax

    from . import evaluate, train
    from .meta import trainer

    run = pathlib.Path(args.theta)
    ckpt = run / trainer.CHECKPOINT if run.is_dir() else run
    _, config = trainer.read_checkpoint(ckpt)
    cli = config.get("cli", {})
    lopt_name = args.lopt or cli.get("lopt")
    if lopt_name is None:
        raise ValueError(f"{ckpt} does not say which learned optimizer it holds; pass --lopt {{{','.join(sorted(LOPTS))}}}")
    lopt = make_lopt(lopt_name, cli.get("lopt_args") if args.lopt in (None, cli.get("lopt")) else None)
    theta = trainer.load_theta(ckpt, lopt.init(jax.random.PRNGKey(0)))
    steps = args.steps or int(config["horizon"])
    family = make_family(args.family, args.family_args, args.seed)
    lrs = np.logspace(-4, 0, args.num_lrs)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    finite = lambda x: x if math.isfinite(x) else None  # noqa: E731  (JSON has no inf)
    rows, curves = [], []
    for i in range(args.tasks):
        key = jax.random.fold_in(jax.random.key(args.seed), i)
        task = family.sample(key, "heldout")
        learned = train.fit(task, lopt.optimizer(theta, steps), steps, key)
        sweep = train.lr_sweep(task, optax.adam, lrs, steps, key)
        adam = sweep.train_loss[sweep.best_index]
        measure = evaluate.speedup(adam, learned.train_loss)
        rows.append({"task": i, "speedup": measure.speedup, "speedup_is_lower_bound": measure.lower_bound,
                     "speedup_is_upper_bound": measure.upper_bound,
                     "learned_final_loss": finite(measure.final_lopt), "adam_final_loss": finite(measure.final_adam),
                     "adam_best_lr": sweep.best_lr})
        curves.append((learned.train_loss, adam, sweep.best_lr))
    speedups = [r["speedup"] for r in rows]
    wins = sum(s > 1 for s in speedups)
    summary = {"checkpoint": str(ckpt), "family": family.name, "steps": steps, "measure": evaluate.MEASURE,
               "adam_learning_rates": lrs.tolist(), "tasks": rows, "summary": evaluate.summarize(speedups),
               "learned_beats_tuned_adam": wins}
    (out / "evaluate.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = _plot_evaluation(curves, out / "evaluate.png", family.name)
    print(f"evaluated {ckpt} on {args.tasks} held-out {family.name} tasks, {steps} steps: "
          f"the learned optimizer ends below LR-tuned Adam on {wins}/{args.tasks} "
          f"(median speedup {np.median(speedups):.2f}x)")
    print(f"  results: {out / 'evaluate.json'}\n  plot: {png}")
    return {"results": out / "evaluate.json", "plot": png}


def _plot_evaluation(curves, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import default_window, trailing_mean

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), squeeze=False)
    for ax, (learned, adam, lr) in zip(axes[0], curves):
        w = default_window(len(learned))
        ax.plot(trailing_mean(learned, w), label="learned")
        ax.plot(trailing_mean(adam, w), label=f"Adam, tuned lr {lr:.2g}")
        ax.set(yscale="log", xlabel="step")
        ax.legend(fontsize=7)
    axes[0][0].set(ylabel=f"training loss (trailing mean of {w})", title=title)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minilopt", description="Meta-train and evaluate learned optimizers.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("meta-train", help="meta-train a learned optimizer on a task family")
    m.add_argument("--lopt", choices=sorted(LOPTS), default="mlp")
    m.add_argument("--lopt-args", type=_json_arg, default={}, help="JSON keyword arguments of the lopt")
    m.add_argument("--family", default="digits_mlp", help="a name from minilopt.tasks.FAMILIES")
    m.add_argument("--family-args", type=_json_arg, default={}, help='e.g. \'{"hidden": [32], "batch_size": 64}\'')
    m.add_argument("--estimator", default="pes", choices=["pes", "truncated_es", "es", "truncated_grad", "full_grad"])
    m.add_argument("--particles", type=int, default=16, help="antithetic pairs (ES) or runs (backprop)")
    m.add_argument("--horizon", type=int, default=200, help="inner steps per episode (T)")
    m.add_argument("--truncation", type=int, default=20, help="inner steps per truncation (K); T must be a multiple of K")
    m.add_argument("--sigma", type=float, default=0.01, help="ES perturbation scale")
    m.add_argument("--loss-clip", type=float, default=2.0, help="clip of the normalised per-step meta-loss")
    m.add_argument("--log-loss", action="store_true",
                   help="meta-loss = log of the normalised loss (weighs the end of training as much as the start)")
    m.add_argument("--steps", type=int, default=500, help="outer steps (in total, counting resumed ones)")
    m.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate of the meta-optimizer")
    m.add_argument("--clip-grad", type=float, default=1.0, help="global-norm clip of the meta-gradient")
    m.add_argument("--checkpoint-every", type=int, default=50)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--structures", type=int, default=1,
                   help="meta-train on this many fixed-shape draws of the family at once (particles split evenly)")
    m.add_argument("--config", default=None,
                   help="a JSON recipe whose keys are these options (dashes as underscores); flags given here win")
    m.add_argument("--out", default=None, help="output directory (required, here or in --config)")
    m.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
    m.add_argument("--init-theta", default=None,
                   help="start a new run from these weights (exported weights or a run directory)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")

    p.meta_train = m  # parse() sets a recipe's values as this sub-command's defaults
    e = sub.add_parser("evaluate", help="compare a meta-trained optimizer with LR-tuned Adam on held-out tasks, "
                                        "by minilopt.evaluate's speedup measure")
    e.add_argument("theta", help="a meta-training directory or its checkpoint.npz")
    e.add_argument("--family", default="digits_mlp")
    e.add_argument("--family-args", type=_json_arg, default={})
    e.add_argument("--lopt", choices=sorted(LOPTS), default=None, help="override the lopt named in the checkpoint")
    e.add_argument("--steps", type=int, default=None, help="inner steps (default: the meta-training horizon)")
    e.add_argument("--tasks", type=int, default=3, help="held-out tasks to evaluate on")
    e.add_argument("--num-lrs", type=int, default=9, help="Adam learning rates in the sweep, 1e-4 to 1")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="output directory (default: THETA_DIR/evaluate)")
    return p


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Refuse bad arguments with exit code 2 and a message, before any work starts."""
    def number(name, value, low=0.0, integer=False, allow_equal=False):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= low if allow_equal else value > low) and (not integer or float(value).is_integer())
        if not ok:
            bound = f">= {low:g}" if allow_equal else f"> {low:g}"
            p.error(f"--{name.replace('_', '-')} must be a finite {'integer' if integer else 'number'} {bound}, "
                    f"got {value!r}")

    if args.command == "meta-train":
        for name in ("lr", "clip_grad", "sigma", "loss_clip"):
            number(name, getattr(args, name))
        for name in ("particles", "horizon", "truncation", "checkpoint_every", "structures"):
            number(name, getattr(args, name), 1, integer=True, allow_equal=True)
        number("steps", args.steps, 0, integer=True, allow_equal=True)
        for name in ("lopt_args", "family_args"):
            if not isinstance(getattr(args, name), dict):
                p.error(f"--{name.replace('_', '-')} must be a JSON object of keyword arguments, "
                        f"got {getattr(args, name)!r}")
    else:
        number("tasks", args.tasks, 1, integer=True, allow_equal=True)
        number("num_lrs", args.num_lrs, 1, integer=True, allow_equal=True)
        if args.steps is not None:
            number("steps", args.steps, 1, integer=True, allow_equal=True)
    if args.out is not None:
        _check_out_dir(p, pathlib.Path(args.out))


def _check_out_dir(p: argparse.ArgumentParser, out: pathlib.Path) -> None:
    """--out must be a directory we can write to, or one we can create: checked now,
    not at the first checkpoint after the work is done."""
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} exists and is not a directory; pass a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        p.error(f"--out {out}: {existing} is not a writable directory; pass a directory you can write to")


def parse(argv=None) -> argparse.Namespace:
    """Parse the command line; for meta-train, a --config recipe supplies the defaults."""
    p = parser()
    args = p.parse_args(argv)
    if args.command == "meta-train" and args.config:
        path = pathlib.Path(args.config)
        try:
            recipe = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"cannot read the recipe {path}: {e}")
        if not isinstance(recipe, dict):
            p.error(f"{path}: a recipe is a JSON object of meta-train options, got {type(recipe).__name__}")
        recipe.pop("description", None)
        known = set(vars(args))
        unknown = sorted(set(recipe) - known)
        if unknown:
            p.error(f"{path}: unknown recipe keys {unknown}; use the meta-train options with underscores")
        p.meta_train.set_defaults(**recipe)
        args = p.parse_args(argv)
    if args.command == "meta-train" and not args.out:
        p.error("meta-train needs --out DIR (or an 'out' key in --config)")
    _check_args(p, args)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    try:
        if args.command == "meta-train":
            meta_train_command(args)
        else:
            if args.out is None:
                base = pathlib.Path(args.theta)
                args.out = str((base if base.is_dir() else base.parent) / "evaluate")
            evaluate_command(args)
    except ValueError as e:
        print(f"minilopt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
