"""The VeLO fixture shipped inside the package for lesson 05."""
import pathlib

import numpy as np
import pytest

from minilopt.lopt import checkpoint, velo_fixtures

TESTS_COPY = pathlib.Path(__file__).parent / "data" / "velo" / "small_32x16"


def test_shipped_fixture_is_the_reference_data():
    folder = velo_fixtures.path("small_32x16")
    for name in ("params", "trajectory.npz"):
        assert (folder / name).read_bytes() == (TESTS_COPY / name).read_bytes(), name


def test_shipped_fixture_loads_as_a_32x16_velo_with_five_updates():
    folder = velo_fixtures.path()
    theta, hidden, mixtures = checkpoint.load_velo(folder / "params")
    assert (hidden, mixtures) == (32, 16)
    with np.load(folder / "trajectory.npz") as ref:
        assert {f"loss/step{t}" for t in range(5)} <= set(ref.files)


def test_unknown_fixture_lists_the_names():
    with pytest.raises(ValueError, match=r"no VeLO fixture is called 'big'.*small_32x16"):
        velo_fixtures.path("big")
