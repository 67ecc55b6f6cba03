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


def test_a_task_names_the_stub_and_the_hints_fold_below_the_cell_in_order():
    src = ("def f(x):\n"
           "    ### BEGIN SOLUTION\n"
           "    ### TASK: return the square of x\n"
           "    ### HINT: a number times itself\n"
           "    ### HINT: one multiplication of two names\n"
           "    return x * x\n"
           "    ### END SOLUTION\n")
    nb = {"cells": [{"cell_type": "code", "id": "c1", "source": src, "outputs": [], "execution_count": 1,
                     "metadata": {}}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    code, hints = exercises.make_exercise(nb)["cells"]
    stub = "".join(code["source"])
    assert "Exercise: return the square of x" in stub and "x * x" not in stub
    assert "a number times itself" not in stub  # the hints are not in the stub's message
    text = "".join(hints["source"])
    assert hints["cell_type"] == "markdown" and hints["id"] == "c1-hints"
    first, second = text.index("a number times itself"), text.index("one multiplication")
    assert first < second and text.count("<details>") == 2 and "x * x" not in text


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
