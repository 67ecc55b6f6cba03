"""Save and load meta-parameters; import the released VeLO weights.

Our own format is a plain `.npz`: one array per leaf, keyed by the leaf's tree path
written as JSON (`["rnn_params", "rnn/linear", "w"]`), so a key that itself holds a
`/` stays unambiguous and any numpy user can read the file. `write_npz` and
`read_npz` are the one writer and reader of every .npz minilopt keeps (θ here,
meta-training checkpoints in `minilopt.meta.trainer`): atomic and fsynced on the way
out, with a format version; on the way in, every entry's name, header, dtype and size
is checked before anything is allocated, so a crafted file costs bounded work.

`load_velo` reads the released VeLO `params` file: the flax msgpack serialisation of
`{"params": theta, "gen_id": "", "step": 0}` (or, in older files, the tuple layout
`{"0": theta, "1": "", "2": 0}`). Every array is a msgpack extension of type 1 whose
payload is itself msgpack `[shape, dtype name, raw little-endian bytes]`.
"""
from __future__ import annotations

import glob
import json
import math
import os
import pathlib
import sys
import tempfile
import zipfile

import jax
import numpy as np

from .velo import check_theta

_ARRAY_EXT_TYPES = (1, 3)  # flax: 1 = ndarray, 3 = numpy scalar; same payload


# ---------------------------------------------------------------------------
# One writer and one reader for every .npz minilopt keeps
# ---------------------------------------------------------------------------
FORMAT_KEY = "__format__"   # the file format's version; files without it are version 1
FORMAT_VERSION = 2
FILE_MODE = 0o644           # readable by the group and others, like any saved result
MAX_BYTES = 1 << 32         # the most array data a file may make us allocate (4 GiB)
_DTYPE_KINDS = "biufcU"     # bool, int, uint, float, complex, and text (the run's config)


def atomic_write(path, write) -> pathlib.Path:
    """Call `write(f)` on a temporary file next to `path`, fsync it, give it mode
    0644, then rename it over `path`. A crash or a kill leaves either the old file or
    the new one, never half of one; a leftover `NAME.*.tmp` is litter that
    `clean_temporaries` removes."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(dir_fd)
    return path


def clean_temporaries(folder, name: str) -> list[pathlib.Path]:
    """Remove the `name.*.tmp` files that `atomic_write` leaves when killed mid-write."""
    removed = []
    for tmp in pathlib.Path(folder).glob(glob.escape(name) + ".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_npz(path, arrays: dict) -> pathlib.Path:
    """`arrays` (name -> array) as an uncompressed .npz at `path`, atomically, with
    the format version under `FORMAT_KEY`."""
    arrays = {**{k: np.asarray(v) for k, v in arrays.items()}, FORMAT_KEY: np.int64(FORMAT_VERSION)}
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_member(zf, info, name, budget):
    """One array of the archive, its npy header checked before anything is allocated."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"entry {name!r} has npy format version {version}; expected 1.0 or 2.0")
        if dtype.kind not in _DTYPE_KINDS or dtype.hasobject or dtype.fields is not None:
            raise ValueError(f"entry {name!r} has dtype {dtype}; only numbers (and the config text) are stored")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise ValueError(f"entry {name!r}: its header promises {nbytes} bytes of {dtype} {shape} but it holds "
                             f"{info.file_size - f.tell()} (a truncated or altered file)")
        if nbytes > budget:
            raise ValueError(f"entry {name!r} would need {nbytes} bytes, more than the {MAX_BYTES} a file may use")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"entry {name!r} is truncated")
    array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="))  # native byte order, a fresh writable copy


