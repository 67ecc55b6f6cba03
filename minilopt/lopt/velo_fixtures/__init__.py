"""Small reference fixtures of VeLO, shipped with the package for the lessons.

`small_32x16/` holds a VeLO with H = 32 and P = 16 and RANDOM weights (a random init
plus noise, so that every weight matters), in the released msgpack byte format
(`params`, read by `checkpoint.load_velo`), and five updates of the reference
implementation (`HyperV2` of google/learned_optimization, CPU, float32) on a small
tree with a conv kernel, a vector, a matrix, a scalar and a square matrix
(`trajectory.npz`: `params_init/<leaf>`, `grads/step{t}/<leaf>`, `loss/step{t}`,
`params_after/step{t}/<leaf>`, with num_steps = 20).

    theta, H, P = checkpoint.load_velo(velo_fixtures.path("small_32x16") / "params")
"""
from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
NAMES = ("small_32x16",)


def path(name: str = "small_32x16") -> pathlib.Path:
    """The folder of the fixture `name`; a ValueError lists the names, a missing
    folder is a FileNotFoundError that says how to restore it."""
    if name not in NAMES:
        raise ValueError(f"no VeLO fixture is called {name!r}; the fixtures are {list(NAMES)}")
    folder = ROOT / name
    if not folder.is_dir():
        raise FileNotFoundError(f"the VeLO fixture {folder} is missing; restore it with "
                                "`git checkout minilopt/lopt/velo_fixtures` or reinstall minilopt")
    return folder
