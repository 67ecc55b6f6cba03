"""Every loader against crafted and damaged files: random bytes, truncations, byte flips,
crafted keys and indices, wrong dtypes and byte orders.

The property, for each loader and each damaged file: either the damaged file still
decodes to exactly what was written (a flip inside padding, say), or the loader raises
a ValueError whose message names the file; never another exception type, and never
more than a bounded time and memory (checked with the process's peak RSS).
"""
import io
import json
import resource
import struct
import time
import zipfile

import jax
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilopt.lopt import checkpoint, velo
from minilopt.lopt.mlp import MLPLOpt
from minilopt.meta import trainer

from minilopt.lopt import pretrained  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SECONDS = 2.0             # a damaged file of a few kB must be refused at once
RSS_GROWTH = 200 << 20    # and must not make the process allocate more than this

THETA = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.ones(4, np.float32), np.zeros((), np.float32)]}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def refused_or_intact(load, path_or_bytes, name, intact):
    """Run `load`; it must either return what `intact` accepts or raise a ValueError naming `name`."""
    rss, t0 = _peak_rss(), time.perf_counter()
    try:
        result = load(path_or_bytes)
    except ValueError as e:
        assert name in str(e), f"the message does not name the file {name!r}: {e}"
    else:
        assert intact(result), "a damaged file was accepted with other contents"
    assert time.perf_counter() - t0 < SECONDS
    assert _peak_rss() - rss < RSS_GROWTH


def same_tree(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb)))


def npz_bytes(arrays: dict) -> bytes:
    f = io.BytesIO()
    np.savez(f, **arrays)
    return f.getvalue()


def theta_arrays():
    """THETA's entries as `checkpoint.save` names them: each leaf's tree path as JSON."""
    return {'["a"]': THETA["a"], '["b", 0]': THETA["b"][0], '["b", 1]': THETA["b"][1]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    checkpoint.save(folder / "theta.npz", THETA)
    trainer.save_checkpoint(folder / "ckpt.npz", {"theta": {"x": np.ones(3, np.float32)}, "step": np.int64(2)},
                            {"lr": 0.1})
    return {"theta": (folder / "theta.npz").read_bytes(), "ckpt": (folder / "ckpt.npz").read_bytes(),
            "velo": checkpoint.save_velo(jax.tree.map(np.asarray, velo.init_theta(jax.random.PRNGKey(0), 4, 3)))}


def _loaders():
    def theta_like(p):
        return checkpoint.load(p, like=THETA)

    def ckpt(p):
        return trainer.read_checkpoint(p)

    def ckpt_intact(result):
        arrays, config = result
        return config == {"lr": 0.1} and np.array_equal(arrays["['theta']['x']"], np.ones(3))

    return {"theta": (checkpoint.load, lambda r: same_tree(r, THETA)),
            "theta_like": (theta_like, lambda r: same_tree(r, THETA)),
            "ckpt": (ckpt, ckpt_intact)}


NPZ_LOADERS = ["theta", "theta_like", "ckpt"]


def _write(tmp_path, data: bytes, name="damaged.npz"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("which", NPZ_LOADERS)
@SETTINGS
@given(data=st.binary(max_size=600))
def test_random_bytes_are_refused(tmp_path, which, data):
    load, intact = _loaders()[which]
    refused_or_intact(load, _write(tmp_path, data), "damaged.npz", intact)


@pytest.mark.parametrize("which", NPZ_LOADERS)
@SETTINGS
@given(cut=st.floats(0.0, 1.0, exclude_max=True), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                           st.integers(1, 255)), max_size=4))
def test_truncations_and_byte_flips(tmp_path, files, which, cut, flips):
    load, intact = _loaders()[which]
    good = files["ckpt" if which == "ckpt" else "theta"]
    data = bytearray(good)
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    if not flips:
        data = data[:int(cut * len(data))]
    refused_or_intact(load, _write(tmp_path, bytes(data)), "damaged.npz", intact)


@pytest.mark.parametrize("key", ["[200000000]", '["a", 200000000]', "[0, 3]", '["a", -1]', "[true]", "[1.5]",
                                 "[]", "{}", "not json", "[" * 5000, '"a"', str(["x"] * 100).replace("'", '"')])
def test_crafted_keys_and_indices(tmp_path, key):
    """The 280-byte index bomb of the issue, and keys that are not tree paths."""
    path = _write(tmp_path, npz_bytes({key: np.zeros(1, np.float32)}))
    refused_or_intact(checkpoint.load, path, "damaged.npz", lambda r: False)
    refused_or_intact(lambda p: checkpoint.load(p, like=THETA), path, "damaged.npz", lambda r: False)


def test_a_path_that_is_both_leaf_and_node(tmp_path):
    path = _write(tmp_path, npz_bytes({'["a"]': np.zeros(1), '["a", "b"]': np.zeros(1)}))
    with pytest.raises(ValueError, match="damaged.npz.*both a leaf and a node"):
        checkpoint.load(path)


def test_index_bomb_through_pretrained(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "theta.npz").write_bytes(npz_bytes({"[200000000]": np.zeros(1)}))
    config = json.loads((pretrained.DEFAULT_DIR / "config.json").read_text())
    config.pop("sha256", None)
    (folder / "config.json").write_text(json.dumps(config))
    pretrained.load()  # the shipped weights first: JAX's one-off start-up is not the file's work
    refused_or_intact(lambda p: pretrained.pretrained(100, path=p), folder, "theta.npz", lambda r: False)


