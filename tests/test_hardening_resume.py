"""Meta-training's files under attack: a resume under any other configuration is
refused and names the difference; corrupt checkpoints, NaN θ and impossible steps are
refused; temporary files of a killed write are cleaned; the log survives a torn line;
an unusable output directory is refused before any work."""
import json
import os
import stat

import jax
import numpy as np
import optax
import pytest

from minilopt import tasks
from minilopt.lopt import checkpoint
from minilopt.lopt.mlp import MLPLOpt
from minilopt.meta import estimators, trainer
from minilopt.meta.unroll import TruncatedUnroll

LOPT = MLPLOpt(hidden=(4,))
FAMILY = tasks.QuadraticFamily(dim=3, max_condition=10.0)
META_OPT = optax.adam(1e-3)
STEPS = 2


def estimator(lopt=LOPT, family=FAMILY, **kw):
    return estimators.pes(TruncatedUnroll(lopt, family, 4, 2), 2, **kw)


def run(out, est=None, steps=STEPS, meta_optimizer=META_OPT, **kw):
    est = est or estimator()
    kw.setdefault("checkpoint_every", 1)
    return trainer.meta_train(est, est.unroll.lopt.init(jax.random.PRNGKey(1)), steps, jax.random.PRNGKey(0),
                              out=out, meta_optimizer=meta_optimizer, progress=False, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run(out)
    return out


def copy_run(src, dst):
    dst.mkdir(exist_ok=True)
    for name in (trainer.CHECKPOINT, trainer.METRICS, trainer.CONFIG):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


@pytest.mark.parametrize("what,changed", [
    ("max_condition", dict(family=tasks.QuadraticFamily(dim=3, max_condition=100.0))),
    ("noise_range", dict(family=tasks.QuadraticFamily(dim=3, max_condition=10.0, noise_range=(0.1, 1.0)))),
    ("init_scale", dict(family=tasks.QuadraticFamily(dim=3, max_condition=10.0, init_scale=2.0))),
    ("fractions", dict(lopt=MLPLOpt(hidden=(4,), fractions=(0.2, 0.3, 0.5, 0.7, 0.9)))),
    ("rms_decay", dict(lopt=MLPLOpt(hidden=(4,), rms_decay=0.99))),
    ("eps", dict(lopt=MLPLOpt(hidden=(4,), eps=1e-6))),
    ("rms_eps", dict(lopt=MLPLOpt(hidden=(4,), rms_eps=1e-7))),
])
def test_a_resume_under_another_lopt_or_family_setting_is_refused(finished, what, changed):
    """Each of these once resumed silently: the recorded configuration left them out."""
    with pytest.raises(ValueError, match=rf"(?s)refusing to resume.*_settings: .*{what}"):
        run(finished, estimator(**changed), resume=True)


@pytest.mark.parametrize("meta_optimizer", [optax.sgd(1e-3), optax.chain(optax.clip(1.0), optax.adam(1e-3))])
def test_a_resume_with_a_meta_optimizer_of_another_structure_is_refused(finished, meta_optimizer):
    """A stateless SGD once resumed from Adam's checkpoint and rewrote it in its own structure."""
    before = (finished / trainer.CHECKPOINT).read_bytes()
    with pytest.raises(ValueError, match="meta_optimizer_state: checkpoint has"):
        run(finished, meta_optimizer=meta_optimizer, resume=True)
    assert (finished / trainer.CHECKPOINT).read_bytes() == before  # nothing lost


def test_restore_refuses_entries_the_run_does_not_have():
    arrays = {"['a']": np.zeros(2, np.float32), "['b']": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match=r"entries this run does not have: \[\"\['b'\]\"\]"):
        trainer.restore(arrays, {"a": np.zeros(2, np.float32)}, "ckpt.npz")


def _rewrite(path, **changes):
    arrays, config = trainer.read_checkpoint(path)
    arrays.update(changes)
    arrays["__config__"] = np.array(json.dumps(config, sort_keys=True))
    checkpoint.write_npz(path, arrays)


@pytest.mark.parametrize("change,message", [
    ({"['step']": np.int64(-5)}, r"outer step -5, outside 0\.\.steps=2; the file is corrupt"),
    ({"['step']": np.int64(10**6)}, r"outer step 1000000, outside 0\.\.steps=2; pass steps >= 1000000"),
    ({"['step']": np.int32(1)}, r"\['step'\] has shape \(\) and dtype int32, expected \(\) and int64"),
    ({"['theta']['layer_1']['b']": np.full(2, np.nan, np.float32)}, r"\['theta'\]\['layer_1'\]\['b'\] holds NaN"),
    ({"['key']": np.zeros(3, np.uint32)}, r"\['key'\] has shape \(3,\)"),
])
def test_a_checkpoint_with_impossible_contents_is_refused(finished, tmp_path, change, message):
    out = copy_run(finished, tmp_path / "run")
    if "['theta']['layer_1']['b']" in change:
        assert trainer.read_checkpoint(out / trainer.CHECKPOINT)[0]["['theta']['layer_1']['b']"].shape == (2,)
    _rewrite(out / trainer.CHECKPOINT, **change)
    with pytest.raises(ValueError, match=message) as e:
        run(out, resume=True)
    assert str(out / trainer.CHECKPOINT) in str(e.value)


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04 not a zip", b"\x93NUMPY not an npz"])
def test_a_corrupt_checkpoint_names_the_file(finished, tmp_path, data):
    out = copy_run(finished, tmp_path / "run")
    (out / trainer.CHECKPOINT).write_bytes(data)
    with pytest.raises(ValueError, match=str(out / trainer.CHECKPOINT)):
        run(out, resume=True)
    with pytest.raises(ValueError, match=str(out / trainer.CHECKPOINT)):
        trainer.load_theta(out, LOPT.init(jax.random.PRNGKey(1)))


def test_checkpoints_carry_a_format_version_and_mode_0644(finished):
    path = finished / trainer.CHECKPOINT
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with np.load(path) as f:
        assert int(f[checkpoint.FORMAT_KEY]) == checkpoint.FORMAT_VERSION
    theta_file = finished / "theta.npz"
    checkpoint.save(theta_file, {"w": np.ones(2)})
    assert stat.S_IMODE(os.stat(theta_file).st_mode) == 0o644


def test_a_version_1_checkpoint_still_loads(finished, tmp_path):
    """Files written before the format version (no FORMAT_KEY) read as version 1."""
    arrays, config = trainer.read_checkpoint(finished / trainer.CHECKPOINT)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays, __config__=np.array(json.dumps(config)))
    theta = trainer.load_theta(old, LOPT.init(jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(theta["layer_0"]["w"], arrays["['theta']['layer_0']['w']"])


def test_temporary_files_of_a_killed_write_are_cleaned_on_resume(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    litter = [out / "checkpoint.npz.abc123.tmp", out / "metrics.jsonl.x1.tmp", out / "config.json.q.tmp"]
    keep = out / "notes.tmp"
    for f in litter + [keep]:
        f.write_bytes(b"half a file")
    run(out, steps=STEPS + 1, resume=True)
    assert not any(f.exists() for f in litter)
    assert keep.exists()  # not ours: left alone


def test_a_torn_last_log_line_is_dropped_with_a_warning(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    with open(out / trainer.METRICS, "a") as f:
        f.write('{"step": 3, "meta_lo')
    with pytest.warns(RuntimeWarning, match=rf"{out / trainer.METRICS}: dropped a torn last line"):
        log = trainer.read_metrics(out)
    np.testing.assert_array_equal(log["step"], [1, 2])
    with pytest.warns(RuntimeWarning, match="torn last line"):
        result = run(out, steps=STEPS + 1, resume=True)
    np.testing.assert_array_equal(trainer.read_metrics(out)["step"], [1, 2, 3])
    assert result.step == STEPS + 1


def test_a_corrupt_log_line_in_the_middle_is_refused(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "x"\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}, line 2"):
        trainer.read_metrics(path)


def test_an_unusable_output_directory_is_refused_before_any_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        run(a_file)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(ValueError, match="not a writable directory"):
            run(locked)


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(steps=2.5), dict(steps=True), dict(checkpoint_every=0),
                                 dict(log_every=1.5), dict(config=[1])])
def test_bad_loop_arguments_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="|".join(bad)):
        run(tmp_path / "x", **bad)
    assert not (tmp_path / "x" / trainer.CHECKPOINT).exists()
