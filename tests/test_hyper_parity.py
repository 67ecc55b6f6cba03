"""minilopt's hyperoptimizers against the paper's released code (gdtuo), in float64.

tests/data/gdtuo_reference.npz was made by tests/tools/make_gdtuo_reference.py, which
runs the PyPI package `gradient-descent-the-ultimate-optimizer` with PyTorch (see its
docstring to re-run it). Here we replay the same runs (same weights, batches, order
and stacks) and compare the losses and every level's raw hyperparameters, step by
step. No PyTorch needed.
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from minilopt import hyper
from minilopt.hyper import rules
from helpers import float64

REF = np.load(pathlib.Path(__file__).parent / "data" / "gdtuo_reference.npz")
CONFIG = json.loads(str(REF["config"]))

RULES = {
    "sgd": rules.sgd,
    "sgd_per_param": rules.sgd_per_param,
    "adagrad": rules.adagrad,
    "rmsprop": rules.rmsprop,
    "rmsprop_alpha": functools.partial(rules.rmsprop, learn_gamma=False),
    "adam": rules.adam,
    "adam_baydin": functools.partial(rules.adam, learn_betas=False),
}
# gdtuo's name for a raw hyperparameter -> minilopt's (the prefix says the parameterisation)
RAW_NAMES = {"rmsprop": {"alpha": "sqrt_alpha", "gamma": "atanh_gamma"}, "rmsprop_alpha": {"alpha": "sqrt_alpha"},
             "adam": {"beta1": "atanh_beta1", "beta2": "atanh_beta2"}}


def mlp(params, x):  # torch.nn.Linear layout, as in the reference
    h = jnp.tanh(x @ params["0.weight"].T + params["0.bias"])
    return h @ params["2.weight"].T + params["2.bias"]


def cross_entropy(params, batch):
    x, y = batch
    logp = jax.nn.log_softmax(mlp(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def test_reference_data_is_what_we_replay():
    x = load_digits().data / 16.0
    assert x.sum() == pytest.approx(float(REF["x_checksum"]), rel=1e-14)
    assert REF["batches"].shape == (CONFIG["steps"], CONFIG["batch"]) and CONFIG["steps"] >= 40


def replay(levels, mode):
    d = load_digits()
    x, y = d.data / 16.0, d.target
    idx = REF["batches"]
    with float64():
        params = {k[len("init/"):]: jnp.asarray(REF[k]) for k in REF.files if k.startswith("init/")}
        assert all(p.dtype == jnp.float64 for p in params.values())
        opt = hyper.stack(*(RULES[rule](**kw) for rule, kw in levels), mode=mode)
        batches = (jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        traj = jax.jit(lambda p, b: hyper.run(cross_entropy, p, opt, b, raw=True))(params, batches)
        return jax.tree.map(np.asarray, (traj.loss, traj.hyperparams))


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("name", list(CONFIG["stacks"]))
def test_matches_released_code(name, mode):
    levels = CONFIG["stacks"][name]
    loss, hps = replay(levels, mode)
    np.testing.assert_allclose(loss, REF[f"{name}:loss"], rtol=1e-10, atol=1e-12, err_msg=f"{name}: losses")
    assert len(hps) == len(levels)
    for k, ((rule, kw), ours) in enumerate(zip(levels, hps), start=1):
        prefix = f"{name}:level{k}/"
        theirs = {key[len(prefix):]: REF[key] for key in REF.files if key.startswith(prefix)}
        assert theirs, f"{name}: no reference data for level {k}"
        if rule == "sgd_per_param":  # gdtuo: "<tensor>_alpha"; minilopt: alpha[<tensor>]
            theirs = {"alpha": {n[: -len("_alpha")]: v for n, v in theirs.items()}}
        elif rule == "sgd" and kw.get("mu", 0.0) == 0.0:
            np.testing.assert_array_equal(theirs.pop("mu"), 0.0)  # momentum off: mu never moves
        theirs = {RAW_NAMES.get(rule, {}).get(n, n): v for n, v in theirs.items()}
        assert set(theirs) == set(ours), f"{name} level {k}: {sorted(theirs)} vs {sorted(ours)}"
        jax.tree.map(lambda t, o: np.testing.assert_allclose(o, t, rtol=1e-10, atol=1e-13,
                                                             err_msg=f"{name} level {k}"), theirs, ours)


def test_reference_hyperparameters_actually_move():
    # The comparison above would be weak if nothing moved: check it did, in gdtuo's data.
    for name, levels in CONFIG["stacks"].items():
        if len(levels) < 2:
            continue
        alpha = REF[f"{name}:level1/alpha"] if "per_param" not in name else REF[f"{name}:level1/0.weight_alpha"]
        assert abs(alpha[-1] - alpha[0]) > 1e-4 * abs(alpha[0]), name
