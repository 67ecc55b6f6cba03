"""Exercise checkers, one module per lesson.

Every checker compares a learner's answer with the reference on several cases and
raises an AssertionError that says what was expected, what came back, and a hint.
"""
from __future__ import annotations

import numpy as np


class ExerciseError(AssertionError):
    """A wrong answer to an exercise: the message holds expected, got, and a hint."""


def _describe(x) -> str:
    if x is None:
        return "None (did you forget to return the value?)"
    arr = np.asarray(x)
    if arr.ndim == 0:
        return repr(arr.item())
    with np.printoptions(precision=5, threshold=8, edgeitems=3):
        return f"array{arr.shape} {arr}"


def fail(what: str, expected, got, hint: str):
    """Raise an ExerciseError in the shared format."""
    raise ExerciseError(
        f"{what}\n  expected: {_describe(expected)}\n  got:      {_describe(got)}\n  hint: {hint}"
    )


def expect_close(what: str, expected, got, hint: str, rtol=1e-5, atol=1e-6):
    """Fail unless `got` has `expected`'s shape and is close to it elementwise."""
    if got is None:
        fail(what, expected, got, hint)
    try:
        got_arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        fail(what, expected, got, "return an array or a number. " + hint)
    exp_arr = np.asarray(expected, dtype=np.float64)
    if got_arr.shape != exp_arr.shape:
        fail(f"{what}: shape {got_arr.shape}, expected {exp_arr.shape}", expected, got, hint)
    if not np.allclose(got_arr, exp_arr, rtol=rtol, atol=atol, equal_nan=False):
        fail(what, expected, got, hint)


def call(fn, *args, what: str, hint: str):
    """Call a learner's function; a NotImplementedError becomes a useful failure.

    An unanswered exercise gets no answer hint: the hints escalate (the folded ones under
    the cell first), and `hint` is kept for an attempt that comes back wrong."""
    try:
        return fn(*args)
    except NotImplementedError as e:
        raise ExerciseError(f"{what}: the exercise is not answered yet ({e}). hint: replace the raise with "
                            "your code; if stuck, open the folded hints under the cell, one at a time") from None
