"""The learned optimizers that ship with minilopt, with no hyperparameter but `num_steps`.

    opt = minilopt.pretrained(num_steps=1000)          # the default: an optax GradientTransformationExtraArgs
    opt = minilopt.pretrained("velo", 1000)            # one by name: "mlp", "scheduled", "velo"
    result = train.fit(task, opt, 1000, key)           # use the same num_steps you train for

Each one lives in `minilopt/lopt/pretrained/NAME/` as two files, with its model card:

    config.json   {"format": "minilopt-pretrained/1",
                   "lopt": "mlp",                     # a name of minilopt.lopt.registry
                   "kwargs": {"hidden": [32], ...},   # its constructor arguments
                   "horizon": 1000,                   # the num_steps T it was meta-trained with
                   "theta": "theta.npz",              # file name, relative to config.json
                   "sha256": "…",                     # of theta.npz (optional; checked when present)
                   ...}                               # anything else: the recipe, a note, the run
    theta.npz     θ, written by `minilopt.lopt.checkpoint.save`

`save(directory, theta, ...)` writes both; `python -m minilopt.lopt.pretrained RUN_DIR --out DIR`
exports θ from a `minilopt meta-train` run (its recipe is read from the run).

Like VeLO, the optimizer knows where it is in training (t / num_steps), and it was
meta-trained for runs of `horizon` steps. Far longer runs are outside what it has
seen: beyond 4x the horizon `pretrained` warns and suggests what VeLO's wrapper
does past its trained length, accumulating k gradients per update so the optimizer
takes about `horizon` steps.
"""
from __future__ import annotations

import hashlib
import json
import math
import pathlib
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from .. import checkpoint, registry

FORMAT = "minilopt-pretrained/1"
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent
NAMES = ("mlp", "scheduled", "velo")   # the shipped weights, one folder each
DEFAULT_NAME = "scheduled"             # what pretrained(num_steps) gives: the best by the suite
DEFAULT_DIR = WEIGHTS_DIR / DEFAULT_NAME
CONFIG, THETA = "config.json", "theta.npz"
LOPTS = registry.LOPTS     # "lopt" in config.json: a registry name ("mlp", "velo", ...) or a class name
HORIZON_FACTOR = 4        # warn when num_steps > HORIZON_FACTOR * horizon

_FIX = ("The shipped weights live in minilopt/lopt/pretrained/ (restore them with "
        "`git checkout minilopt/lopt/pretrained` or reinstall minilopt), or meta-train your own "
        "(`minilopt meta-train --config configs/pretrained_mlp.json`), export them with "
        "`python -m minilopt.lopt.pretrained RUN_DIR --out DIR`, "
        "and pass path=DIR.")


class Pretrained(NamedTuple):
    lopt: Any          # the learned optimizer (e.g. an MLPLOpt)
    theta: Any         # its meta-parameters
    horizon: int       # the num_steps it was meta-trained with
    config: dict       # the whole config.json


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config_path(path) -> pathlib.Path:
    path = DEFAULT_DIR if path is None else pathlib.Path(path)
    return path / CONFIG if path.is_dir() or path.suffix != ".json" else path


def _read_config(file: pathlib.Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"no pretrained weights: {file} is missing. {_FIX}")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is corrupt (not valid JSON: {e}). {_FIX}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} is corrupt: expected a JSON object, got {type(config).__name__}. {_FIX}")
    missing = [k for k in ("format", "lopt", "kwargs", "horizon", "theta") if k not in config]
    if missing:
        raise ValueError(f"{file} lacks the keys {missing} (see minilopt.lopt.pretrained's docstring). {_FIX}")
    if config["format"] != FORMAT:
        raise ValueError(f"{file}: format {config['format']!r}, expected {FORMAT!r}; "
                         "it was written by another version of minilopt")
    try:
        registry.canonical(config["lopt"])
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    if not isinstance(config["kwargs"], dict):
        raise ValueError(f"{file}: kwargs must be a JSON object of constructor arguments")
    if not (isinstance(config["horizon"], int) and config["horizon"] > 0):
        raise ValueError(f"{file}: horizon must be a positive int, got {config['horizon']!r}")
    return config


