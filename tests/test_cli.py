"""The `minilopt` command: small, fast runs of meta-train (with --resume) and evaluate."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from minilopt import cli, evaluate
from minilopt.meta import trainer

TRAIN = ["meta-train", "--lopt", "sgd", "--lopt-args", '{"learning_rate": 0.01}', "--family", "quadratic",
         "--family-args", '{"dim": 4, "max_condition": 10.0}', "--estimator", "pes", "--particles", "4",
         "--horizon", "20", "--truncation", "10", "--sigma", "0.05", "--lr", "0.05", "--checkpoint-every", "2",
         "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(TRAIN + ["--steps", "3", "--out", str(out)]) == 0
    return out


def test_meta_train_writes_and_prints_its_outputs(run_dir, capsys):
    out = run_dir.parent / "again"
    assert cli.main(TRAIN + ["--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("checkpoint.npz", "metrics.jsonl", "config.json", "meta_loss.png"):
        assert (out / name).is_file()
        assert str(out / name) in printed
    config = json.loads((out / "config.json").read_text())
    assert config["cli"]["lopt"] == "sgd" and config["estimator"] == "pes" and config["horizon"] == 20


def test_meta_train_resumes_and_refuses_to_overwrite(run_dir, capsys):
    assert cli.main(TRAIN + ["--steps", "3", "--out", str(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(TRAIN + ["--steps", "5", "--out", str(run_dir), "--resume"]) == 0
    assert "for 5 outer steps" in capsys.readouterr().out
    np.testing.assert_array_equal(trainer.read_metrics(run_dir)["step"], [1, 2, 3, 4, 5])
    # another configuration in the same directory: refused, the mismatch named
    assert cli.main([*TRAIN[:-1], "--sigma", "0.1", "--steps", "6", "--out", str(run_dir), "--resume"]) == 2
    assert "sigma: checkpoint has 0.05, this run has 0.1" in capsys.readouterr().err


def test_evaluate_compares_with_tuned_adam(run_dir, capsys):
    out = run_dir.parent / "eval"
    code = cli.main(["evaluate", str(run_dir), "--family", "quadratic", "--family-args",
                     '{"dim": 4, "max_condition": 10.0}', "--tasks", "1", "--num-lrs", "3", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out / "evaluate.png") in printed and str(out / "evaluate.json") in printed
    results = json.loads((out / "evaluate.json").read_text())
    assert results["steps"] == 20 and len(results["tasks"]) == 1
    for row in results["tasks"]:
        assert np.min(np.abs(np.log10(row["adam_best_lr"]) - np.array([-4, -2, 0]))) < 1e-5
        assert np.isfinite(row["learned_final_loss"]) and np.isfinite(row["adam_final_loss"])
        # minilopt.evaluate's measure: faster (> 1) exactly when the learned optimizer ends lower
        assert 0.1 <= row["speedup"] <= 10
        assert (row["speedup"] > 1) == (row["learned_final_loss"] < row["adam_final_loss"])
    assert results["measure"] == evaluate.MEASURE and results["summary"]["tasks"] == 1


def test_bad_input_is_reported_clearly(tmp_path, capsys):
    bad = [a if a != "20" else "25" for a in TRAIN]  # horizon 25, truncation 10
    assert cli.main(bad + ["--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "horizon 25 is not a multiple of truncation 10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["meta-train", "--family-args", "{hidden: 3}", "--out", str(tmp_path)])
    assert "not valid JSON" in capsys.readouterr().err
    assert cli.main(["meta-train", "--family", "nope", "--out", str(tmp_path / "y"), "--steps", "1"]) == 2
    assert "unknown task family 'nope'" in capsys.readouterr().err


def test_the_command_line_entry_point():
    proc = subprocess.run([sys.executable, "-m", "minilopt.cli", "meta-train", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--estimator" in proc.stdout


def test_every_registered_learned_optimizer_is_a_choice_and_a_warm_start_continues_from_its_weights(tmp_path, capsys):
    from minilopt.lopt import registry
    from minilopt.lopt.pretrained import load, save

    assert set(cli.parser().meta_train.__dict__["_option_string_actions"]["--lopt"].choices) == set(registry.LOPTS)
    quad = ["--family", "quadratic", "--family-args", '{"dim": 4, "max_condition": 10.0}', "--particles", "2",
            "--horizon", "20", "--truncation", "10", "--quiet", "--log-loss"]
    lopt_args = '{"hidden": [4], "schedule_hidden": 2}'
    first = tmp_path / "first"
    assert cli.main(["meta-train", "--lopt", "scheduled", "--lopt-args", lopt_args, *quad, "--steps", "2",
                     "--out", str(first)]) == 0
    assert json.loads((first / "config.json").read_text())["log_loss"] is True
    like = registry.make("scheduled", json.loads(lopt_args)).init(jax.random.key(1))
    theta = trainer.load_theta(first / "checkpoint.npz", like)
    save(tmp_path / "weights", theta, lopt="scheduled", kwargs=json.loads(lopt_args), horizon=20)
    # --init-theta: a new run whose theta starts at the exported weights (step 0, so the first log is step 1)
    second = tmp_path / "second"
    assert cli.main(["meta-train", "--lopt", "scheduled", "--lopt-args", lopt_args, *quad, "--steps", "1", "--lr",
                     "1e-12", "--out", str(second), "--init-theta", str(tmp_path / "weights")]) == 0
    again = trainer.load_theta(second / "checkpoint.npz", load(tmp_path / "weights").theta)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(theta)):
        np.testing.assert_allclose(a, b, atol=1e-9)   # a step of 1e-12: the warm start is where it began
    # weights of another size are refused, named
    assert cli.main(["meta-train", "--lopt", "scheduled", "--lopt-args", '{"hidden": [8]}', *quad, "--steps", "1",
                     "--out", str(tmp_path / "third"), "--init-theta", str(tmp_path / "weights")]) == 2
    assert "another learned optimizer or size" in capsys.readouterr().err
