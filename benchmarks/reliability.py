"""Reliability probes: bad inputs at the Python API and on the command line, and
kill -9 / resume trials of meta-training.

    python benchmarks/reliability.py              # about 5 minutes on 2 CPU cores
    python benchmarks/reliability.py --trials 4   # fewer kill/resume trials

Every bad input is one of:

    clear      a ValueError (API), or exit code 2 with a message and no traceback (CLI)
    unclear    another exception type (API), or a traceback (CLI)
    accepted   no error at all: the bad input was taken silently

A kill/resume trial meta-trains a small PES run in a subprocess, kills it with
SIGKILL at a random moment (while compiling, stepping or writing a checkpoint),
resumes it to the end, and compares every array of the final checkpoint (θ, the
meta-optimizer and estimator states, the step, the key) and the metrics log's steps
with an uninterrupted run. It also counts files left behind (`*.tmp`).

Prints the table and writes benchmarks/results/reliability.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


# ---------------------------------------------------------------------------
# Bad inputs at the Python API
# ---------------------------------------------------------------------------
def _npz(path, arrays):
    np.savez(path, **arrays)
    return path


def api_probes(tmp: pathlib.Path) -> list:
    """(name, thunk) pairs: each thunk passes one bad input to the API."""
    import jax
    import jax.numpy as jnp
    import optax

    from minilopt import hyper, tasks, train
    from minilopt.hyper import rules
    from minilopt.lopt import checkpoint, velo
    from minilopt.lopt.hand import LearnableSGD
    from minilopt.lopt.lstm import LSTMLOpt
    from minilopt.lopt.mlp import MLPLOpt
    from minilopt.meta import estimators, trainer
    from minilopt.meta.unroll import TruncatedUnroll

    from minilopt.lopt import pretrained
    probes = []
    add = lambda name, f: probes.append((name, f))

    # checkpoint.load: crafted, corrupt and mismatched .npz files
    like = {"a": np.zeros(3, np.float32)}
    for key in ["[200000000]", '["a", 200000000]', "[0, 3]", '["a", -1]', "[true]", "[]", "not json", "[" * 5000]:
        path = _npz(tmp / f"key{len(probes)}.npz", {key: np.zeros(1)})
        add(f"checkpoint.load key {key[:20]!r}", lambda p=path: checkpoint.load(p))
        add(f"checkpoint.load(like) key {key[:20]!r}", lambda p=path: checkpoint.load(p, like=like))
    good = tmp / "good.npz"
    checkpoint.save(good, like)
    data = good.read_bytes()
    for i, cut in enumerate([0, 10, len(data) // 2, len(data) - 1]):
        path = tmp / f"cut{i}.npz"
        path.write_bytes(data[:cut])
        add(f"checkpoint.load truncated to {cut} bytes", lambda p=path: checkpoint.load(p, like=like))
    for dtype in ["int64", "bool", "complex64", "U3"]:
        path = _npz(tmp / f"dtype_{dtype}.npz", {'["a"]': np.zeros(3, dtype)})
        add(f"checkpoint.load(like) leaf of dtype {dtype}", lambda p=path: checkpoint.load(p, like=like))
    add("checkpoint.load(like) NaN leaf",
        lambda: checkpoint.load(_npz(tmp / "nan.npz", {'["a"]': np.full(3, np.nan, np.float32)}), like=like))
    add("checkpoint.load(like) wrong shape",
        lambda: checkpoint.load(_npz(tmp / "shape.npz", {'["a"]': np.zeros(4, np.float32)}), like=like))
    add("checkpoint.load pickled object array",
        lambda: checkpoint.load(_npz(tmp / "obj.npz", {'["a"]': np.array([{}], dtype=object)})))
    add("checkpoint.load no such file", lambda: checkpoint.load(tmp / "missing.npz"))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        member = io.BytesIO()
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
        zf.writestr('["a"].npy', member.getvalue() + b"\0" * 64)
    (tmp / "bomb.npz").write_bytes(bomb.getvalue())
    add("checkpoint.load header of 2^40 floats", lambda: checkpoint.load(tmp / "bomb.npz"))

    # load_velo: corrupt msgpack, big-endian and mis-sized arrays
    import msgpack
    theta_v = jax.tree.map(np.asarray, velo.init_theta(jax.random.PRNGKey(0), 4, 3))
    vbytes = checkpoint.save_velo(theta_v)
    add("load_velo empty", lambda: checkpoint.load_velo(b""))
    add("load_velo truncated", lambda: checkpoint.load_velo(vbytes[: len(vbytes) // 2]))
    for dtype, shape, n in [(">f4", [2], 8), ("float32", [1 << 40], 8), ("object", [1], 8), ("float32", [3], 8)]:
        payload = msgpack.packb([shape, dtype, b"\0" * n])
        bad = msgpack.packb({"params": {"lstm_init_state": msgpack.ExtType(1, payload)}})
        add(f"load_velo array {dtype} {shape}", lambda b=bad: checkpoint.load_velo(b))
    add("load_velo not a map", lambda: checkpoint.load_velo(msgpack.packb([1, 2])))

    # meta-training checkpoints
    est = estimators.pes(TruncatedUnroll(LearnableSGD(1e-2), tasks.QuadraticFamily(dim=2), 4, 2), 2)
    theta0 = LearnableSGD(1e-2).init()
    run = lambda out, **kw: trainer.meta_train(kw.pop("est", est), theta0, kw.pop("steps", 2),
                                               jax.random.PRNGKey(0), out=out, progress=False,
                                               meta_optimizer=kw.pop("mo", optax.adam(1e-3)), **kw)
    base = tmp / "run"
    run(base)
    arrays, config = trainer.read_checkpoint(base / trainer.CHECKPOINT)

    def rewritten(name, **changes):
        out = tmp / name
        out.mkdir()
        a = {**arrays, **changes, "__config__": np.array(json.dumps(config, sort_keys=True))}
        checkpoint.write_npz(out / trainer.CHECKPOINT, a)
        return out

    for i, blob in enumerate([b"", b"PK\x03\x04junk", b"\x93NUMPY junk"]):
        out = tmp / f"corrupt{i}"
        out.mkdir()
        (out / trainer.CHECKPOINT).write_bytes(blob)
        add(f"meta_train resume from a corrupt checkpoint #{i}", lambda o=out: run(o, resume=True))
    no_config = tmp / "noconfig"
    no_config.mkdir()
    _npz(no_config / trainer.CHECKPOINT, {k: v for k, v in arrays.items()})
    add("read_checkpoint without a config", lambda: trainer.read_checkpoint(no_config / trainer.CHECKPOINT))
    list_config = tmp / "listconfig.npz"
    _npz(list_config, {**arrays, "__config__": np.array("[1, 2]")})
    add("read_checkpoint config not a dict", lambda: trainer.read_checkpoint(list_config))
    add("meta_train resume NaN θ", lambda: run(rewritten("nan", **{"['theta']['log_lr']": np.float32(np.nan)}),
                                               resume=True))
    add("meta_train resume step -5", lambda: run(rewritten("neg", **{"['step']": np.int64(-5)}), resume=True))
    add("meta_train resume step 10^6", lambda: run(rewritten("big", **{"['step']": np.int64(10**6)}), resume=True))
    add("meta_train resume under a stateless meta-optimizer", lambda: run(base, resume=True, mo=optax.sgd(1e-3)))
    for what, changed in [("max_condition", dict(family=tasks.QuadraticFamily(dim=2, max_condition=10.0))),
                          ("noise_range", dict(family=tasks.QuadraticFamily(dim=2, noise_range=(0.1, 1.0)))),
                          ("learning_rate", dict(lopt=LearnableSGD(1e-3)))]:
        other = estimators.pes(TruncatedUnroll(changed.get("lopt", LearnableSGD(1e-2)),
                                               changed.get("family", tasks.QuadraticFamily(dim=2)), 4, 2), 2)
        add(f"meta_train resume with another {what}", lambda o=other: run(base, resume=True, est=o))
    for name, est_args in [("fractions", dict(fractions=(0.2, 0.5))), ("rms_decay", dict(rms_decay=0.9)),
                           ("eps", dict(eps=1e-3))]:
        mlp_run = tmp / "mlp_run"
        mlp_est = lambda **kw: estimators.pes(TruncatedUnroll(MLPLOpt(hidden=(4,), **kw),
                                                              tasks.QuadraticFamily(dim=2), 4, 2), 2)
        if not mlp_run.exists():
            trainer.meta_train(mlp_est(), MLPLOpt(hidden=(4,)).init(jax.random.PRNGKey(0)), 1, jax.random.PRNGKey(0),
                               out=mlp_run, progress=False)
        add(f"meta_train resume with MLPLOpt({name}=...)", lambda a=est_args: trainer.meta_train(
            mlp_est(**a), MLPLOpt(hidden=(4,), **a).init(jax.random.PRNGKey(0)), 2, jax.random.PRNGKey(0),
            out=mlp_run, resume=True, progress=False))
    torn = tmp / "torn_middle.jsonl"
    torn.write_text('{"step": 1}\n{"step": 2, "x"\n{"step": 3}\n')
    add("read_metrics torn line in the middle", lambda: trainer.read_metrics(torn))
    a_file = tmp / "a_file"
    a_file.write_text("")
    add("meta_train out= an existing file", lambda: run(a_file))
    for kw in [dict(steps=-1), dict(steps=2.5), dict(checkpoint_every=0), dict(log_every=0)]:
        add(f"meta_train {kw}", lambda kw=kw: run(tmp / "unused", **kw))

    # the tower
    params = {"w": jnp.ones(3)}
    for mode in ("forward", "reverse"):
        tower = hyper.stack(rules.adam(0.01), rules.sgd(1e-4), mode=mode)
        add(f"stack({mode}) integer parameters", lambda t=tower: t.init({"w": jnp.arange(3)}))
        add(f"stack({mode}) bool parameters", lambda t=tower: t.init({"w": jnp.ones(3), "m": jnp.array([True])}))
        add(f"stack({mode}) complex parameters", lambda t=tower: t.init({"z": jnp.ones(2, jnp.complex64)}))
        add(f"stack({mode}) (3, 1) gradient for (3,)",
            lambda t=tower: t.update({"w": jnp.ones((3, 1))}, t.init(params), params))
        add(f"stack({mode}) gradient of another tree",
            lambda t=tower: t.update({"v": jnp.ones(3)}, t.init(params), params))

    for bad in (np.inf, np.nan, -1.0, 0.0):
        add(f"rules.sgd({bad})", lambda b=bad: rules.sgd(b))
        add(f"rules.adam({bad})", lambda b=bad: rules.adam(b))

    # learned optimizers and training loops
    for bad in ("100", True, 2.5, 0, -3):
        add(f"MLPLOpt num_steps={bad!r}", lambda b=bad: MLPLOpt(hidden=(4,)).optimizer(
            MLPLOpt(hidden=(4,)).init(jax.random.PRNGKey(0)), b))
        add(f"LSTMLOpt num_steps={bad!r}", lambda b=bad: LSTMLOpt(hidden=4).optimizer(
            LSTMLOpt(hidden=4).init(jax.random.PRNGKey(0)), b))
        add(f"pretrained num_steps={bad!r}", lambda b=bad: pretrained.pretrained(b))
    quad = tasks.get("quadratic")
    for bad in (0, -1, 2.5):
        add(f"fit eval_every={bad}", lambda b=bad: train.fit(quad, optax.sgd(0.1), 10, jax.random.PRNGKey(0),
                                                             eval_every=b))
    for rates in ([np.inf], [np.nan], [0.1, -0.1], []):
        add(f"lr_sweep {rates}", lambda r=rates: train.lr_sweep(quad, optax.sgd, r, 5, jax.random.PRNGKey(0)))

    # pretrained weights
    weights = tmp / "weights"
    weights.mkdir()
    for f in ("config.json", "theta.npz"):
        (weights / f).write_bytes((pretrained.DEFAULT_DIR / f).read_bytes())
    for name in ("../theta.npz", "/etc/passwd", "sub/theta.npz", 5):
        def outside(name=name):
            config = json.loads((pretrained.DEFAULT_DIR / "config.json").read_text())
            (weights / "config.json").write_text(json.dumps({**config, "theta": name}))
            return pretrained.load(weights)
        add(f"pretrained config theta={name!r}", outside)
    bomb_dir = tmp / "bomb_weights"
    bomb_dir.mkdir()
    config = json.loads((pretrained.DEFAULT_DIR / "config.json").read_text())
    config.pop("sha256", None)
    (bomb_dir / "config.json").write_text(json.dumps(config))
    _npz(bomb_dir / "theta.npz", {"[200000000]": np.zeros(1)})
    add("pretrained(path=) index bomb", lambda: pretrained.pretrained(100, path=bomb_dir))
    return probes


def nonfinite_probes() -> list:
    """(name, optimizer, params) for every optimizer kind that trains weights; each is
    fed gradients holding NaN, inf, -inf, 1e38 and denormals for 3 steps."""
    import jax
    import jax.numpy as jnp
    import optax

    from minilopt import hyper
    from minilopt.hyper import rules
    from minilopt.lopt import velo
    from minilopt.lopt.lstm import LSTMLOpt
    from minilopt.lopt.mlp import MLPLOpt

    from minilopt.lopt import pretrained
    key = jax.random.PRNGKey(0)
    opts = [(f"stack(adam, sgd, mode={m})", hyper.stack(rules.adam(0.01), rules.sgd(1e-4), mode=m))
            for m in ("forward", "reverse")]
    opts += [("stack(sgd, sgd, sgd)", hyper.stack(rules.sgd(0.1), rules.sgd(1e-4), rules.sgd(1e-6))),
             ("hyperoptimize(optax adam)", hyper.hyperoptimize(optax.inject_hyperparams(optax.adam)(
                 learning_rate=0.01), by=optax.sgd(1e-4))),
             ("MLPLOpt", MLPLOpt(hidden=(4,)).optimizer(MLPLOpt(hidden=(4,)).init(key), 100)),
             ("LSTMLOpt", LSTMLOpt(hidden=4).optimizer(LSTMLOpt(hidden=4).init(key), 100)),
             ("VeLO from init", velo.VeLO(hidden=32, mixtures=16).optimizer(
                 velo.VeLO(hidden=32, mixtures=16).init(key), 100)),
             ("pretrained", pretrained.pretrained(100))]
    return opts


def run_nonfinite(name, opt) -> list:
    import jax.numpy as jnp
    import optax

    rows = []
    for bad in (np.nan, np.inf, -np.inf, 1e38, 1e-42):
        params = {"w": jnp.ones((16, 8)) * 0.1, "b": jnp.zeros(8)}
        state = opt.init(params)
        for step in range(3):
            g = {"w": jnp.full((16, 8), 0.01).at[0, step].set(bad), "b": jnp.full(8, bad)}
            u, state = opt.update(g, state, params, value=jnp.asarray(1.0))
            params = optax.apply_updates(params, u)
        finite = all(bool(jnp.all(jnp.isfinite(x))) for x in params.values())
        rows.append((f"{name} gradient {bad}", "finite" if finite else "non-finite parameters"))
    return rows


def classify_api(thunk, seconds: float = 20.0):
    t0 = time.perf_counter()
    try:
        thunk()
    except ValueError as e:
        internal = "jax._src" in str(e) or "Traceback" in str(e)
        outcome = "unclear" if internal else "clear"
    except Exception as e:  # noqa: BLE001 - any other type is what we count
        outcome = f"unclear ({type(e).__name__})"
    else:
        outcome = "accepted"
    if time.perf_counter() - t0 > seconds:
        outcome += " (slow)"
    return outcome


# ---------------------------------------------------------------------------
# Bad inputs on the command line
# ---------------------------------------------------------------------------
def cli_probes(tmp: pathlib.Path) -> list:
    small = ["meta-train", "--family", "quadratic", "--family-args", '{"dim": 2}', "--lopt", "mlp",
             "--lopt-args", '{"hidden": [4]}', "--particles", "2", "--horizon", "4", "--truncation", "2",
             "--steps", "2", "--quiet"]
    read_only = tmp / "read_only"
    read_only.mkdir()
    read_only.chmod(0o500)
    a_file = tmp / "a_file"
    a_file.write_text("")
    out = lambda name: ["--out", str(tmp / name)]
    probes = [
        ("--lr nan", small + ["--lr", "nan"] + out("lr_nan")),
        ("--lr inf", small + ["--lr", "inf"] + out("lr_inf")),
        ("--lr -1", small + ["--lr", "-1"] + out("lr_neg")),
        ("--lr 0", small + ["--lr", "0"] + out("lr_zero")),
        ("--clip-grad -1", small + ["--clip-grad", "-1"] + out("clip_neg")),
        ("--clip-grad 0", small + ["--clip-grad", "0"] + out("clip_zero")),
        ("--clip-grad nan", small + ["--clip-grad", "nan"] + out("clip_nan")),
        ("--sigma 0", small + ["--sigma", "0"] + out("sigma_zero")),
        ("--sigma nan", small + ["--sigma", "nan"] + out("sigma_nan")),
        ("--loss-clip -1", small + ["--loss-clip", "-1"] + out("loss_clip")),
        ("--particles 0", small + ["--particles", "0"] + out("p0")),
        ("--particles 3 (odd split)", small + ["--particles", "3", "--structures", "2"] + out("p3")),
        ("--steps -5", small + ["--steps", "-5"] + out("steps_neg")),
        ("--horizon 0", small + ["--horizon", "0"] + out("h0")),
        ("--horizon 5 --truncation 2", small + ["--horizon", "5"] + out("h5")),
        ("--checkpoint-every 0", small + ["--checkpoint-every", "0"] + out("ce0")),
        ("--structures 0", small + ["--structures", "0"] + out("s0")),
        ("--lopt-args unknown key", small + ["--lopt-args", '{"nope": 1}'] + out("la_unknown")),
        ("--lopt-args list value", small + ["--lopt-args", '{"hidden": 4}'] + out("la_list")),
        ("--lopt-args not JSON", small + ["--lopt-args", "{hidden"] + out("la_json")),
        ("--family-args unknown key", small + ["--family-args", '{"nope": 1}'] + out("fa_unknown")),
        ("--family unknown", small + ["--family", "nope"] + out("fam")),
        ("--out an existing file", small + ["--out", str(a_file)]),
        ("--config missing file", small + ["--config", str(tmp / "missing.json")] + out("cfg")),
        ("--config unknown key", small + ["--config", str(_write(tmp / "bad.json", '{"nope": 1}'))] + out("cfg2")),
        ("--init-theta missing", small + ["--init-theta", str(tmp / "missing")] + out("it")),
        ("evaluate --tasks 0", ["evaluate", str(tmp / "good_run"), "--tasks", "0", "--family", "quadratic",
                                "--family-args", '{"dim": 2}', "--out", str(tmp / "ev0")]),
        ("evaluate --tasks -1", ["evaluate", str(tmp / "good_run"), "--tasks", "-1", "--family", "quadratic",
                                 "--family-args", '{"dim": 2}', "--out", str(tmp / "ev1")]),
        ("evaluate --steps 0", ["evaluate", str(tmp / "good_run"), "--steps", "0", "--family", "quadratic",
                                "--family-args", '{"dim": 2}', "--out", str(tmp / "ev2")]),
        ("evaluate --num-lrs 0", ["evaluate", str(tmp / "good_run"), "--num-lrs", "0", "--family", "quadratic",
                                  "--family-args", '{"dim": 2}', "--out", str(tmp / "ev3")]),
        ("evaluate missing run", ["evaluate", str(tmp / "missing_run"), "--out", str(tmp / "ev4")]),
        ("evaluate corrupt checkpoint", ["evaluate", str(_corrupt_run(tmp)), "--out", str(tmp / "ev5")]),
        ("evaluate --out an existing file", ["evaluate", str(tmp / "good_run"), "--family", "quadratic",
                                             "--family-args", '{"dim": 2}', "--out", str(a_file)]),
    ]
    if os.geteuid() != 0:  # root writes anywhere: these probe nothing there
        probes += [("--out read-only directory", small + ["--out", str(read_only / "run")]),
                   ("--resume in a read-only directory", small + ["--resume", "--out", str(read_only)])]
    return probes, small


def _write(path, text):
    path.write_text(text)
    return path


def _corrupt_run(tmp):
    run = tmp / "corrupt_run"
    run.mkdir(exist_ok=True)
    (run / "checkpoint.npz").write_bytes(b"PK\x03\x04 torn")
    return run


def classify_cli(argv) -> str:
    from minilopt import cli

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - a traceback is what we count
        return f"unclear (traceback: {type(e).__name__})"
    if code == 2 and err.getvalue().strip():
        return "clear"
    return "accepted" if code in (0, None) else f"unclear (exit {code})"


# ---------------------------------------------------------------------------
# kill -9 and resume
# ---------------------------------------------------------------------------
WORKER = """
import sys, jax, optax
from minilopt import tasks
from minilopt.lopt.mlp import MLPLOpt
from minilopt.meta import estimators, trainer
from minilopt.meta.unroll import TruncatedUnroll
lopt = MLPLOpt(hidden=(4,))
est = estimators.pes(TruncatedUnroll(lopt, tasks.QuadraticFamily(dim=3), 8, 2), 4, sigma=0.05)
trainer.meta_train(est, lopt.init(jax.random.PRNGKey(1)), int(sys.argv[2]), jax.random.PRNGKey(0),
                   meta_optimizer=optax.adam(1e-2), out=sys.argv[1], checkpoint_every=1,
                   resume=sys.argv[3] == "1", progress=False)
