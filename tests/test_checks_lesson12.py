from types import SimpleNamespace

import numpy as np
import pytest

from minilopt import evaluate as E, tasks
from minilopt.checks import ExerciseError, lesson12 as L

@pytest.fixture(scope="module")
def family():  # built on first use, not while collecting (it loads its dataset)
    return tasks.ImageFamily("digits", "mlp", hidden=(32,), activation="relu", batch_size=64)


@pytest.fixture(scope="module")
def heldout(family):
    return E.suite(50, quick=True, in_family=(family,))


def fake_results(suite, speedups, name="opt"):
    """Results shaped as evaluate() returns them, with final losses that agree with each speedup
    (speedup >= 1 exactly when the learned loss is at or below tuned Adam's)."""
    rows = [{"name": e.name, "group": e.group, "speedup": s,
             "lopt": {"final_train": 0.5 if s >= 1 else 2.0}, "adam": {"final_train": 1.0, "lr": 1e-2}}
            for e, s in zip(suite, speedups)]
    s = np.asarray(speedups, float)
    return {"optimizer": name, "tasks": rows,
            "summary": {"all": {"tasks": len(s), "faster_than_1x": float(np.mean(s > 1)), "median": float(np.median(s))}}}


def test_a_meta_training_that_lowered_the_meta_loss_passes_and_a_flat_one_fails():
    good = SimpleNamespace(step=8, history={"meta_loss": np.array([1.0, 0.9, 0.7, 0.6, 0.5, 0.5, 0.4, 0.3])})
    L.check_meta_training(good, 8)
    flat = SimpleNamespace(step=8, history={"meta_loss": np.array([0.5, 0.6, 0.5, 0.6, 0.5, 0.6, 0.5, 0.6])})
    with pytest.raises(ExerciseError, match=r"(?s)did not go down.*expected.*got.*meta learning rate"):
        L.check_meta_training(flat, 8)
    with pytest.raises(ExerciseError, match=r"(?s)different number of outer steps.*expected: 10.*got:      8"):
        L.check_meta_training(good, 10)
    with pytest.raises(ExerciseError, match=r"(?s)needs the result of meta_train.*got:      None"):
        L.check_meta_training(None, 8)


def test_the_suite_check_passes_held_out_draws_of_the_family(heldout, family):
    L.check_heldout_suite(heldout, family, 50)


def test_a_suite_without_the_family_fails(heldout, family):
    default = E.suite(50, quick=True)                     # the typical slip: in_family left at its default
    with pytest.raises(ExerciseError, match=r"(?s)no in-family task is a held-out draw of your family.*in_family"):
        L.check_heldout_suite(default, family, 50)
    with pytest.raises(ExerciseError, match="horizon"):
        L.check_heldout_suite(heldout, family, 100)
    with pytest.raises(ExerciseError, match="empty"):
        L.check_heldout_suite([], family, 50)


def test_consistent_results_pass_and_inconsistent_ones_fail(heldout):
    speedups = [0.5, 1.5, 0.2, 3.0, 1.0][: len(heldout)]
    L.check_evaluation(fake_results(heldout, speedups), heldout)

    other_suite = fake_results(heldout[1:], speedups[1:])              # evaluated on a different suite
    with pytest.raises(ExerciseError, match="do not cover the suite"):
        L.check_evaluation(other_suite, heldout)
    flipped = fake_results(heldout, speedups)
    flipped["tasks"][0]["lopt"]["final_train"] = 0.1                   # lower loss but a speedup below 1
    with pytest.raises(ExerciseError, match="disagrees with the final losses"):
        L.check_evaluation(flipped, heldout)
    out_of_range = fake_results(heldout, [50.0] + speedups[1:])
    with pytest.raises(ExerciseError, match=r"outside the measure's range"):
        L.check_evaluation(out_of_range, heldout)
    edited = fake_results(heldout, speedups)
    edited["summary"]["all"]["median"] = 9.0
    with pytest.raises(ExerciseError, match="summary disagrees"):
        L.check_evaluation(edited, heldout)
    with pytest.raises(ExerciseError, match="needs the dict"):
        L.check_evaluation(None, heldout)


def test_the_reading_must_match_the_results(heldout):
    learned = fake_results(heldout, [0.5, 1.5, 0.2, 3.0, 1.0][: len(heldout)], "learned")
    hyperopt = fake_results(heldout, [0.3, 0.4, 1.2, 0.5, 0.6][: len(heldout)], "hyper")
    s_l, s_h = L._speedups(learned), L._speedups(hyperopt)
    right = {"learned_faster_on": int(np.sum(s_l > 1)), "hyper_faster_on": int(np.sum(s_h > 1)),
             "learned_median": float(np.median(s_l)), "hyper_median": float(np.median(s_h)), "better": "learned"}
    L.check_reading(right, learned, hyperopt)
    with pytest.raises(ExerciseError, match=r"(?s)reading\['better'\].*expected: 'learned'.*got:      'hyper'"):
        L.check_reading({**right, "better": "hyper"}, learned, hyperopt)
    counted_ties = {**right, "learned_faster_on": int(np.sum(s_l >= 1))}  # a speedup of exactly 1 is not faster
    with pytest.raises(ExerciseError, match=r"learned_faster_on"):
        L.check_reading(counted_ties, learned, hyperopt)
    with pytest.raises(ExerciseError, match="must be a dict"):
        L.check_reading(None, learned, hyperopt)
