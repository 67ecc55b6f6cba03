"""The cost of one learned-optimizer update, against optax.adam, at 1M / 10M / 100M parameters.

Parameters: a 4-hidden-layer MLP tree (weights and biases) sized to the target
count. For each optimizer, all in this process:

- time: many updates (update + apply_updates) inside ONE jitted `lax.fori_loop`
  with donated parameter and state buffers, divided by the step count; best of
  several repeats. (Timing single calls would measure Python dispatch.)
- HLO bytes accessed per parameter for ONE update, from
  `jax.jit(step).lower(...).compile().cost_analysis()`.
- memory: the compiled step's footprint (`memory_analysis`: arguments + outputs +
  temporaries − aliased) and, where the backend reports it, the process's peak
  device memory after the run (`device.memory_stats()["peak_bytes_in_use"]`,
  cumulative over the process).

Optimizers: optax.adam (the baseline), minilopt VeLO at the released size
(H=512, P=256, random weights: the cost does not depend on their values), and the
per-parameter MLP and L2L LSTM learned optimizers when `minilopt.lopt.mlp` /
`minilopt.lopt.lstm` provide them (imported defensively; the JSON says which ran).
`--velo-path` picks VeLO's code (one or more): `fast` (velo_fast, with the Pallas
kernels where they load; label velo_512x256), `fast_xla` (velo_fast without the
kernels: velo_512x256_xla) and `reference` (velo.py: velo_512x256_reference).

Reference points (H200, from the issue): Adam 0.09 ms at 10M and 0.69 ms at 100M
(28 bytes/param); the reference VeLO implementation 7.4 ms and 64 ms (~700 bytes/param).
Target: minilopt VeLO <= 4x Adam at 10M and 100M.

    python benchmarks/lopt_step.py --quick   # CPU: 0.1M and 1M parameters
    python benchmarks/lopt_step.py           # GPU: 1M, 10M, 100M (< 4 min on an H100)
    python benchmarks/lopt_step.py --sizes 1e7 1e8 --velo-path fast fast_xla reference

Writes results/lopt_step[_quick]_<platform>.json and .png.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import RESULTS, device_info  # noqa: E402

from minilopt.lopt import VeLO, velo_fast  # noqa: E402

DEPTH = 4  # hidden layers of the MLP tree


def mlp_tree(n_params: int, key) -> dict:
    """A `DEPTH`-hidden-layer MLP (width w, input w, 10 outputs) with ~n_params.

    w is a multiple of 128, as real layer widths are: with w = 4714, say, XLA's
    GPU kernels cannot use vector loads and optax.adam itself runs at half speed."""
    width = 128 * max(1, round(np.sqrt(n_params / (DEPTH + 0.5)) / 128))
    sizes = [width] * (DEPTH + 1) + [10]
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"layer{i}": {"w": jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a),
                          "b": jnp.zeros((b,), jnp.float32)}
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


VELO_LABELS = {"fast": "velo_512x256", "fast_xla": "velo_512x256_xla", "reference": "velo_512x256_reference"}


def without_kernels(opt):
    """`opt` (a VeLO on the fast path) traced with no Pallas kernels: its XLA code only."""
    def update(*args, **kwargs):
        saved, velo_fast.kernels = velo_fast.kernels, None  # read while tracing
        try:
            return opt.update(*args, **kwargs)
        finally:
            velo_fast.kernels = saved
    return optax.GradientTransformationExtraArgs(opt.init, update)


def learned_optimizers(num_steps: int, velo_paths=("fast",)) -> tuple[dict, dict]:
    """label -> optimizer, and label -> why it is missing."""
    found, missing = {}, {}
    for path in velo_paths:
        velo = VeLO(hidden=512, mixtures=256, fast=path != "reference")
        opt = velo.optimizer(velo.init(jax.random.PRNGKey(0)), num_steps)
        found[VELO_LABELS[path]] = without_kernels(opt) if path == "fast_xla" else opt
    for module, cls_name, label in (("minilopt.lopt.mlp", "MLPLOpt", "mlp_lopt"),
                                    ("minilopt.lopt.lstm", "LSTMLOpt", "lstm_lopt")):
        try:
            cls = getattr(importlib.import_module(module), cls_name)
            lopt = cls()
            found[label] = lopt.optimizer(lopt.init(jax.random.PRNGKey(1)), num_steps)
        except Exception as e:  # not written yet, or a different interface
            missing[label] = f"{type(e).__name__}: {e}"
    return found, missing


def make_step(opt):
    def step(params, state, grads, loss):
        updates, state = opt.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state
    return step


def make_loop(opt):
    step = make_step(opt)

    def loop(params, state, grads, n):
        def body(i, carry):
            params, state = carry
            return step(params, state, grads, 1.0 + 1.0 / (1.0 + i.astype(jnp.float32)))
        return jax.lax.fori_loop(0, n, body, (params, state))
    return jax.jit(loop, donate_argnums=(0, 1))


def compiled_costs(opt, params, state, grads, n_params) -> dict:
    compiled = jax.jit(make_step(opt)).lower(params, state, grads, jnp.float32(1.0)).compile()
    out = {}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and "bytes accessed" in cost:
        out["hlo_bytes_per_param"] = float(cost["bytes accessed"]) / n_params
        out["hlo_flops_per_param"] = float(cost.get("flops", 0.0)) / n_params
    try:
        mem = compiled.memory_analysis()
        out["step_memory_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                       + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
        out["step_temp_bytes"] = int(mem.temp_size_in_bytes)
    except Exception:  # not every backend implements it
        pass
    return out


def device_memory_limit() -> int | None:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def time_optimizer(opt, n_params, target_seconds, repeats) -> dict:
    params = mlp_tree(n_params, jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    grads = jax.tree.map(lambda p: 1e-3 * jnp.sin(p * 7.0), params)
    # fresh buffers: an init may return one array twice (e.g. h and c), which cannot be donated twice
    state = jax.tree.map(jnp.copy, opt.init(params))
    result = {"n_params": int(n_params), **compiled_costs(opt, params, state, grads, n_params)}
    limit = device_memory_limit()
    if limit and result.get("step_memory_bytes", 0) > 0.85 * limit:
        return {**result, "skipped": f"needs {result['step_memory_bytes'] / 1e9:.1f} GB of {limit / 1e9:.1f} GB"}
    loop = make_loop(opt)
    t0 = time.perf_counter()
    params, state = jax.block_until_ready(loop(params, state, grads, 2))  # compile + warm up
    result["compile_and_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    params, state = jax.block_until_ready(loop(params, state, grads, 5))
    per_step = (time.perf_counter() - t0) / 5
    steps = int(np.clip(target_seconds / max(per_step, 1e-7), 5, 2000))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state = jax.block_until_ready(loop(params, state, grads, steps))
        best = min(best, (time.perf_counter() - t0) / steps)
    result.update(ms_per_step=1e3 * best, steps_timed=steps)
    finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))
    result["finite"] = finite
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        result["process_peak_bytes"] = int(stats["peak_bytes_in_use"])
    del params, state, grads
    gc.collect()
    return result


def plot(results: dict, path):
    labels = list(next(iter(results.values())).keys())
    sizes = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(sizes))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        ms = [results[s][label].get("ms_per_step", np.nan) for s in sizes]
        ratio = [m / results[s]["optax.adam"]["ms_per_step"] for m, s in zip(ms, sizes)]
        axes[0].bar(x + j * width, ms, width, label=label)
        axes[1].bar(x + j * width, ratio, width, label=label)
    for ax in axes:
        ax.set_xticks(x + 0.4 - width / 2, [f"{int(s) / 1e6:g}M" for s in sizes])
        ax.set_xlabel("parameters")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("ms per update")
    axes[1].axhline(4.0, color="k", ls="--", lw=1, label="target 4x")
    axes[1].set_ylabel("time / optax.adam time")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"one optimizer update, {device_info()['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU sizes (0.1M, 1M)")
    parser.add_argument("--sizes", type=float, nargs="*", help="parameter counts, e.g. 1e6 1e7")
    parser.add_argument("--optimizers", nargs="*", help="labels to time (default: all), e.g. optax.adam velo_512x256")
    parser.add_argument("--velo-path", nargs="+", default=["fast"], choices=sorted(VELO_LABELS),
                        help="VeLO's code to time: fast (default), fast_xla (no Pallas kernels), reference")
    parser.add_argument("--budget", type=float, default=210.0,
                        help="seconds; learned optimizers not yet timed when it runs out are skipped")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000, 100_000_000]
    sizes = [int(s) for s in args.sizes] if args.sizes else sizes
    target, repeats = (0.5, 2) if args.quick else (0.3, 3)
    learned, missing = learned_optimizers(num_steps=10_000, velo_paths=args.velo_path)
    opts = {"optax.adam": optax.adam(1e-3), **learned}
    if args.optimizers:
        opts = {k: v for k, v in opts.items() if k in args.optimizers or k == "optax.adam"}
    results, started = {n: {} for n in sizes}, time.perf_counter()
    core = ["optax.adam", *[VELO_LABELS[p] for p in args.velo_path]]  # timed first; the rest get what is left
    order = [(n, label) for n in sizes for label in core if label in opts] + \
            [(n, label) for n in sizes for label in opts if label not in core]
    for n, label in order:
        if label not in core and time.perf_counter() - started > args.budget:
            results[n][label] = {"skipped": f"time budget of {args.budget:.0f}s used up"}
            print(f"{n / 1e6:6.1f}M  {label:14s} skipped (time budget)", flush=True)
            continue
        try:
            r = time_optimizer(opts[label], n, target, repeats)
        except Exception as e:  # e.g. out of device memory: record it, go on
            r = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
        results[n][label] = r
        if "skipped" in r:
            print(f"{n / 1e6:6.1f}M  {label:14s} skipped: {r['skipped']}", flush=True)
            continue
        print(f"{n / 1e6:6.1f}M  {label:14s} {r['ms_per_step']:9.3f} ms"
              f"  x{r['ms_per_step'] / results[n]['optax.adam']['ms_per_step']:6.2f} adam"
              f"  {r.get('hlo_bytes_per_param', float('nan')):7.1f} B/param (HLO)"
              f"  compile {r['compile_and_first_s']:.1f}s", flush=True)
    results = {n: {label: results[n][label] for label in opts} for n in sizes}
    ratios = {label: {str(n): results[n][label]["ms_per_step"] / results[n]["optax.adam"]["ms_per_step"]
                      for n in sizes if "ms_per_step" in results[n][label]} for label in opts}
    payload = {"device": device_info(), "quick": args.quick, "sizes": sizes, "velo_paths": args.velo_path,
               "pallas_kernels_loaded": velo_fast.kernels is not None,
               "optimizers_found": list(opts), "optimizers_missing": missing,
               "ratio_to_adam": ratios, "results": {str(n): r for n, r in results.items()},
               "wall_seconds": time.perf_counter() - started}
    RESULTS.mkdir(exist_ok=True)
    stem = f"lopt_step{'_quick' if args.quick else ''}_{jax.devices()[0].platform}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print("ratios to adam:", json.dumps(ratios))
    if missing:
        print("not found:", json.dumps(missing))
    print(f"wrote {RESULTS / stem}.json/.png in {payload['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
