"""The outer loop: it learns, resumes exactly, refuses foreign checkpoints, writes atomically,
never applies a non-finite meta-gradient, and gives the same answer sharded over 4 devices."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import tasks
from minilopt.lopt.hand import LearnableSGD
from minilopt.meta import estimators, trainer
from minilopt.meta.unroll import TruncatedUnroll

LOPT = LearnableSGD(1e-3)
UNROLL = TruncatedUnroll(LOPT, tasks.QuadraticFamily(dim=4, max_condition=10.0), 40, 10)
PES = estimators.pes(UNROLL, 8, sigma=0.05)
META_OPT = optax.adam(0.1)
STEPS = 8


def run(out, steps=STEPS, **kw):
    kw.setdefault("meta_optimizer", META_OPT)
    return trainer.meta_train(kw.pop("estimator", PES), LOPT.init(), steps, jax.random.PRNGKey(0), out=out,
                              checkpoint_every=2, progress=False, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run(tmp_path_factory.mktemp("full"))


def test_meta_training_raises_a_too_small_learning_rate(uninterrupted):
    """SGD at 1e-3 on quadratics with curvatures in [0.1, 1] barely moves: PES must raise it."""
    log_lr = float(uninterrupted.theta["log_lr"])
    assert log_lr > np.log(1e-3) + 0.5
    loss = uninterrupted.history["meta_loss"]
    assert loss[-2:].mean() < loss[:2].mean()
    assert np.all(uninterrupted.history["non_finite"] == 0)


def test_a_killed_run_resumes_as_if_never_stopped(tmp_path, monkeypatch, uninterrupted):
    class Killed(Exception):
        pass

    def kill_at_step_5(self, step, metrics, force=False):
        if step == 5:
            raise Killed  # after step 5 is logged, before any checkpoint of it: the last one is step 4

    with monkeypatch.context() as m:
        m.setattr(trainer.Progress, "update", kill_at_step_5)
        with pytest.raises(Killed):
            run(tmp_path)
    assert len(trainer.read_metrics(tmp_path)["step"]) == 5
    resumed = run(tmp_path, resume=True)
    assert resumed.step == STEPS
    np.testing.assert_array_equal(resumed.theta["log_lr"], uninterrupted.theta["log_lr"])
    np.testing.assert_array_equal(resumed.estimator_state.xi["log_lr"], uninterrupted.estimator_state.xi["log_lr"])
    np.testing.assert_array_equal(resumed.key, uninterrupted.key)
    log = trainer.read_metrics(tmp_path)
    np.testing.assert_array_equal(log["step"], np.arange(1, STEPS + 1))  # steps 5 was redone, not duplicated
    np.testing.assert_array_equal(log["meta_loss"], uninterrupted.history["meta_loss"])


def test_checkpoint_holds_everything_and_loads_theta(uninterrupted):
    arrays, config = trainer.read_checkpoint(uninterrupted.out / trainer.CHECKPOINT)
    assert int(arrays["['step']"]) == STEPS
    assert any(k.startswith("['meta_opt_state']") for k in arrays)
    assert any(k.startswith("['estimator_state']") for k in arrays)
    assert config["estimator"] == "pes" and config["num_particles"] == 8 and config["horizon"] == 40
    theta = trainer.load_theta(uninterrupted.out, LOPT.init())
    np.testing.assert_array_equal(theta["log_lr"], uninterrupted.theta["log_lr"])
    assert json.loads((uninterrupted.out / trainer.CONFIG).read_text()) == config


def test_a_checkpoint_from_another_configuration_is_refused(tmp_path, uninterrupted):
    other = estimators.pes(UNROLL, 8, sigma=0.1)
    with pytest.raises(ValueError, match=r"sigma: checkpoint has 0.05, this run has 0.1"):
        run(uninterrupted.out, estimator=other, resume=True)
    with pytest.raises(ValueError, match="resume=True"):
        run(uninterrupted.out)
    with pytest.raises(ValueError, match=r"θ in .*: \['log_lr'\] has shape \(\) .* expected \(2,\)"):
        trainer.load_theta(uninterrupted.out, {"log_lr": jnp.zeros(2)})


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    trainer.save_checkpoint(path, {"a": jnp.arange(3.0)}, {"x": 1})

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        trainer.save_checkpoint(path, {"a": jnp.zeros(3)}, {"x": 2})
    monkeypatch.undo()
    arrays, config = trainer.read_checkpoint(path)  # the old checkpoint is intact
    np.testing.assert_array_equal(arrays["['a']"], [0.0, 1.0, 2.0])
    assert config == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temporary file left behind


def test_non_finite_meta_gradients_are_never_applied(tmp_path):
    """SGD at e^60 overflows; truncated backprop's meta-gradient is NaN, zeroed and counted."""
    unroll = TruncatedUnroll(LOPT, tasks.quadratic(dim=4, condition=10.0), 20, 10, stagger=False)
    theta = {"log_lr": jnp.asarray(60.0)}
    result = trainer.meta_train(estimators.truncated_grad(unroll, 2), theta, 2, jax.random.PRNGKey(0),
                                meta_optimizer=optax.sgd(1.0), progress=False)
    assert float(result.theta["log_lr"]) == 60.0
    np.testing.assert_array_equal(result.history["non_finite"], [1, 1])


SHARDED = textwrap.dedent("""
    import json, jax, numpy as np, optax
    from minilopt import tasks
    from minilopt.lopt.hand import LearnableSGD
    from minilopt.meta import estimators, trainer
    from minilopt.meta.unroll import TruncatedUnroll
    assert len(jax.devices()) == 4, jax.devices()
    lopt = LearnableSGD(1e-2)
    unroll = TruncatedUnroll(lopt, tasks.QuadraticFamily(dim=4, max_condition=10.0), 20, 5)
    est = estimators.pes(unroll, 8, 0.05)
    runs = {n: trainer.meta_train(est, lopt.init(), 4, jax.random.PRNGKey(0), meta_optimizer=optax.adam(0.1),
                                  devices=jax.devices()[:n], progress=False) for n in (1, 4)}
    xi = runs[4].estimator_state.xi["log_lr"]
    try:
        trainer.meta_train(estimators.pes(unroll, 6, 0.05), lopt.init(), 1, jax.random.PRNGKey(0), progress=False)
        error = ""
    except ValueError as e:
        error = str(e)
    print(json.dumps({n: {"theta": float(r.theta["log_lr"]), "loss": r.history["meta_loss"].tolist()}
                      for n, r in runs.items()} | {"xi_devices": len(xi.sharding.device_set),
                      "xi_shard": list(xi.addressable_shards[0].data.shape), "error": error}))
""")


def test_sharded_over_four_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=600,
                          cwd=pathlib.Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["xi_devices"] == 4 and out["xi_shard"] == [2]  # 8 pairs, 2 per device
    np.testing.assert_allclose(out["4"]["theta"], out["1"]["theta"], rtol=1e-5)
    np.testing.assert_allclose(out["4"]["loss"], out["1"]["loss"], rtol=1e-5)
    assert "6 particles cannot be split evenly over 4 devices" in out["error"]


def test_a_stateless_estimator_trains_too():
    """Full-horizon ES keeps no state between steps (its state is ()); the trainer handles that."""
    result = trainer.meta_train(estimators.es(UNROLL, 4, 0.05), LOPT.init(), 3, jax.random.PRNGKey(0),
                                meta_optimizer=META_OPT, progress=False)
    assert result.estimator_state == ()
    assert float(result.theta["log_lr"]) > np.log(1e-3) + 0.2  # three Adam steps of 0.1, all upwards
