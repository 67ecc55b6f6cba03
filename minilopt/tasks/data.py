"""Offline datasets, loaded once per process and kept on the device.

Nothing is downloaded. Each loader is deterministic, so every run sees the same
train/test split.

| name      | source                                              | licence        |
|-----------|-----------------------------------------------------|----------------|
| `digits`  | scikit-learn's bundled 8×8 UCI digits (1797 images) | BSD-3 (sklearn), UCI CC BY 4.0 |
| `mnist1d` | generated locally by the `mnist1d` package (Greydanus 2020), default arguments, seed 42 | Apache-2.0 |
| `text`    | the dataset descriptions (`datasets/descr/*.rst`) that ship inside scikit-learn, ~43 kB of English | BSD-3 |
| `breast_cancer` | scikit-learn's bundled Wisconsin breast-cancer table: 569 rows × 30 features, 2 classes | BSD-3 (sklearn), UCI CC BY 4.0 |
| `wine`    | scikit-learn's bundled wine table: 178 rows × 13 chemical measurements, 3 cultivars | BSD-3 (sklearn), UCI CC BY 4.0 |

Tabular features are standardised with the training split's mean and std, so no
statistic of the test rows leaks into training.
"""
from __future__ import annotations

import functools
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# The character LM's fixed vocabulary: newline plus printable ASCII. Fixed, not read
# off the corpus, so task shapes never change with the scikit-learn version.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = VOCAB.index("?")


class Dataset(NamedTuple):
    """Device arrays. For `text`, x_* are int32 character ids and y_* are empty."""
    x_train: jnp.ndarray
    y_train: jnp.ndarray
    x_test: jnp.ndarray
    y_test: jnp.ndarray
    num_classes: int


def _split(x, y, test_fraction, seed=0):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)  # pixels are 0..16
    return _split(x, d.target.astype(np.int32), test_fraction=0.2) + (10,)


def _mnist1d():
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # the generator; the package's downloader is never called
    mean, std = d["x"].mean(), d["x"].std()
    norm = lambda x: ((x - mean) / std).astype(np.float32)
    return norm(d["x"]), d["y"].astype(np.int32), norm(d["x_test"]), d["y_test"].astype(np.int32), 10


def corpus_text() -> str:
    """The character LM's corpus: scikit-learn's dataset descriptions, in file order."""
    import sklearn

    folder = pathlib.Path(sklearn.__file__).parent / "datasets" / "descr"
    files = sorted(folder.glob("*.rst"))
    if not files:
        raise RuntimeError(f"no corpus files found in {folder}; is scikit-learn installed completely?")
    return "".join(f.read_text(encoding="utf-8") for f in files)


def encode(text: str) -> np.ndarray:
    """Character ids in VOCAB; characters outside it become '?'."""
    lookup = {c: i for i, c in enumerate(VOCAB)}
    return np.array([lookup.get(c, UNKNOWN) for c in text], dtype=np.int32)


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in np.asarray(ids).ravel())


def _text():
    ids = encode(corpus_text())
    cut = int(len(ids) * 0.9)  # contiguous split: the test text is unseen prose
    empty = np.zeros((0,), np.int32)
    return ids[:cut], empty, ids[cut:], empty, len(VOCAB)


def _standardised_table(loader_name: str):
    import sklearn.datasets

    d = getattr(sklearn.datasets, loader_name)()
    x_tr, y_tr, x_te, y_te = _split(d.data.astype(np.float32), d.target.astype(np.int32), test_fraction=0.2)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    norm = lambda x: ((x - mean) / std).astype(np.float32)
    return norm(x_tr), y_tr, norm(x_te), y_te, len(d.target_names)


LOADERS = {"digits": _digits, "mnist1d": _mnist1d, "text": _text,
           "breast_cancer": lambda: _standardised_table("load_breast_cancer"),
           "wine": lambda: _standardised_table("load_wine")}


@functools.lru_cache(maxsize=None)
def load(name: str) -> Dataset:
    """The dataset called `name`, as device arrays (cached: loaded once per process)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    x_tr, y_tr, x_te, y_te, k = LOADERS[name]()
    # The first call may happen while a task is being traced; the cache must hold
    # concrete device arrays, never that trace's tracers.
    with jax.ensure_compile_time_eval():
        return Dataset(jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te), k)
