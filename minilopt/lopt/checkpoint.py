"""Save and load meta-parameters; import the released VeLO weights.

Our own format is a plain `.npz`: one array per leaf, keyed by the leaf's tree path
written as JSON (`["rnn_params", "rnn/linear", "w"]`), so a key that itself holds a
`/` stays unambiguous and any numpy user can read the file.

`load_velo` reads the released VeLO `params` file: the flax msgpack serialisation of
`{"params": theta, "gen_id": "", "step": 0}` (or, in older files, the tuple layout
`{"0": theta, "1": "", "2": 0}`). Every array is a msgpack extension of type 1 whose
payload is itself msgpack `[shape, dtype name, raw little-endian bytes]`.
"""
from __future__ import annotations

import json
import os
import tempfile

import jax
import numpy as np

from .velo import check_theta

_ARRAY_EXT_TYPES = (1, 3)  # flax: 1 = ndarray, 3 = numpy scalar; same payload


# ---------------------------------------------------------------------------
# Our format: .npz with JSON tree paths
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
    (a temporary file, then a rename), so a crash never leaves half a checkpoint."""
    arrays = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        arrays[json.dumps([_key_part(k) for k in p])] = np.asarray(leaf)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _insert(tree, keys, value, name):
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(k, int):
            if not isinstance(tree, list):
                raise ValueError(f"checkpoint key {name} mixes list and dict nodes")
            while len(tree) <= k:
                tree.append(None)
            if last:
                tree[k] = value
            else:
                tree[k] = tree[k] if tree[k] is not None else ([] if isinstance(keys[i + 1], int) else {})
                tree = tree[k]
        else:
            if not isinstance(tree, dict):
                raise ValueError(f"checkpoint key {name} mixes list and dict nodes")
            if last:
                tree[k] = value
            else:
                tree = tree.setdefault(k, [] if isinstance(keys[i + 1], int) else {})


def load(path, like=None):
    """Read a checkpoint written by `save`: nested dicts/lists of numpy arrays.

    With `like` (a tree of the expected structure, e.g. `velo.init(key)`), the result
    has exactly `like`'s structure, and a missing/extra key or a shape mismatch is a
    ValueError that names the key.
    """
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zip or npy corruption
        raise ValueError(f"{path!r} is not a readable .npz checkpoint: {e}") from None
    paths = {}
    for name in arrays:
        try:
            paths[name] = json.loads(name)
        except json.JSONDecodeError:
            paths[name] = None
        if not isinstance(paths[name], list) or not paths[name]:
            raise ValueError(f"{path!r}: key {name!r} is not a minilopt tree path") from None
    first = next(iter(paths.values()), [""])
    tree = [] if isinstance(first[0], int) else {}
    for name, value in arrays.items():
        _insert(tree, paths[name], value, name)
    if like is None:
        return tree
    expected = {json.dumps([_key_part(k) for k in p]): np.shape(v)
                for p, v in jax.tree_util.tree_flatten_with_path(like)[0]}
    missing, extra = set(expected) - set(arrays), set(arrays) - set(expected)
    if missing or extra:
        raise ValueError(f"checkpoint {path!r} does not match: missing keys {sorted(missing)}, "
                         f"unexpected keys {sorted(extra)}")
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ValueError(f"checkpoint key {name}: shape {arrays[name].shape}, expected {shape}")
    leaves = [arrays[json.dumps([_key_part(k) for k in p])]
              for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


# ---------------------------------------------------------------------------
# The released VeLO `params` file
# ---------------------------------------------------------------------------
def _decode_array(code, payload):
    import msgpack

    if code not in _ARRAY_EXT_TYPES:
        raise ValueError(f"unsupported msgpack extension type {code} (only arrays are expected)")
    shape, dtype, buf = msgpack.unpackb(payload, raw=False)
    return np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()


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
        with open(name, "rb") as f:
            data = f.read()
    try:
        top = msgpack.unpackb(data, ext_hook=_decode_array, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types on corrupt input
        raise ValueError(f"{name}: corrupt or truncated msgpack data ({type(e).__name__}: {e})") from None
    if isinstance(top, dict) and "params" in top:
        theta = top["params"]
    elif isinstance(top, dict) and "0" in top:
        theta = top["0"]
    else:
        got = sorted(map(str, top)) if isinstance(top, dict) else type(top).__name__
        raise ValueError(f"{name}: expected a map with key 'params' (or '0' in the older tuple "
                         f"layout), got {got}")
    if not isinstance(theta, dict):
        raise ValueError(f"{name}: the params entry is a {type(theta).__name__}, expected a map")
    if "lstm_init_state" not in theta:
        raise ValueError(f"{name}: missing key 'lstm_init_state'")
    theta = dict(theta)
    theta["lstm_init_state"] = _as_lstm_state(theta["lstm_init_state"])
    theta = _to_float32(theta)
    hidden = theta["lstm_init_state"]["hidden"].shape[-1]
    try:
        mixtures = theta["rnn_params"]["rnn_to_controls"]["b"].shape[-1]
    except (KeyError, TypeError):
        raise ValueError(f"{name}: missing key rnn_params/rnn_to_controls/b") from None
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

