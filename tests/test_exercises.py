"""The exercise pipeline: blanking rules, and exercises/ in sync with solutions/."""
import pytest

from minilopt import exercises


def test_blank_source_replaces_the_block_with_a_hinted_error():
    src = ("def f(x):\n"
           "    ### BEGIN SOLUTION\n"
           "    ### HINT: square it\n"
           "    return x * x\n"
           "    ### END SOLUTION\n"
           "check(f)\n")
    out = exercises.blank_source(src)
    assert out == "def f(x):\n    raise NotImplementedError('Exercise: square it')\ncheck(f)\n"
    namespace = {}
    exec(out.replace("check(f)\n", ""), namespace)
    with pytest.raises(NotImplementedError, match="square it"):
        namespace["f"](2)


@pytest.mark.parametrize("src, message", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n", "nested"),
])
def test_unbalanced_markers_are_refused(src, message):
    with pytest.raises(ValueError, match=message):
        exercises.blank_source(src)


def test_make_exercise_drops_outputs():
    nb = {"cells": [{"cell_type": "code", "source": ["### BEGIN SOLUTION\n", "y = 2\n", "### END SOLUTION\n"],
                     "outputs": [{"output_type": "stream", "text": "hi"}], "execution_count": 3, "metadata": {}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cell = exercises.make_exercise(nb)["cells"][0]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert "NotImplementedError" in "".join(cell["source"])


def test_every_solution_has_an_exercise_and_regenerating_changes_nothing():
    assert exercises.stale() == [], "run: python -m minilopt.exercises"