@pytest.mark.parametrize("dtype", ["int64", ">f4", "<f8", "bool", "complex64", "U3", "S3", "V4"])
def test_wrong_dtypes_and_byte_orders(tmp_path, dtype):
    """Against `like`, only floats are accepted for float leaves, in the writer's values
    (a big-endian file is read as big-endian, never reinterpreted)."""
    arrays = theta_arrays()
    arrays['["a"]'] = np.arange(6).reshape(2, 3).astype(dtype)
    path = _write(tmp_path, npz_bytes(arrays))
    if np.dtype(dtype).kind == "f":
        back = checkpoint.load(path, like=THETA)
        np.testing.assert_array_equal(back["a"], THETA["a"])
        assert back["a"].dtype == np.float32
    else:
        with pytest.raises(ValueError, match="damaged.npz"):
            checkpoint.load(path, like=THETA)


def test_a_header_promising_more_than_the_file_holds(tmp_path, files):
    """A .npy header declaring a huge shape over a few bytes of data: refused from the header."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    member.write(b"\0" * 16)
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr('["a"].npy', member.getvalue())
    path = _write(tmp_path, f.getvalue())
    for load, _ in _loaders().values():
        refused_or_intact(load, path, "damaged.npz", lambda r: False)


def test_a_zip_bomb_is_refused_before_inflating(tmp_path):
    """Deflated entries of a few kB that declare almost 8 GiB: refused from the archive's directory."""
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ('["a"].npy', '["b"].npy'):
            zf.writestr(name, b"\0" * (1 << 20))
    data = bytearray(f.getvalue())
    start = 0
    for _ in range(2):  # patch each uncompressed size in the central directory to 0xFFFFFFF0
        start = data.index(b"PK\x01\x02", start)
        data[start + 24:start + 28] = struct.pack("<I", 0xFFFFFFF0)
        start += 4
    for load, _ in _loaders().values():
        refused_or_intact(load, _write(tmp_path, bytes(data)), "damaged.npz", lambda r: False)


def test_a_newer_format_version_is_refused(tmp_path):
    arrays = {**theta_arrays(), checkpoint.FORMAT_KEY: np.int64(checkpoint.FORMAT_VERSION + 1)}
    with pytest.raises(ValueError, match="damaged.npz.*upgrade minilopt"):
        checkpoint.load(_write(tmp_path, npz_bytes(arrays)))


def test_old_files_without_a_format_version_still_load(tmp_path):
    back = checkpoint.load(_write(tmp_path, npz_bytes(theta_arrays()), "old.npz"), like=THETA)
    assert same_tree(back, THETA)
    old = pretrained.weights_dir("mlp")      # written before checkpoints had a format version
    shipped = checkpoint.load(old / "theta.npz",
                              like=MLPLOpt(**json.loads((old / "config.json").read_text())
                                           ["kwargs"]).init(jax.random.PRNGKey(0)))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(shipped))


@pytest.mark.parametrize("config", [None, "[1, 2]", '"text"', "{not json", "[" * 5000])
def test_meta_checkpoint_without_a_readable_config(tmp_path, config):
    arrays = {"['theta']['x']": np.ones(3, np.float32)}
    if config is not None:
        arrays["__config__"] = np.array(config)
    path = _write(tmp_path, npz_bytes(arrays))
    with pytest.raises(ValueError, match="damaged.npz"):
        trainer.read_checkpoint(path)


def test_empty_and_pickled_files_are_refused(tmp_path):
    for data in (b"", npz_bytes({"x": np.array([{"a": 1}], dtype=object)})):
        for load, _ in _loaders().values():
            with pytest.raises(ValueError, match="damaged.npz"):
                load(_write(tmp_path, data))


# ---------------------------------------------------------------------------
# The released VeLO msgpack format
# ---------------------------------------------------------------------------
@SETTINGS
@given(cut=st.floats(0.0, 1.0, exclude_max=True), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                           st.integers(1, 255)), max_size=4))
def test_velo_truncations_and_byte_flips(files, cut, flips):
    data = bytearray(files["velo"])
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    if not flips:
        data = data[:int(cut * len(data))]

    def intact(result):
        theta, _, _ = result
        return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(theta))  # flips in a float are still floats
    refused_or_intact(checkpoint.load_velo, bytes(data), "<bytes>", intact)


@pytest.mark.parametrize("dtype,shape,nbytes", [(">f4", [2], 8), ("float32", [1 << 40], 8), ("float32", [-1], 8),
                                                ("object", [1], 8), ("float32", [3], 8), ("U2", [1], 8)])
def test_velo_array_entries_are_checked(dtype, shape, nbytes):
    """A big-endian array is refused (it was once read as little-endian), as is any
    shape that does not match the bytes."""
    payload = msgpack.packb([shape, dtype, b"\0" * nbytes])
    data = msgpack.packb({"params": {"lstm_init_state": msgpack.ExtType(1, payload)}})
    with pytest.raises(ValueError, match="<bytes>"):
        checkpoint.load_velo(data)
