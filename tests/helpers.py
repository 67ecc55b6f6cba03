"""Shared by several test files (pytest puts tests/ on sys.path)."""
import contextlib

import jax
import numpy as np
import pytest

from minilopt.checks import ExerciseError


def blank(*args, **kwargs):
    """An exercise left as generated: the blanked cell raises."""
    raise NotImplementedError("Exercise: fill me in")


def assert_blank_answers_fail(check):
    """A checker must fail usefully on an unanswered exercise and on a `None` answer."""
    with pytest.raises(ExerciseError, match="(?s)not answered yet.*hint"):
        check(blank)
    with pytest.raises(ExerciseError, match="(?s)expected.*got.*None.*hint"):
        check(lambda *args, **kwargs: None)


@contextlib.contextmanager
def float64():
    """Run the block with 64-bit floats (the API moved between jax versions)."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(True):
            yield
    else:
        from jax.experimental import enable_x64
        with enable_x64():
            yield


def fixture_theta(path):
    """A VeLO fixture's theta.npz → nested dict, splitting `theta/<top>/<module…>/<name>`
    as the fixture README says (the module may itself contain '/')."""
    theta = {}
    with np.load(path) as f:
        for key in f.files:
            parts = key.split("/")[1:]
            node = theta.setdefault(parts[0], {})
            if len(parts) > 2:
                node = node.setdefault("/".join(parts[1:-1]), {})
            node[parts[-1]] = f[key]
    return theta
