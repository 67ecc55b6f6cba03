"""Small bad inputs, each refused with a ValueError (or exit code 2) that names it."""
import importlib.util
import json
import pathlib
import shutil

import jax
import numpy as np
import optax
import pytest

from minilopt import tasks, train
from minilopt.lopt.lstm import LSTMLOpt
from minilopt.lopt.mlp import MLPLOpt

from minilopt.lopt import pretrained  # noqa: E402
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bad", ["100", True, False, 2.5, np.float32(3.0), 0, -1, None, [10]])
def test_num_steps_must_be_a_positive_int(bad):
    for lopt in (MLPLOpt(hidden=(4,)), LSTMLOpt(hidden=4, layers=1)):
        with pytest.raises(ValueError, match=r"num_steps .* must be a positive int"):
            lopt.optimizer(lopt.init(jax.random.PRNGKey(0)), bad)
    with pytest.raises(ValueError, match=r"num_steps .* must be a positive int"):
        pretrained.pretrained(bad)


def test_num_steps_of_numpy_and_traced_ints_are_accepted():
    lopt = MLPLOpt(hidden=(4,))
    theta = lopt.init(jax.random.PRNGKey(0))
    lopt.optimizer(theta, np.int64(10)).init({"x": np.zeros(2, np.float32)})
    init = lambda n: lopt.optimizer(theta, n).init({"x": np.zeros(2, np.float32)}).count
    assert int(jax.jit(init)(10)) == 0  # a traced int cannot be checked for its value, only its type
    with pytest.raises(ValueError, match="must be a positive int"):
        jax.jit(init)(10.0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_eval_every_must_be_a_positive_int(bad):
    """eval_every=0 once silently became the default."""
    with pytest.raises(ValueError, match="eval_every must be an int >= 1"):
        train.fit(tasks.get("quadratic"), optax.sgd(0.1), 20, jax.random.PRNGKey(0), eval_every=bad)


@pytest.mark.parametrize("rates", [[np.inf], [0.1, np.nan], [1e-2, -np.inf], [], [[0.1]], ["a"]])
def test_lr_sweep_refuses_nonfinite_rates(rates):
    with pytest.raises(ValueError, match="learning_rates must be a non-empty 1-D list of finite positive"):
        train.lr_sweep(tasks.get("quadratic"), optax.sgd, rates, 10, jax.random.PRNGKey(0))


@pytest.fixture
def weights(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(pretrained.DEFAULT_DIR, folder)
    return folder


@pytest.mark.parametrize("name", ["../theta.npz", "/etc/passwd", "sub/theta.npz", "..", "", 5, None,
                                  "..\\theta.npz"])
def test_pretrained_theta_must_name_a_file_in_its_own_folder(weights, name):
    config = json.loads((weights / "config.json").read_text())
    config["theta"] = name
    (weights / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: 'theta' must name a file in the same folder"):
        pretrained.load(weights)


def test_pretrained_export_needs_out(capsys):
    """`python -m minilopt.lopt.pretrained RUN` once wrote over the shipped weights by default."""
    shipped = (pretrained.DEFAULT_DIR / "theta.npz").read_bytes()
    with pytest.raises(SystemExit) as e:
        pretrained.main(["some_run"])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        pretrained.main(["no_such_run", "--out", "x"])
    assert e.value.code == 2 and "no_such_run" in capsys.readouterr().err
    assert (pretrained.DEFAULT_DIR / "theta.npz").read_bytes() == shipped


def test_hyper_overhead_runs_no_default_gdtuo_python():
    spec = importlib.util.spec_from_file_location("hyper_overhead", ROOT / "benchmarks" / "hyper_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.time_gdtuo(None, 8, 4, 1, 1) == {"skipped": "no --gdtuo-python given"}
    with pytest.raises(SystemExit, match="no such file"):
        bench.time_gdtuo("/nonexistent/python", 8, 4, 1, 1)


@pytest.mark.parametrize("horizon, truncation, advice", [(10, 20, "Use horizon 20, or truncation 10"),
                                                        (30, 20, "Use horizon 20 or 40, or truncation")])
def test_horizon_advice_names_distinct_horizons(horizon, truncation, advice):
    """It once read "Use horizon 20 or 20"."""
    from minilopt.lopt.hand import LearnableSGD
    from minilopt.meta.unroll import TruncatedUnroll

    with pytest.raises(ValueError, match=advice):
        TruncatedUnroll(LearnableSGD(0.1), tasks.QuadraticFamily(dim=2), horizon, truncation)


def test_velo_value_must_be_a_real_scalar_and_export_needs_a_folder(tmp_path):
    from minilopt.lopt import VeLO
    velo = VeLO(hidden=4, mixtures=2)
    opt = velo.optimizer(velo.init(jax.random.PRNGKey(0)), 10)
    params = {"w": np.ones((3, 2), np.float32)}
    state = opt.init(params)
    for bad in ("1.0", b"1", np.ones(2, np.float32), 1j):
        with pytest.raises(ValueError, match="value= must be the training loss as a real scalar"):
            opt.update(params, state, params, value=bad)
    opt.update(params, state, params, value=np.float32(1.0))     # a real scalar is fine
    with pytest.raises(ValueError, match="export_run needs out=DIR"):
        pretrained.export_run(tmp_path)
