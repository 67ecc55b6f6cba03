"""Throughput of PES meta-training of the shipped learned-optimizer architectures.

The workload of the learned_optimization tutorials: PES on 8×8-digits MLP tasks,
truncation K = 50, the meta-optimizer Adam. One outer step = one truncation of
K inner steps for each of the 2·P runs (P antithetic pairs, one task per pair),
then one meta-update, all in one jitted call (`minilopt.meta.trainer.make_outer_step`).

Measured for the per-parameter MLP (`MLPLOpt`), `ScheduledLOpt` and VeLO at the
size this project meta-trains (H=32, P=16, started as Adam). Reported, for P = 16 … 1024 pairs:
- outer steps per second;
- inner steps × runs per second (2·P·K per outer step; both runs of a pair count);
- the ratio against a baseline timed in the same process: the same unrolls (same
  tasks, same K, same vmapping) with Adam as the inner optimizer (`LearnableAdam`,
  θ = 4 numbers), i.e. what the learned optimizer and the estimator cost over
  plain inner training;
- the outer steps per second at 16 pairs (32 runs) and at 8 pairs (16 runs), to set
  beside the reference tutorial's ≈ 8 outer steps/s with 16 tasks on a Colab accelerator;
- with several devices: weak scaling (P per device fixed) and strong scaling
  (P = the largest size), as efficiency = throughput(n) / (n · throughput(1)).

    python benchmarks/meta_throughput.py --quick               # CPU, ~1-2 minutes
    python benchmarks/meta_throughput.py                       # full, one GPU (< 4 min on an H100)
    python benchmarks/meta_throughput.py --pairs 64 1024       # several GPUs: adds the scaling study

Writes results/meta_throughput[_<n>dev][_quick]_<platform>.json and a PNG beside it.
"""
from __future__ import annotations

import argparse
import time

import jax
import matplotlib
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minilopt import tasks  # noqa: E402
from minilopt.lopt.hand import LearnableAdam  # noqa: E402
from minilopt.lopt.mlp import MLPLOpt  # noqa: E402
from minilopt.lopt.scheduled import ScheduledLOpt  # noqa: E402
from minilopt.lopt.velo import VeLO  # noqa: E402
from minilopt.meta import estimators, trainer  # noqa: E402
from minilopt.meta.unroll import TruncatedUnroll  # noqa: E402

from _common import best_time, write  # noqa: E402

TRUNCATION, HORIZON = 50, 1000


def family():
    """The reference tutorial's tasks: an MLP on 8×8 digits (here 1 hidden layer of 32, batch 128)."""
    return tasks.ImageFamily("digits", "mlp", hidden=(32,), activation="relu", batch_size=128)


