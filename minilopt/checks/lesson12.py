"""Checkers for the capstone: meta-train, evaluate on held-out tasks, read the numbers.

The capstone's answers are runs, not formulas, so these check properties: the
meta-loss went down, the suite holds held-out draws of the learner's family, the
evaluation covers that suite and agrees with its own measure, and the reading
matches the results."""
from __future__ import annotations

import numpy as np

from . import fail


def _speedups(results) -> np.ndarray:
    return np.array([float(task["speedup"]) for task in results["tasks"]])


def check_meta_training(result, steps: int):
    """result: what `meta_train` returned, after `steps` outer steps."""
    hint = ("run meta_train for the number of outer steps you chose, from theta0, and keep what it returns; "
            "if the meta-loss does not go down, try a larger meta learning rate or more steps")
    history = getattr(result, "history", None)
    if history is None or "meta_loss" not in history:
        fail("check_meta_training needs the result of meta_train", "a MetaTrainResult", result, hint)
    if result.step != steps:
        fail("meta_train ran a different number of outer steps", steps, result.step, hint)
    loss = np.asarray(history["meta_loss"], np.float64)
    if not np.all(np.isfinite(loss)):
        fail("the meta-loss went non-finite", "finite values", loss, hint)
    quarter = max(1, len(loss) // 4)
    first, last = loss[:quarter].mean(), loss[-quarter:].mean()
    if not last < first:
        fail("the meta-loss did not go down (mean of the last quarter of outer steps against the first)",
             f"below {first:.4g}", last, hint)
    print(f"meta-training: meta-loss {first:.3f} -> {last:.3f} (first and last quarter of {steps} outer steps)")


def check_heldout_suite(suite, family, steps: int):
    """suite: a list of `evaluate.SuiteTask`; its in-family tasks must be held-out draws of `family`."""
    hint = ("build it with evaluate.suite(steps, quick=True, in_family=(family,)): the in-family tasks are then "
            "held-out draws of your family, never the tasks it was meta-trained on")
    if not suite:
        fail("the suite is empty", "a list of evaluate.SuiteTask", suite, hint)
    budgets = sorted({entry.steps for entry in suite})
    if budgets != [steps]:
        fail("every task must run for the horizon the optimizer was meta-trained for", [steps], budgets, hint)
    mine = [e.name for e in suite if e.group == "in-family"]
    if not any(name.startswith(f"heldout/{family.name}") for name in mine):
        fail(f"no in-family task is a held-out draw of your family {family.name!r}",
             f"a name starting with heldout/{family.name}", mine, hint)
    if not all(name.startswith("heldout/") for name in mine):
        fail("an in-family task is not a held-out draw", "names starting with heldout/", mine, hint)
    print(f"suite: {len(suite)} tasks, {len(mine)} in-family (held-out draws), {len(suite) - len(mine)} out-of-family")


def check_evaluation(results, suite):
    """results: what `evaluate.evaluate` returned for `suite`; checked for coverage and consistency."""
    hint = ("pass evaluate the suite you built and a factory num_steps -> optimizer, and keep its results "
            "as they are")
    if not isinstance(results, dict) or "tasks" not in results:
        fail("check_evaluation needs the dict evaluate() returns", "a dict with 'tasks' and 'summary'", results, hint)
    names = [task["name"] for task in results["tasks"]]
    if names != [entry.name for entry in suite]:
        fail("the results do not cover the suite you built", [e.name for e in suite], names, hint)
    for task, entry in zip(results["tasks"], suite):
        if task["group"] != entry.group:
            fail(f"{entry.name}: group", entry.group, task["group"], hint)
        s, mine, adam = float(task["speedup"]), task["lopt"]["final_train"], task["adam"]["final_train"]
        if not (s == 0 or 0.1 - 1e-9 <= s <= 10 + 1e-9):
            fail(f"{entry.name}: a speedup outside the measure's range [0.1, 10] (0 for a divergence)",
                 "0 or a value in [0.1, 10]", s, hint)
        # The measure: a speedup of at least 1 exactly when the optimizer ends at or below tuned Adam.
        if s > 0 and mine is not None and adam is not None and np.isfinite(adam) and (s >= 1) != (mine <= adam):
            fail(f"{entry.name}: the speedup disagrees with the final losses (learned {mine:.4g}, tuned Adam "
                 f"{adam:.4g})", ">= 1 exactly when the learned loss is lower", s, hint)
    s = _speedups(results)
    overall = results["summary"]["all"]
    if not (np.isclose(overall["faster_than_1x"], np.mean(s > 1)) and np.isclose(overall["median"], np.median(s))):
        fail("the summary disagrees with the per-task speedups",
             {"faster_than_1x": float(np.mean(s > 1)), "median": float(np.median(s))},
             {k: overall[k] for k in ("faster_than_1x", "median")}, hint)
    print(f"{results['optimizer']}: {len(s)} tasks, faster than tuned Adam on {int(np.sum(s > 1))}, "
          f"median speedup {np.median(s):.2f}x")


def check_reading(reading, learned, hyperopt):
    """reading: {"learned_faster_on", "hyper_faster_on", "learned_median", "hyper_median", "better"}."""
    hint = ("read both results: count the tasks whose speedup over tuned Adam is above 1, take the median "
            "speedup, and name as better the optimizer with the larger median")
    want = {"learned_faster_on": int(np.sum(_speedups(learned) > 1)),
            "hyper_faster_on": int(np.sum(_speedups(hyperopt) > 1)),
            "learned_median": float(np.median(_speedups(learned))),
            "hyper_median": float(np.median(_speedups(hyperopt)))}
    want["better"] = "learned" if want["learned_median"] > want["hyper_median"] else "hyper"
    if not isinstance(reading, dict) or set(reading) != set(want):
        fail("reading must be a dict with these keys", sorted(want), reading, hint)
    for key, value in want.items():
        got = reading[key]
        same = got == value if isinstance(value, (int, str)) else np.isclose(float(got), value, rtol=1e-6)
        if not same:
            fail(f"reading[{key!r}]", value, got, hint)
    print(f"reading: learned faster than tuned Adam on {want['learned_faster_on']} tasks (median "
          f"{want['learned_median']:.2f}x), Adam/SGD on {want['hyper_faster_on']} (median {want['hyper_median']:.2f}x)")
