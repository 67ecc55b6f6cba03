"""Reference trajectories from the paper's released code, for tests/test_hyper_parity.py.

Runs the PyPI package `gradient-descent-the-ultimate-optimizer` (module
`gradient_descent_the_ultimate_optimizer.gdtuo`, Chandra et al. 2022) with CPU PyTorch
in float64: a tanh MLP 64-32-10 on scikit-learn's digits, fixed initial weights,
fixed batches in a fixed order, STEPS steps, for every stack in STACKS. It saves, per
stack, the loss before each step and every level's raw hyperparameters after each
step, in tests/data/gdtuo_reference.npz. The test suite replays the same runs with
minilopt and compares, without PyTorch.

How to re-run it (from the repository root; PyTorch stays out of the project's venv):

    python3 -m venv /tmp/gdtuo-venv
    /tmp/gdtuo-venv/bin/pip install --find-links /opt/wheels torch==2.13.0 numpy scikit-learn \
        gradient-descent-the-ultimate-optimizer==1.0
    /tmp/gdtuo-venv/bin/python tests/tools/make_gdtuo_reference.py

(`--find-links /opt/wheels` picks up a local CPU wheel of torch when there is one; any
CPU build of torch 2.x gives the same float64 numbers to ~1e-13.) It takes ~20 s.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from gradient_descent_the_ultimate_optimizer import gdtuo
from sklearn.datasets import load_digits

STEPS, BATCH, HIDDEN, SEED = 60, 32, 32, 0
OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "gdtuo_reference.npz"

# Each stack, bottom-up, as (rule, keyword arguments). The keywords are those of both
# gdtuo's classes and minilopt.hyper.rules (rmsprop_alpha and adam_baydin map to
# rules.rmsprop(learn_gamma=False) and rules.adam(learn_betas=False)).
STACKS = {
    "sgd": [("sgd", {"alpha": 0.1})],
    "sgd/sgd": [("sgd", {"alpha": 0.1}), ("sgd", {"alpha": 0.002})],
    "sgd/sgd/sgd": [("sgd", {"alpha": 0.1}), ("sgd", {"alpha": 0.002}), ("sgd", {"alpha": 0.005})],
    "sgd_momentum/sgd": [("sgd", {"alpha": 0.05, "mu": 0.8}), ("sgd", {"alpha": 0.002})],
    "sgd_per_param/sgd": [("sgd_per_param", {"alpha": 0.1}), ("sgd", {"alpha": 0.002})],
    "adam/sgd": [("adam", {"alpha": 0.003, "beta1": 0.9, "beta2": 0.999}), ("sgd", {"alpha": 1e-4})],
    "adam/adam": [("adam", {"alpha": 0.003, "beta1": 0.9, "beta2": 0.999}),
                  ("adam", {"alpha": 0.001, "beta1": 0.9, "beta2": 0.999})],
    "adam_baydin/sgd": [("adam_baydin", {"alpha": 0.003, "beta1": 0.9, "beta2": 0.999}), ("sgd", {"alpha": 1e-4})],
    "rmsprop/sgd": [("rmsprop", {"alpha": 0.003, "gamma": 0.99}), ("sgd", {"alpha": 1e-3})],
    "rmsprop_alpha/sgd": [("rmsprop_alpha", {"alpha": 0.003, "gamma": 0.99}), ("sgd", {"alpha": 1e-3})],
    "adagrad/sgd": [("adagrad", {"alpha": 0.03}), ("sgd", {"alpha": 1e-3})],
    "adagrad/adagrad": [("adagrad", {"alpha": 0.03}), ("adagrad", {"alpha": 0.01})],
    "rmsprop/rmsprop": [("rmsprop", {"alpha": 0.003, "gamma": 0.99}), ("rmsprop", {"alpha": 1e-3, "gamma": 0.99})],
    "sgd/adam": [("sgd", {"alpha": 0.1}), ("adam", {"alpha": 0.01, "beta1": 0.9, "beta2": 0.999})],
    "adam/sgd/sgd": [("adam", {"alpha": 0.003, "beta1": 0.9, "beta2": 0.999}), ("sgd", {"alpha": 1e-4}),
                     ("sgd", {"alpha": 1e-6})],
}


def digits():
    d = load_digits()
    return d.data.astype(np.float64) / 16.0, d.target.astype(np.int64)


def initial_weights(rng) -> dict[str, np.ndarray]:
    """torch.nn.Linear layout: weight (out, in), y = x @ weight.T + bias."""
    sizes = [(64, HIDDEN), (HIDDEN, 10)]
    weights = {}
    for i, (n_in, n_out) in zip((0, 2), sizes):
        weights[f"{i}.weight"] = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
        weights[f"{i}.bias"] = rng.normal(size=(n_out,)) * 0.1
    return weights


def build(levels, param_names):
    opt = gdtuo.NoOpOptimizer()
    for rule, kw in reversed(levels):
        if rule == "sgd":
            opt = gdtuo.SGD(optimizer=opt, **kw)
        elif rule == "sgd_per_param":
            opt = gdtuo.SGDPerParam(params=[(n, kw["alpha"]) for n in param_names], optimizer=opt)
        elif rule == "adagrad":
            opt = gdtuo.AdaGrad(optimizer=opt, **kw)
        elif rule == "rmsprop":
            opt = gdtuo.RMSProp(optimizer=opt, **kw)
        elif rule == "rmsprop_alpha":
            opt = gdtuo.RMSPropAlpha(optimizer=opt, **kw)
        elif rule == "adam":
            opt = gdtuo.Adam(optimizer=opt, **kw)
        elif rule == "adam_baydin":
            opt = gdtuo.AdamBaydin(optimizer=opt, **kw)
        else:
            raise ValueError(f"unknown rule {rule!r}")
    return opt


def run(levels, weights, x, y, batches) -> dict[str, np.ndarray]:
    model = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 10))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(weights[name]))
    optim = build(levels, [n for n, _ in model.named_parameters()])
    mw = gdtuo.ModuleWrapper(model, optimizer=optim)
    mw.initialize()
    record = {"loss": []}
    for idx in batches:  # the released package's training loop, as in its README
        mw.begin()
        loss = F.cross_entropy(mw.forward(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        mw.zero_grad()
        loss.backward(create_graph=True)
        mw.step()
        record["loss"].append(loss.item())
        level, k = optim, 1
        while not isinstance(level, gdtuo.NoOpOptimizer):
            for name, value in level.parameters.items():
                record.setdefault(f"level{k}/{name}", []).append(value.item())
            level, k = level.optimizer, k + 1
    return {key: np.asarray(v, dtype=np.float64) for key, v in record.items()}


def main():
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    x, y = digits()
    weights = initial_weights(rng)
    epochs = np.concatenate([rng.permutation(len(x)) for _ in range(2)])  # 2 epochs cover 60 x 32
    batches = epochs[: STEPS * BATCH].reshape(STEPS, BATCH)
    out = {"config": np.asarray(json.dumps({"stacks": STACKS, "steps": STEPS, "batch": BATCH, "hidden": HIDDEN,
                                             "torch": torch.__version__})),
           "batches": batches, "x_checksum": np.asarray(x.sum())}
    out.update({f"init/{k}": v for k, v in weights.items()})
    for name, levels in STACKS.items():
        rec = run(levels, weights, x, y, batches)
        out.update({f"{name}:{k}": v for k, v in rec.items()})
        levels_desc = "  ".join(f"{k}={v[-1]:.6g}" for k, v in rec.items() if k != "loss")
        print(f"{name:20s} loss {rec['loss'][0]:.4f} -> {rec['loss'][-1]:.4f}  {levels_desc}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