def load(path=None) -> Pretrained:
    """Read and check the weights in `path` (a directory holding config.json, or the
    config file itself; default: the shipped ones). Missing files are a
    FileNotFoundError, corrupt ones a ValueError; both name the file and the fix."""
    file = _config_path(path)
    config = _read_config(file)
    try:
        lopt = registry.make(config["lopt"], config["kwargs"])
    except ValueError as e:
        raise ValueError(f"{file}: cannot build {config['lopt']}(**{config['kwargs']}): {e}") from None
    name = config["theta"]
    if not (isinstance(name, str) and name not in ("", ".", "..") and pathlib.PurePath(name).name == name
            and "/" not in name and "\\" not in name):
        raise ValueError(f"{file}: 'theta' must name a file in the same folder (e.g. \"{THETA}\"), "
                         f"got {name!r}")
    theta_file = file.parent / name
    if not theta_file.is_file():
        raise FileNotFoundError(f"no pretrained weights: {theta_file} (named in {file}) is missing. {_FIX}")
    if "sha256" in config and _sha256(theta_file) != config["sha256"]:
        raise ValueError(f"{theta_file} is corrupt: its sha256 differs from the one recorded in {file}. {_FIX}")
    try:
        theta = checkpoint.load(theta_file, like=lopt.init(jax.random.PRNGKey(0)))
    except ValueError as e:
        raise ValueError(f"{theta_file} does not hold weights for {type(lopt).__name__}(**{config['kwargs']}): "
                         f"{e}. {_FIX}") from None
    for p, leaf in jax.tree_util.tree_leaves_with_path(theta):
        if not np.all(np.isfinite(leaf)):
            raise ValueError(f"{theta_file} is corrupt: theta{jax.tree_util.keystr(p)} holds NaN or inf. {_FIX}")
    return Pretrained(lopt, theta, config["horizon"], config)


def check_horizon(num_steps, horizon: int, stacklevel: int = 3) -> None:
    """A RuntimeWarning when `num_steps` is more than HORIZON_FACTOR times `horizon`."""
    try:
        steps = float(num_steps)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if steps > HORIZON_FACTOR * horizon:
        k = math.ceil(steps / horizon)
        warnings.warn(
            f"num_steps={int(steps)} is {steps / horizon:.1f}x the horizon this optimizer was meta-trained on "
            f"({horizon} steps); learned optimizers are unreliable far beyond their trained horizon. "
            f"As VeLO's wrapper does for long runs, accumulate gradients so it takes about {horizon} steps: "
            f"optax.MultiSteps(minilopt.pretrained({int(steps) // k}), every_k_schedule={k}).gradient_transformation()",
            RuntimeWarning, stacklevel=stacklevel)


def weights_dir(name: str) -> pathlib.Path:
    """The folder of the shipped weights called `name`; a ValueError lists the names."""
    if name not in NAMES:
        raise ValueError(f"no shipped learned optimizer is called {name!r}; the names are {list(NAMES)} "
                         f"(pretrained(num_steps) gives {DEFAULT_NAME!r})")
    return WEIGHTS_DIR / name


def pretrained(name=None, num_steps=None, *, path=None) -> optax.GradientTransformationExtraArgs:
    """A shipped learned optimizer for a run of `num_steps` steps (an optax
    transformation: `update(grads, state, params, value=loss)`).

    `pretrained(1000)` gives the default one, `pretrained("velo", 1000)` one by name
    (see NAMES); `path` loads other weights in the same format instead (see the
    module docstring)."""
    if num_steps is None:                 # pretrained(num_steps)
        if name is None or isinstance(name, str):
            raise ValueError(f"num_steps (the number of steps you will train for) must be a positive int, got "
                             f"{name!r}: call pretrained(1000), or pretrained('velo', 1000) for one of {list(NAMES)}")
        name, num_steps = None, name
    if name is not None and path is not None:
        raise ValueError(f"pass a name ({name!r}) or a path ({path}), not both")
    weights = load(weights_dir(name) if name is not None else path)
    check_horizon(num_steps, weights.horizon)
    return weights.lopt.optimizer(weights.theta, num_steps)