def measure(lopt, pairs: int, devices, repeats: int, steps_per_repeat: int) -> dict:
    """Outer steps/s of PES with `pairs` antithetic pairs, sharded over `devices`."""
    unroll = TruncatedUnroll(lopt, family(), HORIZON, TRUNCATION)
    est = estimators.pes(unroll, pairs, sigma=0.01)
    meta_opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-4))
    mesh = trainer.particle_mesh(devices)
    step, replicated, per_particle, init = trainer.make_outer_step(est, meta_opt, mesh)
    key = jax.random.PRNGKey(0)
    theta = jax.device_put(lopt.init(key), replicated)
    carry = [theta, jax.device_put(meta_opt.init(theta), replicated),
             jax.device_put(init(theta, key), per_particle), jax.device_put(key, replicated)]

    def run():
        for _ in range(steps_per_repeat):
            carry[:] = step(*carry)[:4]   # θ, meta-opt state, PES state, key (metrics dropped)
        jax.block_until_ready(carry)

    t0 = time.perf_counter()
    run()                                     # compile, and one repeat to warm up
    compile_s = time.perf_counter() - t0
    seconds = best_time(run, repeats) / steps_per_repeat
    return {"pairs": pairs, "runs": 2 * pairs, "devices": len(devices), "outer_steps_per_s": 1.0 / seconds,
            "inner_steps_x_runs_per_s": 2 * pairs * TRUNCATION / seconds, "first_call_s": compile_s}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a CPU")
    ap.add_argument("--pairs", type=int, nargs="*", help="override the list of pair counts")
    args = ap.parse_args()
    pairs = args.pairs or ([4, 16] if args.quick else [16, 64, 256, 1024])
    repeats, steps_per_repeat = (2, 2) if args.quick else (3, 5)
    devices = jax.devices()
    one = devices[:1]
    mlp, adam = MLPLOpt(), LearnableAdam()
    lopts = {"mlp": mlp, "scheduled": ScheduledLOpt(), "velo": VeLO(hidden=32, mixtures=16, start="adam")}
    t_start = time.perf_counter()

    rows = []
    for p in pairs:
        base = measure(adam, p, one, repeats, steps_per_repeat)
        for name, lopt in lopts.items():
            r = {"lopt": name, **measure(lopt, p, one, repeats, steps_per_repeat)}
            r["adam_inner_steps_x_runs_per_s"] = base["inner_steps_x_runs_per_s"]
            r["ratio_vs_adam_unroll"] = r["inner_steps_x_runs_per_s"] / base["inner_steps_x_runs_per_s"]
            rows.append(r)
            print(f"{name:9s} {p:5d} pairs: {r['outer_steps_per_s']:8.2f} outer steps/s, "
                  f"{r['inner_steps_x_runs_per_s']:12.0f} inner steps x runs/s "
                  f"({r['ratio_vs_adam_unroll']:.2f}x the Adam unroll), first call {r['first_call_s']:.1f}s", flush=True)
    # "16 tasks" read both ways: 16 pairs (32 runs, more work than the tutorial) and 8 pairs (16 runs)
    by_pairs = {r["pairs"]: r for r in rows if r["lopt"] == "mlp"}
    reference = {"tutorial_outer_steps_per_s": 8.0, "tutorial_tasks": 16}
    for p in (16, 8):
        r = by_pairs.get(p) or measure(mlp, p, one, repeats, steps_per_repeat)
        reference[f"ours_outer_steps_per_s_at_{p}_pairs"] = r["outer_steps_per_s"]
    print("reference configuration:", reference, flush=True)

    scaling = []
    if len(devices) > 1:
        counts = [n for n in (1, 2, 4, 8, 16) if n <= len(devices)]
        per_device = pairs[-1] // len(devices)
        base_weak = base_strong = None
        for n in counts:
            weak = measure(mlp, per_device * n, devices[:n], repeats, steps_per_repeat)
            strong = measure(mlp, pairs[-1], devices[:n], repeats, steps_per_repeat)
            base_weak = base_weak or weak["inner_steps_x_runs_per_s"]
            base_strong = base_strong or strong["inner_steps_x_runs_per_s"]
            scaling.append({"devices": n, "weak_pairs": per_device * n,
                            "weak_inner_steps_x_runs_per_s": weak["inner_steps_x_runs_per_s"],
                            "weak_efficiency": weak["inner_steps_x_runs_per_s"] / (n * base_weak),
                            "strong_pairs": pairs[-1],
                            "strong_inner_steps_x_runs_per_s": strong["inner_steps_x_runs_per_s"],
                            "strong_efficiency": strong["inner_steps_x_runs_per_s"] / (n * base_strong)})
            print(f"{n} devices: weak efficiency {scaling[-1]['weak_efficiency']:.2f}, "
                  f"strong efficiency {scaling[-1]['strong_efficiency']:.2f}", flush=True)

    payload = {"workload": {"lopts": {n: repr(l) for n, l in lopts.items()}, "family": family().name, "estimator": "pes", "truncation": TRUNCATION,
                            "horizon": HORIZON, "meta_optimizer": "clip 1.0 + adam 3e-4"},
               "throughput": rows, "reference": reference, "scaling": scaling,
               "total_s": time.perf_counter() - t_start}
    name = "meta_throughput" + (f"_{len(devices)}dev" if len(devices) > 1 else "")  # keep 1-GPU results apart
    path = write(name, payload, args.quick)

    fig, axes = plt.subplots(1, 2 if scaling else 1, figsize=(10 if scaling else 5, 3.4), squeeze=False)
    ax = axes[0][0]
    for name in lopts:
        mine = [r for r in rows if r["lopt"] == name]
        ax.plot([r["pairs"] for r in mine], [r["inner_steps_x_runs_per_s"] for r in mine], "o-", label=f"{name}, PES")
    mine = [r for r in rows if r["lopt"] == "mlp"]
    ax.plot([r["pairs"] for r in mine], [r["adam_inner_steps_x_runs_per_s"] for r in mine], "s--",
            label="same unroll, Adam inner")
    ax.set(xscale="log", yscale="log", xlabel="antithetic pairs (2 runs each)", ylabel="inner steps × runs / s",
           title=f"PES, K={TRUNCATION}, {jax.devices()[0].device_kind}")
    ax.legend(fontsize=8)
    if scaling:
        ax = axes[0][1]
        n = [s["devices"] for s in scaling]
        ax.plot(n, [s["weak_efficiency"] for s in scaling], "o-", label="weak (pairs ∝ devices)")
        ax.plot(n, [s["strong_efficiency"] for s in scaling], "s-", label=f"strong ({pairs[-1]} pairs)")
        ax.axhline(0.85, color="gray", ls=":", label="target 0.85")
        ax.set(xscale="log", xlabel="devices", ylabel="efficiency", ylim=(0, 1.1), title="scaling")
        ax.legend(fontsize=8)
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=80, bbox_inches="tight")
    print(f"wrote {path} and {png} in {payload['total_s']:.0f}s")


if __name__ == "__main__":
    main()
