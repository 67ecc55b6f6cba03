"""Bad command lines end with exit code 2 and a message that names the argument,
before any work: no training runs, no checkpoint is written, no traceback."""
import os

import pytest

from minilopt import cli

SMALL = ["meta-train", "--family", "quadratic", "--family-args", '{"dim": 2}', "--lopt", "mlp",
         "--lopt-args", '{"hidden": [4]}', "--particles", "2", "--horizon", "4", "--truncation", "2",
         "--steps", "2", "--quiet"]


def refused(argv, capsys, *words):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("flag, value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--lr", "0"),
    ("--clip-grad", "-1"), ("--clip-grad", "0"), ("--clip-grad", "nan"),   # -1 once reversed the meta-gradient
    ("--sigma", "0"), ("--sigma", "nan"), ("--loss-clip", "-1"),
    ("--particles", "0"), ("--horizon", "0"), ("--truncation", "0"), ("--steps", "-5"),
    ("--checkpoint-every", "0"), ("--structures", "0"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    refused(SMALL + [flag, value, "--out", str(out)], capsys, flag)
    assert not (out / "checkpoint.npz").exists()


@pytest.mark.parametrize("lopt_args, words", [('{"nope": 1}', ["nope"]), ('{"hidden": 4}', ["hidden"]),
                                              ("[4]", ["JSON object"])])
def test_bad_lopt_args_are_refused(tmp_path, capsys, lopt_args, words):
    """An unknown key or a non-list `hidden` once ended in a TypeError traceback."""
    refused(SMALL + ["--lopt-args", lopt_args, "--out", str(tmp_path / "run")], capsys, *words)


def test_unknown_family_args_are_refused(tmp_path, capsys):
    refused(SMALL + ["--family-args", '{"nope": 1}', "--out", str(tmp_path / "run")], capsys, "nope")


def test_a_recipe_with_list_valued_lopt_args_is_refused(tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"lopt_args": [4]}')
    argv = [a for a in SMALL if a not in ("--lopt-args", '{"hidden": [4]}')]  # the recipe's value counts
    refused(argv + ["--config", str(recipe), "--out", str(tmp_path / "run")], capsys, "lopt-args")
    recipe.write_text("[1, 2]")
    refused(argv + ["--config", str(recipe), "--out", str(tmp_path / "run")], capsys, "a recipe is a JSON object")


def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    refused(SMALL + ["--out", str(a_file)], capsys, "--out", "not a directory")
    refused(SMALL + ["--out", str(a_file / "run")], capsys, "--out", "not a writable directory")
    refused(["evaluate", str(tmp_path), "--out", str(a_file)], capsys, "--out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_refused_before_training(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(SMALL + ["--out", str(locked / "run")], capsys, "not a writable directory")
        refused(SMALL + ["--resume", "--out", str(locked)], capsys, "not a writable directory")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("flag, value", [("--tasks", "0"), ("--tasks", "-1"), ("--steps", "0"), ("--num-lrs", "0")])
def test_evaluate_bad_numbers_are_refused(tmp_path, capsys, flag, value):
    """`evaluate --tasks 0` once ended in a matplotlib message."""
    refused(["evaluate", str(tmp_path), flag, value], capsys, flag)