def save(directory, theta, *, lopt: str, kwargs: dict, horizon: int, **info) -> pathlib.Path:
    """Write `theta` and its config.json into `directory` (created if needed); `info`
    (the recipe, the run, a note) is stored in the config too. Returns the config path.
    The weights are loaded back and checked before this returns."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lopt = registry.canonical(lopt)
    checkpoint.save(directory / THETA, jax.device_get(theta))
    config = {"format": FORMAT, "lopt": lopt, "kwargs": kwargs, "horizon": int(horizon), "theta": THETA,
              "sha256": _sha256(directory / THETA), **info}
    (directory / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    load(directory)
    return directory / CONFIG


def run_recipe(run_dir) -> dict:
    """The recipe of a `minilopt meta-train` run, read back from its checkpoint: the
    CLI's options ("lopt", "lopt_args", "family", "family_args", "seed", ...) plus the
    unroll's "horizon", "truncation", "estimator", "num_particles", "sigma"."""
    from ...meta import trainer

    run = pathlib.Path(run_dir)
    _, config = trainer.read_checkpoint(run / trainer.CHECKPOINT if run.is_dir() else run)
    if "cli" not in config:
        raise ValueError(f"{run} was not written by `minilopt meta-train` (no 'cli' entry in its config); "
                         "pass the recipe JSON it was made with")
    unroll = {k: config[k] for k in ("horizon", "truncation", "estimator", "num_particles", "sigma") if k in config}
    return {**config["cli"], **unroll}


def export_run(run_dir, recipe=None, out=None) -> pathlib.Path:
    """θ from a meta-training run (`run_dir/checkpoint.npz`) into `out`.

    The learned optimizer, its arguments and the horizon come from the run's own
    checkpoint (`run_recipe`); `recipe`, a JSON config (keys of `minilopt
    meta-train`: "lopt", "lopt_args", "horizon", ...), adds to it, and must agree with
    the run where both say something. The merged recipe is stored in config.json."""
    if out is None:   # never the shipped weights by default
        raise ValueError("export_run needs out=DIR, the folder to write; load the result with "
                         "pretrained(T, path=DIR)")
    from ...meta import load_theta

    try:
        spec = run_recipe(run_dir)
    except ValueError:
        if recipe is None:
            raise
        spec = {}
    if recipe is not None:
        recipe_file = pathlib.Path(recipe)
        given = json.loads(recipe_file.read_text())
        clash = {k: (given[k], spec[k]) for k in ("lopt", "lopt_args", "horizon", "family", "family_args", "seed")
                 if k in given and k in spec and given[k] != spec[k]}
        if clash:
            raise ValueError(f"{recipe_file} disagrees with the run {run_dir}: "
                             + ", ".join(f"{k}: recipe {a!r}, run {b!r}" for k, (a, b) in clash.items()))
        spec = {**given, **spec}
    try:
        name = registry.canonical(spec.get("lopt"))
    except ValueError as e:
        raise ValueError(f"the recipe of {run_dir}: {e}") from None
    if not isinstance(spec.get("horizon"), int):
        raise ValueError(f"the recipe of {run_dir} needs an int 'horizon' (the meta-training num_steps)")
    kwargs = spec.get("lopt_args") or {}
    lopt = registry.make(name, kwargs)
    theta = load_theta(run_dir, like=lopt.init(jax.random.PRNGKey(0)))
    return save(out, theta, lopt=name, kwargs=kwargs, horizon=spec["horizon"], recipe=spec,
                run=str(pathlib.Path(run_dir)))


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m minilopt.lopt.pretrained", description="Export θ from a meta-training run as pretrained weights.")
    ap.add_argument("run_dir", help="the meta-training output directory (holds checkpoint.npz)")
    ap.add_argument("--recipe", help="the recipe JSON the run was made with (optional: the run's checkpoint "
                                     "already records it; given, it must agree)")
    ap.add_argument("--out", required=True,
                    help=f"the directory to write (required: the shipped weights in {DEFAULT_DIR} are never "
                         "overwritten by default)")
    args = ap.parse_args(argv)
    try:
        path = export_run(args.run_dir, args.recipe, args.out)
    except (ValueError, FileNotFoundError, OSError) as e:
        ap.error(str(e))  # exit code 2 with the message, no traceback
    print(f"wrote {path} and {path.parent / THETA}")
