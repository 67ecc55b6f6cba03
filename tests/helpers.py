"""Shared by several test files (pytest puts tests/ on sys.path)."""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

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


POISON = [None, np.inf, -np.inf, np.nan, 1e30, -1e30]   # what a gradient leaf may hold once


@st.composite
def poisoned_trees(draw):
    """(params, grads): a dict of 1-3 leaves of rank 0-4 (tiny dims), float32 or bfloat16,
    with matching gradients that may hold one inf, NaN or ±1e30."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    params, grads = {}, {}
    for i in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=4)))
        dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
        g = rng.normal(size=shape)
        poison = draw(st.sampled_from(POISON))
        if poison is not None:
            g.reshape(-1)[rng.integers(g.size)] = poison
        params[f"leaf{i}"] = jnp.asarray(rng.normal(size=shape), dtype)
        grads[f"leaf{i}"] = jnp.asarray(g, dtype)
    return params, grads
