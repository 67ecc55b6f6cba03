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
written atomically (a temporary file, then a rename), so a kill never leaves a torn
file. Resuming loads them and continues exactly as if the run had never stopped:
the same key stream, hence the same results. A checkpoint written with a different
configuration is refused, and the differing entries are named.

Metrics go to `DIR/metrics.jsonl`, one JSON object per logged step.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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
    """Write `tree` (any pytree of arrays) and `config` to `path` atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _flatten(jax.device_get(tree))
    arrays["__config__"] = np.array(json.dumps(config, sort_keys=True))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays by tree path, config) of a checkpoint file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    config = json.loads(str(arrays.pop("__config__")))
    return arrays, config


def restore(arrays: dict[str, np.ndarray], like, where: str = "checkpoint"):
    """`like`'s tree, filled with `arrays` (as written by `save_checkpoint`);
    a ValueError names any missing leaf or any leaf of the wrong shape or dtype."""
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
        leaves.append(value)
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def load_theta(path, like):
    """θ from a meta-training checkpoint (or from `DIR`, meaning `DIR/checkpoint.npz`)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    arrays, _ = read_checkpoint(path)
    theta = {k[len("['theta']"):]: v for k, v in arrays.items() if k.startswith("['theta']")}
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


def read_metrics(path) -> dict[str, np.ndarray]:
    """The metrics log (`DIR/metrics.jsonl` or a file) as arrays, one entry per logged step."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / METRICS
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {k: np.array([r.get(k, np.nan) for r in rows]) for k in (rows[0] if rows else {})}


def _trim_log(path: pathlib.Path, step: int) -> list[dict]:
    """Keep only the log lines up to `step` (lines after the last checkpoint are redone)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


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
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if checkpoint_every < 1 or log_every < 1:
        raise ValueError(f"checkpoint_every and log_every must be >= 1, got {checkpoint_every}, {log_every}")
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
    full_config = {**estimator.config(), **(config or {}),
                   "theta": {k: list(v.shape) for k, v in _flatten(jax.eval_shape(lambda: theta)).items()}}
    full_config = json.loads(json.dumps(full_config, default=str))  # what a JSON round trip gives back

    out = pathlib.Path(out) if out is not None else None
    saved = None
    if out is not None:
        ckpt = out / CHECKPOINT
        if ckpt.exists() and not resume:
            raise ValueError(f"{ckpt} exists; pass resume=True (--resume) to continue it, or use another directory")
        if ckpt.exists():
            saved, saved_config = read_checkpoint(ckpt)
            _check_config(saved_config, full_config, ckpt)  # before any compiling: fail fast

    start = 0
    opt_state = meta_optimizer.init(theta)
    # on a resume only the shapes are needed: the state itself comes from the checkpoint
    est_state = init_fn(theta, k_state) if saved is None else jax.eval_shape(init_fn, theta, k_state)
    history: list[dict] = []
    if saved is not None:
        like = {"theta": theta, "meta_opt_state": opt_state, "estimator_state": est_state,
                "step": np.int64(0), "key": key}
        restored = restore(saved, like, str(out / CHECKPOINT))
        theta, opt_state, est_state = restored["theta"], restored["meta_opt_state"], restored["estimator_state"]
        start, key = int(restored["step"]), jnp.asarray(restored["key"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        history = _trim_log(out / METRICS, start)
        (out / CONFIG).write_text(json.dumps(full_config, indent=1, sort_keys=True) + "\n")

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
