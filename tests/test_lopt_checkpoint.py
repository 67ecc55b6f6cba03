"""Checkpoints: our .npz format, and the released VeLO `params` byte format."""
import os

import jax
import msgpack
import numpy as np
import pytest

from minilopt import nn
from minilopt.lopt import checkpoint, velo
from helpers import fixture_theta

DATA = os.path.join(os.path.dirname(__file__), "data", "velo")


def assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def raw_file(name="format_samples/params"):
    """The msgpack file decoded one level, arrays left as ExtType, for editing."""
    with open(os.path.join(DATA, name), "rb") as f:
        return msgpack.unpackb(f.read(), raw=False)


@pytest.mark.parametrize("folder, file, hidden, mixtures", [
    ("format_samples", "params", 8, 4),
    ("format_samples", "params_legacy_tuple", 8, 4),
    ("small_32x16", "params", 32, 16),
])
def test_load_velo_matches_theta_npz(folder, file, hidden, mixtures):
    theta, H, P = checkpoint.load_velo(os.path.join(DATA, folder, file))
    assert (H, P) == (hidden, mixtures)
    assert_same_tree(theta, fixture_theta(os.path.join(DATA, folder, "theta.npz")))
    # the count from the spec: 8H² + (100+P)·H + 160·P + 1
    assert sum(x.size for x in jax.tree.leaves(theta)) == 8 * H * H + (100 + P) * H + 160 * P + 1


def test_load_velo_reads_bytes_and_the_namedtuple_encoding():
    raw = raw_file()
    state = raw["params"]["lstm_init_state"]
    raw["params"]["lstm_init_state"] = {  # flax's encoding of a namedtuple
        "name": "LSTMState", "fields": {"0": "hidden", "1": "cell"},
        "values": {"0": state["hidden"], "1": state["cell"]}}
    theta, H, P = checkpoint.load_velo(msgpack.packb(raw))
    assert (H, P) == (8, 4)
    assert_same_tree(theta, fixture_theta(os.path.join(DATA, "format_samples", "theta.npz")))


def test_save_velo_round_trip():
    theta = velo.init_theta(jax.random.PRNGKey(0), hidden=8, mixtures=4)
    back, H, P = checkpoint.load_velo(checkpoint.save_velo(theta))
    assert (H, P) == (8, 4)
    assert_same_tree(back, theta)


def edited(fn):
    raw = raw_file()
    fn(raw["params"])
    return msgpack.packb(raw)


@pytest.mark.parametrize("data, words", [
    (b"", ["corrupt"]),
    (open(os.path.join(DATA, "format_samples", "params"), "rb").read()[:5000], ["corrupt"]),
    (msgpack.packb({"weights": 1}), ["'params'"]),
    (edited(lambda t: t["rnn_params"].pop("step_size")), ["missing", "step_size"]),
    (edited(lambda t: t["rnn_params"].update(extra={"w": t["rnn_params"]["linear"]["w"]})),
     ["unexpected", "extra"]),
    (edited(lambda t: t["rnn_params"].update(linear_2=t["rnn_params"]["rnn/linear"])),
     ["rnn_params/linear_2/w", "shape"]),
    (edited(lambda t: t["lstm_init_state"].pop("cell")), ["lstm_init_state", "cell"]),
    (edited(lambda t: t["lstm_init_state"].update(hidden=t["rnn_params"]["linear"]["w"])),
     ["lstm_init_state/hidden", "(30, 8)"]),
])
def test_load_velo_rejects_bad_files_naming_the_problem(data, words):
    with pytest.raises(ValueError) as err:
        checkpoint.load_velo(data)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_npz_round_trip_keeps_keys_with_slashes_and_lists(tmp_path):
    theta = velo.init_theta(jax.random.PRNGKey(1), hidden=8, mixtures=4)
    path = tmp_path / "theta.npz"
    checkpoint.save(path, theta)
    back = checkpoint.load(path)
    assert "rnn/linear" in back["rnn_params"]
    assert_same_tree(back, theta)
    assert_same_tree(checkpoint.load(path, like=theta), theta)

    layers = nn.mlp_init(jax.random.PRNGKey(2), (3, 5, 2))  # a list of dicts
    checkpoint.save(tmp_path / "mlp.npz", layers)
    assert_same_tree(checkpoint.load(tmp_path / "mlp.npz"), layers)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # atomic write left nothing


def test_npz_load_like_names_mismatches(tmp_path):
    small = velo.init_theta(jax.random.PRNGKey(0), hidden=8, mixtures=4)
    checkpoint.save(tmp_path / "t.npz", small)
    with pytest.raises(ValueError, match=r'"ff_mod_stack", "~", "b0"\]: shape \(4, 4\), expected \(6, 4\)'):
        checkpoint.load(tmp_path / "t.npz", like=velo.init_theta(jax.random.PRNGKey(0), 8, 6))
    other = {"a": np.zeros(2)}
    with pytest.raises(ValueError, match="missing keys.*a.*unexpected"):
        checkpoint.load(tmp_path / "t.npz", like=other)
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        checkpoint.load(tmp_path / "bad.npz")
