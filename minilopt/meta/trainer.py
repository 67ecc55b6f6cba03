"""The outer loop of meta-training: estimate, update θ, log, checkpoint.

    for step in range(steps):
        key, k = split(key)
        g, est_state, metrics = estimator(θ, est_state, k)        # jitted once
        θ, meta_opt_state = meta_optimizer step on g

One outer step is a single jitted function. The particle axis of every
per-particle array (inner states, PES accumulators, per-particle keys) is sharded
over a one-axis device mesh named "particles"; θ and the meta-optimizer state are
replicated. Under jit the mean over particles becomes an all-reduce, so the same
code runs on one CPU, one GPU or many. The number of particles must be a multiple
of the number of devices.

Checkpoints (`DIR/checkpoint.npz`) hold θ, the meta-optimizer state, the estimator
state, the outer step and the PRNG key, plus the run's configuration. They are
written atomically (a temporary file, fsync, then a rename), so a kill never leaves
a torn file; the temporary files of a killed write are removed at the next start.
Resuming loads them and continues exactly as if the run had never stopped: the same
key stream, hence the same results. The configuration is complete (every setting of
the estimator, the unroll, the learned optimizer and the task family, θ's leaves and
the meta-optimizer state's structure): a checkpoint written with any other one is
refused, and the differing entries are named. A checkpoint holding NaN, a step
outside 0..steps, or leaves of another structure is refused too.

Metrics go to `DIR/metrics.jsonl`, one JSON object per logged step. A torn last
line (a kill mid-write) is dropped with a warning on resume.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import sys
import tempfile
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..lopt.checkpoint import atomic_write, clean_temporaries, read_npz, write_npz

CHECKPOINT, METRICS, CONFIG = "checkpoint.npz", "metrics.jsonl", "config.json"
# Clip the meta-gradient's global norm to 1, then Adam: the usual, stable choice.
DEFAULT_META_OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))


class MetaTrainResult(NamedTuple):
    theta: Any
    meta_opt_state: Any
    estimator_state: Any
    step: int
    key: jax.Array
    history: dict          # metric name -> np.ndarray over logged steps ("step" included)
    out: pathlib.Path | None


# ---------------------------------------------------------------------------
# Checkpoints: flattened tree paths in one .npz, written atomically
# ---------------------------------------------------------------------------
def _raw_key(key):
    """Typed PRNG keys become their uint32 data, so every state leaf is a plain array."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _flatten(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def save_checkpoint(path, tree, config: dict) -> pathlib.Path:
    """Write `tree` (any pytree of arrays) and `config` to `path` atomically
    (`minilopt.lopt.checkpoint.write_npz`: temporary file, fsync, rename; mode 0644)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _flatten(jax.device_get(tree))
    arrays["__config__"] = np.array(json.dumps(config, sort_keys=True))
    return write_npz(path, arrays)


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays by tree path, config) of a checkpoint file; a ValueError that names
    the file if it is not one (see `minilopt.lopt.checkpoint.read_npz`)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    arrays = read_npz(path)
    text = arrays.pop("__config__", None)
    if text is None or text.shape != () or text.dtype.kind != "U":
        raise ValueError(f"{path} holds no run configuration (entry '__config__'); it is not a meta-training "
                         "checkpoint: start a new run in another directory")
    try:
        config = json.loads(str(text))
    except (json.JSONDecodeError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: its '__config__' entry is not a JSON object; the file is corrupt")
    return arrays, config


def restore(arrays: dict[str, np.ndarray], like, where: str = "checkpoint"):
    """`like`'s tree, filled with `arrays` (as written by `save_checkpoint`);
    a ValueError names any missing or extra leaf, any leaf of the wrong shape or
    dtype, and any non-finite floating-point leaf."""
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(like)]
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise ValueError(f"{where} has entries this run does not have: {extra[:6]}; it was written for a "
                         "different structure (e.g. another meta-optimizer): resume with the same settings")
    leaves = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(like):
        name = jax.tree_util.keystr(path)
        if name not in arrays:
            raise ValueError(f"{where} has no entry {name!r}; it was written for a different structure "
                             f"(it has {sorted(arrays)[:6]}...)")
        value = arrays[name]
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if value.shape != np.shape(leaf) or value.dtype != dtype:
            raise ValueError(f"{where}: {name} has shape {value.shape} and dtype {value.dtype}, "
                             f"expected {np.shape(leaf)} and {dtype}")
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: {name} holds NaN or inf; the checkpoint is corrupt (training never "
                             "applies a non-finite step): resume from a copy, or start a new run")
        leaves.append(value)
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def load_theta(path, like):
    """θ from a meta-training checkpoint (or from `DIR`, meaning `DIR/checkpoint.npz`)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    arrays, _ = read_checkpoint(path)
    theta = {k[len("['theta']"):]: v for k, v in arrays.items() if k.startswith("['theta']")}
    if not theta:
        raise ValueError(f"{path} holds no θ (no entry under ['theta']); it is not a meta-training checkpoint")
    return restore(theta, like, f"θ in {path}")


