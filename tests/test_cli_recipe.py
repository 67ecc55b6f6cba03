"""`minilopt meta-train --config RECIPE` and `--structures N`."""
import json

import pytest

from minilopt import cli
from minilopt.meta import trainer


def recipe(tmp_path, **overrides):
    r = {"description": "a test recipe", "lopt": "sgd", "family": "quadratic", "family_args": {"dim": 3},
         "estimator": "pes", "particles": 4, "structures": 2, "horizon": 20, "truncation": 10, "steps": 2,
         "checkpoint_every": 1, "out": str(tmp_path / "run"), **overrides}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(r))
    return path


def test_a_recipe_sets_the_options_and_flags_win(tmp_path):
    path = recipe(tmp_path)
    args = cli.parse(["meta-train", "--config", str(path), "--steps", "3"])
    assert (args.lopt, args.structures, args.particles, args.horizon, args.steps) == ("sgd", 2, 4, 20, 3)


def test_a_recipe_run_records_its_structures(tmp_path, capsys):
    assert cli.main(["meta-train", "--config", str(recipe(tmp_path)), "--quiet"]) == 0
    assert "mixture of 2" in capsys.readouterr().out
    _, config = trainer.read_checkpoint(tmp_path / "run" / trainer.CHECKPOINT)
    assert config["cli"]["structures"] == 2 and config["num_particles"] == 4 and config["horizon"] == 20


def test_bad_recipes_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.parse(["meta-train", "--config", str(recipe(tmp_path, particels=8))])
    assert "unknown recipe keys ['particels']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse(["meta-train", "--config", str(tmp_path / "missing.json")])
    assert "cannot read the recipe" in capsys.readouterr().err
    assert cli.main(["meta-train", "--config", str(recipe(tmp_path, particles=5)), "--quiet"]) == 2
    assert "split evenly" in capsys.readouterr().err