def read_npz(path, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """The arrays of a .npz (name -> array, `FORMAT_KEY` removed), read without numpy's
    pickle path. Every entry's name, npy header, dtype and size is checked before its
    data is read, and all of them together may allocate at most `max_bytes`. Anything
    else is a ValueError that names the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename[:-4] if i.filename.endswith(".npy") else None for i in infos]
            if None in names or len(set(names)) != len(names):
                raise ValueError("its entries are not one .npy file per array")
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise ValueError(f"it declares {declared} bytes of arrays, more than the {max_bytes} a file may use")
            arrays, budget = {}, max_bytes
            for info, name in zip(infos, names):
                arrays[name] = _read_member(zf, info, name, budget)
                budget -= arrays[name].nbytes
    except ValueError as e:
        raise ValueError(f"{path} is not a valid minilopt .npz file: {e}") from None
    except Exception as e:  # zipfile, zlib and OS errors of several types on corrupt data
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); "
                         "it is corrupt or not a checkpoint: restore it or write it again") from None
    version = arrays.pop(FORMAT_KEY, np.int64(1))
    if version.shape != () or version.dtype.kind not in "iu" or not 1 <= int(version) <= FORMAT_VERSION:
        raise ValueError(f"{path}: format version {version!r}; this minilopt reads versions 1 to {FORMAT_VERSION} "
                         "(a newer minilopt wrote it: upgrade minilopt)")
    return arrays


# ---------------------------------------------------------------------------
# Our θ format: .npz with JSON tree paths
# ---------------------------------------------------------------------------
def _key_part(k):
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return int(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return str(k.name)
    raise ValueError(f"cannot save a tree with path element {k!r}")


def save(path, theta) -> None:
    """Write `theta` (nested dicts/lists of arrays) to `path` as .npz, atomically
    (see `atomic_write`), so a crash never leaves half a checkpoint."""
    arrays = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        arrays[json.dumps([_key_part(k) for k in p])] = np.asarray(leaf)
    write_npz(path, arrays)


def _tree_path(name, path):
    """The JSON tree path of a key: a non-empty list of str and non-negative int."""
    try:
        keys = json.loads(name)
    except (json.JSONDecodeError, RecursionError):
        keys = None
    if (not isinstance(keys, list) or not 0 < len(keys) <= 64
            or not all(isinstance(k, str) or (type(k) is int and k >= 0) for k in keys)):
        raise ValueError(f"{path}: key {name!r} is not a minilopt tree path (a JSON list of names and indices)")
    return keys


def _build(items, path, where=()):
    """Nested dicts/lists from (keys, value) pairs. A list node's indices must be
    exactly 0..n-1, checked before any list is made: a key cannot make us allocate."""
    if len(items) == 1 and not items[0][0]:
        return items[0][1]
    if any(not keys for keys, _ in items):
        raise ValueError(f"{path}: tree path {list(where)} is both a leaf and a node")
    groups: dict = {}
    for keys, value in items:
        groups.setdefault(keys[0], []).append((keys[1:], value))
    kinds = {type(k) for k in groups}
    if len(kinds) > 1:
        raise ValueError(f"{path}: tree path {list(where)} mixes list indices and dict names")
    if kinds == {int}:
        if sorted(groups) != list(range(len(groups))):
            raise ValueError(f"{path}: the list at tree path {list(where)} has indices {sorted(groups)[:8]}..., "
                             f"expected 0..{len(groups) - 1}")
        return [_build(groups[i], path, where + (i,)) for i in range(len(groups))]
    return {k: _build(v, path, where + (k,)) for k, v in groups.items()}


def load(path, like=None):
    """Read a checkpoint written by `save`: nested dicts/lists of numpy arrays.

    With `like` (a tree of the expected structure, e.g. `velo.init(key)`), the result
    has exactly `like`'s structure and dtypes; a missing/extra key, a shape mismatch, a
    leaf of another kind (int where float is expected) or a non-finite value is a
    ValueError that names the key. Without `like`, list indices must run 0..n-1.
    """
    expected = None
    if like is not None:
        flat = jax.tree_util.tree_flatten_with_path(like)[0]
        expected = {json.dumps([_key_part(k) for k in p]): v for p, v in flat}
        # cap the work at what `like` needs: a file cannot ask for more
        budget = sum(np.size(v) * np.dtype(getattr(v, "dtype", np.float64)).itemsize for v in expected.values())
        arrays = read_npz(path, max_bytes=max(4 * budget, 1 << 16))
    else:
        arrays = read_npz(path)
    if expected is None:
        if not arrays:
            raise ValueError(f"{path}: the checkpoint holds no arrays")
        return _build([(_tree_path(name, path), value) for name, value in arrays.items()], path)
    missing, extra = set(expected) - set(arrays), set(arrays) - set(expected)
    if missing or extra:
        raise ValueError(f"checkpoint {path} does not match: missing keys {sorted(missing)[:8]}, "
                         f"unexpected keys {sorted(extra)[:8]}")
    leaves = []
    for name, want in expected.items():
        value, dtype = arrays[name], np.dtype(getattr(want, "dtype", np.asarray(want).dtype))
        if value.shape != np.shape(want):
            raise ValueError(f"checkpoint {path}, key {name}: shape {value.shape}, expected {np.shape(want)}")
        if value.dtype.kind != dtype.kind:
            raise ValueError(f"checkpoint {path}, key {name}: dtype {value.dtype}, expected {dtype}")
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise ValueError(f"checkpoint {path}, key {name} holds NaN or inf: the file is corrupt or was "
                             "saved from a diverged run")
        leaves.append(value.astype(dtype, copy=False))
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


# ---------------------------------------------------------------------------
# The released VeLO `params` file
# ---------------------------------------------------------------------------
def _decode_array(code, payload):
    """One msgpack array: its shape, dtype and byte count checked before it is read."""
    import msgpack

    if code not in _ARRAY_EXT_TYPES:
        raise ValueError(f"unsupported msgpack extension type {code} (only arrays are expected)")
    try:
        shape, dtype, buf = msgpack.unpackb(payload, raw=False)
        dtype = np.dtype(dtype)
    except Exception as e:
        raise ValueError(f"malformed array entry ({type(e).__name__}: {e})") from None
    if (not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(buf, bytes)):
        raise ValueError(f"malformed array entry: shape {shape!r}")
    if dtype.kind not in "biuf" or dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
        raise ValueError(f"array of dtype {dtype.str!r}: the format stores little-endian numbers only")
    if len(buf) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"array of shape {shape} and dtype {dtype} holds {len(buf)} bytes (truncated or altered)")
    return np.frombuffer(buf, dtype=dtype.newbyteorder("<")).reshape(shape).copy()


def _as_lstm_state(node, where="lstm_init_state"):
    """Accept `{hidden, cell}` or flax's namedtuple encoding
    `{name, fields: {"0": "hidden", ...}, values: {"0": array, ...}}`."""
    if isinstance(node, dict) and set(node) == {"name", "fields", "values"}:
        fields, values = node["fields"], node["values"]
        if not (isinstance(fields, dict) and isinstance(values, dict)):
            raise ValueError(f"{where}: malformed namedtuple encoding")
        node = {fields[i]: values[i] for i in fields if i in values}
    if not isinstance(node, dict) or set(node) != {"hidden", "cell"}:
        got = sorted(node) if isinstance(node, dict) else type(node).__name__
        raise ValueError(f"{where}: expected a map with keys ['cell', 'hidden'] (or flax's "
                         f"namedtuple encoding of them), got {got}")
    for k, v in node.items():
        if not isinstance(v, np.ndarray) or v.ndim != 2 or v.shape[0] != 1:
            raise ValueError(f"{where}/{k}: expected an array of shape (1, H), got "
                             f"{getattr(v, 'shape', type(v).__name__)}")
    return node


def _to_float32(tree, where=""):
    if isinstance(tree, dict):
        return {k: _to_float32(v, f"{where}/{k}" if where else k) for k, v in tree.items()}
    if not isinstance(tree, np.ndarray):
        raise ValueError(f"theta[{where}]: expected an array, got {type(tree).__name__}")
    if not np.issubdtype(tree.dtype, np.floating):
        raise ValueError(f"theta[{where}]: expected float weights, got dtype {tree.dtype}")
    if not np.all(np.isfinite(tree)):
        raise ValueError(f"theta[{where}] holds NaN or inf: the file is corrupt")
    return tree.astype(np.float32)


def load_velo(path_or_bytes):
    """Read a released VeLO `params` file (a path, or its bytes).

    Returns `(theta, hidden, mixtures)`, with theta laid out as `velo.theta_shapes`
    (numpy float32 arrays). Both the `{"params": …}` and the older tuple layout
    `{"0": …}` are read. Anything else is a ValueError that names the problem.
    """
    import msgpack

    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, name = bytes(path_or_bytes), "<bytes>"
    else:
        name = os.fspath(path_or_bytes)
        if os.path.getsize(name) > MAX_BYTES:
            raise ValueError(f"{name}: {os.path.getsize(name)} bytes, more than a VeLO params file can be")
        with open(name, "rb") as f:
            data = f.read()
    try:
        top = msgpack.unpackb(data, ext_hook=_decode_array, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types on corrupt input
        raise ValueError(f"{name}: corrupt or truncated msgpack data ({type(e).__name__}: {e})") from None
    try:
        return _velo_theta(top)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:  # a malformed structure
        raise ValueError(f"{name}: {e}") from None


def _velo_theta(top):
    if isinstance(top, dict) and "params" in top:
        theta = top["params"]
    elif isinstance(top, dict) and "0" in top:
        theta = top["0"]
    else:
        got = sorted(map(str, top))[:8] if isinstance(top, dict) else type(top).__name__
        raise ValueError(f"expected a map with key 'params' (or '0' in the older tuple layout), got {got}")
    if not isinstance(theta, dict):
        raise ValueError(f"the params entry is a {type(theta).__name__}, expected a map")
    if "lstm_init_state" not in theta:
        raise ValueError("missing key 'lstm_init_state'")
    theta = dict(theta)
    theta["lstm_init_state"] = _as_lstm_state(theta["lstm_init_state"])
    theta = _to_float32(theta)
    hidden = theta["lstm_init_state"]["hidden"].shape[-1]
    try:
        mixtures = theta["rnn_params"]["rnn_to_controls"]["b"].shape[-1]
    except (KeyError, TypeError, IndexError):
        raise ValueError("missing key rnn_params/rnn_to_controls/b") from None
    check_theta(theta, hidden, mixtures)
    return theta, hidden, mixtures


def save_velo(theta, path=None):
    """Write theta in the released `params` byte format; returns the bytes when
    `path` is None. Useful for round trips and for testing the loader."""
    import msgpack

    def enc(x):
        if isinstance(x, dict):
            return {k: enc(v) for k, v in x.items()}
        a = np.asarray(x)
        payload = msgpack.packb([list(a.shape), a.dtype.name, a.astype(a.dtype.newbyteorder("<")).tobytes()])
        return msgpack.ExtType(1, payload)

    data = msgpack.packb({"params": enc(theta), "gen_id": "", "step": 0})
    if path is None:
        return data
    with open(path, "wb") as f:
        f.write(data)