def _check_config(saved: dict, wanted: dict, path) -> None:
    keys = sorted(set(saved) | set(wanted))
    diffs = [f"{k}: checkpoint has {saved.get(k, '(missing)')!r}, this run has {wanted.get(k, '(missing)')!r}"
             for k in keys if saved.get(k) != wanted.get(k)]
    if diffs:
        raise ValueError(f"checkpoint {path} was written by a different configuration; refusing to resume:\n  "
                         + "\n  ".join(diffs) + "\nresume with the same settings, or start in a new directory")


# ---------------------------------------------------------------------------
# Progress and metrics
# ---------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr ('\\r' redraws in terminals and notebooks)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, width: int = 24, stream=None):
        self.total, self.start, self.enabled, self.width = total, start, enabled, width
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()

    def update(self, step: int, metrics: dict, force: bool = False):
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.2 and not force):
            return
        self.last = now
        done = int(self.width * step / max(self.total, 1))
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in ("meta_loss", "grad_norm"))
        self.stream.write(f"\r[{'#' * done}{'.' * (self.width - done)}] {step}/{self.total} {shown} "
                          f"{rate:.2f} steps/s")
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _read_log(path: pathlib.Path) -> list[dict]:
    """The rows of a metrics log. A torn last line (a kill mid-write) is dropped with
    a warning that names the file; any other unreadable line is a ValueError."""
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable metrics log ({type(e).__name__}: {e})") from None
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        elif i == len(lines) - 1:
            warnings.warn(f"{path}: dropped a torn last line (line {i + 1}), left by an interrupted write",
                          RuntimeWarning, stacklevel=3)
        else:
            raise ValueError(f"{path}, line {i + 1}: not a metrics row (a JSON object with an int 'step'); "
                             "the log is corrupt: delete the line or the file")
    return rows