"""


def _worker(out, steps, resume):
    return subprocess.Popen([sys.executable, "-c", WORKER, str(out), str(steps), "1" if resume else "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _final(out):
    from minilopt.meta import trainer

    arrays, _ = trainer.read_checkpoint(out / trainer.CHECKPOINT)
    return arrays, list(trainer.read_metrics(out)["step"])


def kill_resume_trials(tmp: pathlib.Path, trials: int, steps: int, seed: int) -> dict:
    rng = random.Random(seed)
    reference = tmp / "reference"
    t0 = time.perf_counter()
    proc = _worker(reference, steps, False)
    if proc.wait() != 0:
        raise RuntimeError(proc.stderr.read().decode()[-2000:])
    wall = time.perf_counter() - t0
    want_arrays, want_steps = _final(reference)
    results = []
    for i in range(trials):
        out = tmp / f"trial{i}"
        delay = rng.uniform(0.15, 0.85) * wall
        proc = _worker(out, steps, False)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        litter_before = len(list(out.glob("*.tmp"))) if out.exists() else 0
        resumed = _worker(out, steps, True)
        ok = resumed.wait() == 0
        error = "" if ok else resumed.stderr.read().decode()[-500:]
        identical = False
        if ok:
            arrays, logged = _final(out)
            identical = (arrays.keys() == want_arrays.keys() and logged == want_steps
                         and all(np.array_equal(arrays[k], want_arrays[k]) for k in arrays))
        results.append({"delay_s": round(delay, 2), "killed": killed, "tmp_files_at_kill": litter_before,
                        "resumed": ok, "identical": identical, "leftovers": [p.name for p in out.glob("*.tmp")],
                        "error": error})
    return {"wall_s_uninterrupted": round(wall, 2), "trials": results}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8, help="kill/resume trials")
    ap.add_argument("--steps", type=int, default=20, help="outer steps of each trial's run")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    ap.add_argument("--out", default=str(HERE / "results" / "reliability.json"))
    args = ap.parse_args()
    import jax
    jax.config.update("jax_platforms", "cpu")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "api").mkdir()
        api = [(name, classify_api(f)) for name, f in api_probes(tmp / "api")]
        report["api"] = api
        report["nonfinite"] = [row for name, opt in nonfinite_probes() for row in run_nonfinite(name, opt)]
        (tmp / "cli").mkdir()
        probes, small = cli_probes(tmp / "cli")
        from minilopt import cli
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(small + ["--out", str(tmp / "cli" / "good_run")]) == 0  # what evaluate probes read
        report["cli"] = [(name, classify_cli(argv)) for name, argv in probes]
        report["kill_resume"] = kill_resume_trials(tmp, args.trials, args.steps, args.seed)
        (tmp / "cli" / "read_only").chmod(0o700)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")

    def count(rows):
        kinds = [o.split(" ")[0] for _, o in rows]
        return len(rows), kinds.count("clear"), kinds.count("unclear"), kinds.count("accepted")

    print("| probes | tried | clear error | unclear error | accepted silently |")
    print("|---|---|---|---|---|")
    for what in ("api", "cli"):
        print(f"| {what.upper()} bad inputs | " + " | ".join(map(str, count(report[what]))) + " |")
    nf = report["nonfinite"]
    print(f"\nnon-finite gradients injected: {len(nf)} runs, "
          f"{sum(o == 'finite' for _, o in nf)} kept finite parameters")
    trials = report["kill_resume"]["trials"]
    print(f"\nkill -9 / resume: {len(trials)} trials, {sum(t['killed'] for t in trials)} killed mid-run, "
          f"{sum(t['identical'] for t in trials)} identical to the uninterrupted run, "
          f"{sum(t['tmp_files_at_kill'] for t in trials)} temporary files found after a kill, "
          f"{sum(len(t['leftovers']) for t in trials)} left after resuming")
    for what in ("api", "cli", "nonfinite"):
        for name, outcome in report[what]:
            if outcome not in ("clear", "finite"):
                print(f"  {what} {outcome}: {name}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
