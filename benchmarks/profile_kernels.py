"""Where one optimizer step's device time goes: one row per kernel, from the profiler.

Runs `--steps` steps inside one jitted loop under `jax.profiler.trace`, reads the
trace back with `jax.profiler.ProfileData`, and prints, per step: the number of
kernels launched, the device time summed over them, the wall time, and the kernels
that cost most. The gap between wall time and kernel time is launch latency and idle.

    python benchmarks/profile_kernels.py adam --size 1e8        # optax.adam, lopt_step's MLP tree
    python benchmarks/profile_kernels.py velo --size 1e7        # VeLO 512/256
    python benchmarks/profile_kernels.py velo --velo-path reference   # or fast_xla: without Pallas kernels
    python benchmarks/profile_kernels.py Adam/SGD --batch 256   # a hyper_overhead.py optimizer

`--hlo FILE` also writes the compiled (optimised) HLO of the loop, to match kernel
names with fusions. Works on any backend; on CPU the "kernels" are XLA's thunks.
"""
from __future__ import annotations

import argparse
import collections
import glob
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def lopt_case(name: str, size: int, steps: int, velo_path: str = "fast"):
    import optax
    import lopt_step
    if name == "adam":
        opt = optax.adam(1e-3)
    else:
        opt = lopt_step.learned_optimizers(10_000, [velo_path])[0][lopt_step.VELO_LABELS[velo_path]]
    params = lopt_step.mlp_tree(size, jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda p: 1e-3 * jnp.sin(p * 7.0), params)
    state = jax.tree.map(jnp.copy, opt.init(params))
    loop = lopt_step.make_loop(opt)
    return (lambda carry: loop(*carry, grads, steps)), (params, state), loop, (params, state, grads, steps)


def hyper_case(label: str, batch: int, steps: int):
    import hyper_overhead as H
    params, loss = H.make_problem(1024, jax.random.PRNGKey(0))
    opt = H.optimizers()[label][1]
    state = jax.tree.map(jnp.copy, opt.init(params))
    loop = H.make_loop(loss, opt, batch, steps)
    return ((lambda carry: loop(*carry, jax.random.PRNGKey(3))[:2]), (params, state), loop,
            (params, state, jax.random.PRNGKey(3)))


def device_events(trace_dir: str):
    """(name, duration_ns) of every event on the device planes (kernels, copies)."""
    from jax.profiler import ProfileData
    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    data = ProfileData.from_file(path)
    out = []
    for plane in data.planes:
        for line in plane.lines:
            if plane.name.startswith("/device:"):
                # device planes also carry summary lines (XLA ops, modules) that repeat the kernels
                keep = "stream" in line.name.lower()
            else:  # CPU: XLA's thunks run on its own thread pools
                keep = plane.name == "/host:CPU" and line.name.startswith("tf_XLA")
            if keep:
                out.extend((e.name, e.duration_ns) for e in line.events
                           if not e.name.startswith(("ThreadpoolListener", "ThunkExecutor")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", help="adam, velo, or a hyper_overhead.py label such as Adam/SGD")
    ap.add_argument("--size", type=float, default=1e7, help="parameters (adam, velo)")
    ap.add_argument("--batch", type=int, default=256, help="batch (hyper_overhead optimizers)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--hlo", help="write the compiled loop's HLO text here")
    ap.add_argument("--velo-path", default="fast", choices=["fast", "fast_xla", "reference"],
                    help="VeLO's code: velo_fast (with Pallas kernels where they load), without them, or velo.py")
    args = ap.parse_args()
    if args.what in ("adam", "velo"):
        run, carry, loop, lower_args = lopt_case(args.what, int(args.size), args.steps, args.velo_path)
    else:
        run, carry, loop, lower_args = hyper_case(args.what, args.batch, args.steps)
    if args.hlo:
        pathlib.Path(args.hlo).write_text(loop.lower(*lower_args).compile().as_text())
    carry = jax.block_until_ready(run(carry))  # compile, warm up
    t0 = time.perf_counter()
    carry = jax.block_until_ready(run(carry))
    wall = (time.perf_counter() - t0) / args.steps
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            carry = jax.block_until_ready(run(carry))
        events = device_events(d)
    per_name = collections.defaultdict(lambda: [0, 0])
    for name, ns in events:
        per_name[name][0] += 1
        per_name[name][1] += ns
    total = sum(ns for _, ns in events) / args.steps
    print(f"{args.what}: {len(events) / args.steps:.1f} kernels/step, kernel time {total / 1e3:.1f} us/step, "
          f"wall {wall * 1e6:.1f} us/step (untraced)")
    rows = sorted(per_name.items(), key=lambda kv: -kv[1][1])
    for name, (count, ns) in rows[:args.top]:
        print(f"  {ns / args.steps / 1e3:9.2f} us  {count / args.steps:5.1f}x  {name[:110]}")


if __name__ == "__main__":
    main()