def read_metrics(path) -> dict[str, np.ndarray]:
    """The metrics log (`DIR/metrics.jsonl` or a file) as arrays, one entry per logged step."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / METRICS
    rows = _read_log(path)
    return {k: np.array([r.get(k, np.nan) for r in rows]) for k in (rows[0] if rows else {})}


def _trim_log(path: pathlib.Path, step: int) -> list[dict]:
    """Keep only the log lines up to `step` (lines after the last checkpoint are
    redone); the log is rewritten atomically."""
    rows = [r for r in _read_log(path) if r["step"] <= step]
    if path.exists():
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        atomic_write(path, lambda f: f.write(text))
    return rows


def _check_writable(out: pathlib.Path) -> None:
    """A ValueError now, before any work, if `out` cannot hold the run's files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} exists and is not a directory; pass a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"out={str(out)!r} is not a writable directory ({e.strerror or e}); "
                         "pass a directory you can write to") from None


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------
def particle_mesh(devices=None) -> Mesh:
    """A one-axis mesh named "particles" over `devices` (default: all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), ("particles",))


@functools.lru_cache(maxsize=8)  # the same estimator and meta-optimizer again (a resume) compile once
def make_outer_step(estimator, meta_optimizer, mesh: Mesh):
    """The jitted outer step `(θ, opt_state, est_state, key) -> (θ, opt_state, est_state, key, metrics)`,
    and the shardings (replicated, per-particle) it uses."""
    replicated = NamedSharding(mesh, PartitionSpec())
    per_particle = NamedSharding(mesh, PartitionSpec("particles"))
    est = estimator.with_sharding(per_particle)

    def outer_step(theta, opt_state, est_state, key):
        key, k = jax.random.split(key)
        grad, est_state, metrics = est(theta, est_state, k)
        updates, opt_state = meta_optimizer.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, est_state, key, metrics

    step = jax.jit(outer_step, out_shardings=(replicated, replicated, per_particle, replicated, replicated))
    return step, replicated, per_particle, jax.jit(estimator.with_sharding(None).init)


def meta_train(estimator, theta, steps: int, key, *, meta_optimizer=None, out=None, checkpoint_every: int = 50,
               resume: bool = False, devices=None, log_every: int = 1, progress: bool = True,
               config: dict | None = None) -> MetaTrainResult:
    """Meta-train θ for `steps` outer steps (in total, counting resumed ones).

    meta_optimizer:   any optax transformation on θ (default: clip the global norm
                      to 1, then Adam at 1e-3)
    out:              a directory for checkpoint.npz, metrics.jsonl and config.json
                      (None: nothing is written)
    checkpoint_every: outer steps between checkpoints (one is always written at the end)
    resume:           continue from `out`'s checkpoint; without it, an existing
                      checkpoint in `out` is an error (nothing is overwritten by accident)
    devices:          the devices to shard particles over (default: all)
    config:           extra settings that fix the run (e.g. the meta learning rate);
                      stored in checkpoints and compared on resume
    """
    if not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    for name, every in (("checkpoint_every", checkpoint_every), ("log_every", log_every)):
        if not (isinstance(every, (int, np.integer)) and not isinstance(every, bool) and every >= 1):
            raise ValueError(f"{name} must be an int >= 1, got {every!r}")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict of the run's extra settings, got {type(config).__name__}")
    meta_optimizer = meta_optimizer or DEFAULT_META_OPTIMIZER
    mesh = particle_mesh(devices)
    n_dev = mesh.devices.size
    if estimator.num_particles % n_dev:
        raise ValueError(f"{estimator.num_particles} particles cannot be split evenly over {n_dev} devices; "
                         f"use a multiple of {n_dev} particles, or pass devices=jax.devices()[:k]")
    step_fn, replicated, per_particle, init_fn = make_outer_step(estimator, meta_optimizer, mesh)
    key = _raw_key(jnp.asarray(key))
    k_state, key = jax.random.split(key)
    theta = jax.tree.map(jnp.asarray, theta)
    opt_state = meta_optimizer.init(theta)
    # everything that fixes the run, so that a resume under any other settings is refused:
    # the estimator, unroll, learned optimizer and task family (estimator.config()), the
    # caller's extras, θ's leaves and the meta-optimizer's state structure
    full_config = {**estimator.config(), **(config or {}),
                   "theta": {k: list(v.shape) for k, v in _flatten(jax.eval_shape(lambda: theta)).items()},
                   "meta_optimizer_state": str(jax.tree.structure(opt_state))}
    full_config = json.loads(json.dumps(full_config, default=str))  # what a JSON round trip gives back

    out = pathlib.Path(out) if out is not None else None
    saved = None
    if out is not None:
        _check_writable(out)
        for name in (CHECKPOINT, METRICS, CONFIG):
            clean_temporaries(out, name)  # litter of a run killed mid-write
        ckpt = out / CHECKPOINT
        if ckpt.exists() and not resume:
            raise ValueError(f"{ckpt} exists; pass resume=True (--resume) to continue it, or use another directory")
        if ckpt.exists():
            saved, saved_config = read_checkpoint(ckpt)
            _check_config(saved_config, full_config, ckpt)  # before any compiling: fail fast

    start = 0
    # on a resume only the shapes are needed: the state itself comes from the checkpoint
    est_state = init_fn(theta, k_state) if saved is None else jax.eval_shape(init_fn, theta, k_state)
    history: list[dict] = []
    if saved is not None:
        like = {"theta": theta, "meta_opt_state": opt_state, "estimator_state": est_state,
                "step": np.int64(0), "key": key}
        restored = restore(saved, like, str(out / CHECKPOINT))
        theta, opt_state, est_state = restored["theta"], restored["meta_opt_state"], restored["estimator_state"]
        start, key = int(restored["step"]), jnp.asarray(restored["key"])
        if not 0 <= start <= steps:
            raise ValueError(f"{out / CHECKPOINT} is at outer step {start}, outside 0..steps={steps}; "
                             + ("the file is corrupt" if start < 0 else f"pass steps >= {start} to continue it"))
    if out is not None:
        history = _trim_log(out / METRICS, start)
        text = (json.dumps(full_config, indent=1, sort_keys=True) + "\n").encode()
        atomic_write(out / CONFIG, lambda f: f.write(text))

    theta = jax.device_put(theta, replicated)
    opt_state = jax.device_put(opt_state, replicated)
    est_state = jax.device_put(est_state, per_particle)
    key = jax.device_put(key, replicated)

    def checkpoint(step):
        if out is not None:
            save_checkpoint(out / CHECKPOINT, {"theta": theta, "meta_opt_state": opt_state,
                                               "estimator_state": est_state, "step": np.int64(step), "key": key},
                            full_config)

    bar = Progress(steps, start, enabled=progress)
    log = open(out / METRICS, "a") if out is not None else None
    t0 = time.perf_counter()
    try:
        for step in range(start, steps):
            theta, opt_state, est_state, key, metrics = step_fn(theta, opt_state, est_state, key)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                row = {"step": step + 1, **{k: float(v) for k, v in jax.device_get(metrics).items()},
                       "time": time.perf_counter() - t0}
                history.append(row)
                if log is not None:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                bar.update(step + 1, row, force=step + 1 == steps)
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                checkpoint(step + 1)
    finally:
        bar.close()
        if log is not None:
            log.close()
    hist = {k: np.array([r.get(k, math.nan) for r in history]) for k in (history[0] if history else {})}
    return MetaTrainResult(theta, opt_state, est_state, max(start, steps), key, hist, out)
