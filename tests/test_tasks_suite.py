"""The suite's newer task kinds: a transformer LM, tabular MLPs, autoencoders, a wide
CNN and a ~100k-parameter MLP. Parameter counts from the architecture's formula,
losses at init from closed forms, causality, the data splits, and that Adam trains
each one below an independent reference level."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minilopt import tasks, train
from minilopt.tasks import data

KEY = jax.random.key(0)
VOCAB = len(data.VOCAB)


def count(params):
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def mlp_count(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def final_train_loss(task, steps, lr):
    result = train.fit(task, optax.adam(lr), steps, KEY, eval_every=steps)
    assert result.stopped_at is None
    return float(train.final_loss(result.train_loss, -1)), result


# The tasks recommended for the suite, with their parameter counts from the formula
# of each architecture: embeddings, per block 2 layer norms + qkv + out + MLP, final LN + readout.
E, S = 32, 32


@functools.cache  # built on first use, not while collecting (mnist1d is generated on load)
def suite() -> dict:
    return {
        "char_transformer": (tasks.char_transformer(),
                             VOCAB * E + S * E + 2 * (4 * E + mlp_count((E, 3 * E)) + mlp_count((E, E))
                                                      + mlp_count((E, 4 * E, E))) + 2 * E + mlp_count((E, VOCAB))),
        "breast_cancer_mlp": (tasks.tabular_mlp("breast_cancer"), mlp_count((30, 32, 2))),
        "wine_mlp": (tasks.tabular_mlp("wine"), mlp_count((13, 32, 3))),
        "digits_autoencoder": (tasks.digits_autoencoder(), mlp_count((64, 32, 8)) + mlp_count((8, 32, 64))),
        "mnist1d_cnn_wide": (tasks.mnist1d_cnn(channels=(64, 64), name="mnist1d_cnn_wide"),
                             (5 * 1 * 64 + 64) + (5 * 64 * 64 + 64) + mlp_count((10 * 64, 10))),  # length 40 → 20 → 10
        "mnist1d_mlp_100k": (tasks.mnist1d_mlp(hidden=(300, 300), name="mnist1d_mlp_100k"), mlp_count((40, 300, 300, 10))),
    }


SUITE_NAMES = ("breast_cancer_mlp", "char_transformer", "digits_autoencoder", "mnist1d_cnn_wide", "mnist1d_mlp_100k",
               "wine_mlp")


def test_the_names_are_the_suite():
    assert SUITE_NAMES == tuple(sorted(suite()))


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_parameter_counts_and_determinism(name):
    task, expected = suite()[name]
    assert task.name == name
    params = task.init(KEY)
    assert count(params) == expected
    same = jax.tree.map(jnp.array_equal, params, task.init(KEY))
    assert all(jax.tree.leaves(same))
    other = task.init(jax.random.key(1))
    assert not all(jax.tree.leaves(jax.tree.map(jnp.array_equal, params, other)))
    b1, b2, b3 = task.batch(jax.random.key(5)), task.batch(jax.random.key(5)), task.batch(jax.random.key(6))
    assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, b1, b2)))
    assert not all(jax.tree.leaves(jax.tree.map(jnp.array_equal, b1, b3)))


def test_the_100k_model_has_about_100k_parameters():
    assert 90_000 <= suite()["mnist1d_mlp_100k"][1] <= 150_000


def test_transformer_shapes_and_untrained_loss_is_log_vocab():
    task = tasks.char_transformer(init_scale=0.01)
    batch = task.batch(KEY)
    assert batch.shape == (32, 33) and batch.dtype == jnp.int32
    assert task.logits(task.init(KEY), batch[:, :-1]).shape == (32, 32, VOCAB)
    loss = task.loss(task.init(KEY), batch)
    assert abs(float(loss) - np.log(VOCAB)) < 0.01


def test_layer_norm_standardises_rows_and_ignores_shift_and_scale():
    from minilopt.tasks.transformer import layer_norm, layer_norm_init

    x = jax.random.normal(KEY, (5, 16)) * 4 + 2
    y = layer_norm(layer_norm_init(16), x, eps=0.0)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=-1), 1, rtol=1e-5)
    np.testing.assert_allclose(layer_norm(layer_norm_init(16), 3 * x - 7, eps=0.0), y, atol=1e-5)


def test_transformer_is_causal():
    """Changing the character at position 10 changes the predictions at 10 and later,
    never those before it."""
    task = tasks.char_transformer(blocks=2)
    params = task.init(KEY)
    inputs = task.batch(KEY)[:4, :-1]
    changed = inputs.at[:, 10].set((inputs[:, 10] + 1) % VOCAB)
    a, b = task.logits(params, inputs), task.logits(params, changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.all(np.abs(np.asarray(a[:, 10:] - b[:, 10:])).max(axis=-1) > 1e-6)  # every later position sees it


@pytest.mark.parametrize("dataset, rows, features, classes",
                         [("breast_cancer", (455, 114), 30, 2), ("wine", (142, 36), 13, 3)])
def test_tabular_data_split_standardised_and_chance_loss(dataset, rows, features, classes):
    d = data.load(dataset)
    assert (d.x_train.shape, d.x_test.shape) == ((rows[0], features), (rows[1], features))
    assert d.num_classes == classes and set(np.unique(np.asarray(d.y_test))) == set(range(classes))
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1, atol=1e-4)
    train_rows = {tuple(r) for r in np.asarray(d.x_train)}
    assert not any(tuple(r) in train_rows for r in np.asarray(d.x_test))
    task = tasks.tabular_mlp(dataset, init_scale=0.01)
    loss = task.loss(task.init(KEY), task.eval_batch(KEY))
    assert abs(float(loss) - np.log(classes)) < 0.01


def test_autoencoder_loss_closed_forms():
    """A zero output scores mean(x²); the per-feature mean as output scores the mean variance."""
    task = tasks.digits_autoencoder()
    x = task.eval_batch(KEY)
    zero = jax.tree.map(jnp.zeros_like, task.init(KEY))
    np.testing.assert_allclose(task.loss(zero, x), np.mean(np.asarray(x) ** 2), rtol=1e-5)
    last = {"w": zero["decoder"][-1]["w"], "b": jnp.mean(x, axis=0)}
    mean_out = {"encoder": zero["encoder"], "decoder": zero["decoder"][:-1] + [last]}
    np.testing.assert_allclose(task.loss(mean_out, x), np.var(np.asarray(x), axis=0).mean(), rtol=1e-5)
    tiny = tasks.digits_autoencoder(init_scale=1e-3)
    np.testing.assert_allclose(tiny.loss(tiny.init(KEY), x), np.mean(np.asarray(x) ** 2), rtol=1e-3)


def test_transformer_learns_context():
    """After 200 Adam steps the LM beats the best context-free predictor, whose loss is
    the entropy of the corpus' character frequencies."""
    ids = np.asarray(data.load("text").x_train)
    p = np.bincount(ids) / len(ids)
    unigram_entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    loss, result = final_train_loss(tasks.char_transformer(), 200, 1e-2)
    assert loss < unigram_entropy - 0.3
    assert result.eval_loss[-1] < unigram_entropy - 0.3


@pytest.mark.parametrize("name, steps, lr", [("digits_autoencoder", 300, 3e-3), ("mnist1d_autoencoder", 300, 3e-3)])
def test_autoencoder_beats_the_best_constant_output(name, steps, lr):
    task = tasks.get(name)
    x = np.asarray(task.eval_batch(KEY))
    _, result = final_train_loss(task, steps, lr)
    assert result.eval_loss[-1] < 0.5 * np.var(x, axis=0).mean()


@pytest.mark.parametrize("name, steps, lr, fraction", [
    ("breast_cancer_mlp", 100, 3e-3, 0.2),
    ("wine_mlp", 100, 3e-3, 0.2),
    ("mnist1d_mlp_100k", 200, 1e-3, 0.6),
    ("mnist1d_cnn_wide", 100, 3e-3, 0.6),
])
def test_classifiers_train_well_below_chance(name, steps, lr, fraction):
    task = suite()[name][0]
    chance = np.log(task.data.num_classes)
    loss, result = final_train_loss(task, steps, lr)
    assert loss < fraction * chance
    assert result.eval_loss[-1] < 0.75 * chance


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="embed=30 must be a multiple of heads=4"):
        tasks.char_transformer(embed=30)
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        tasks.char_transformer(blocks=0)
    with pytest.raises(ValueError, match="unknown tabular dataset 'iris'.*breast_cancer"):
        tasks.tabular_mlp("iris")
    with pytest.raises(ValueError, match="bottleneck must be an int from 1 to 63"):
        tasks.digits_autoencoder(bottleneck=64)
    with pytest.raises(ValueError, match="rows of real features"):
        tasks.autoencoder_task("text")
    task = tasks.char_transformer()
    with pytest.raises(ValueError, match=r"expected \(batch, 33\)"):
        task.loss(task.init(KEY), jnp.zeros((2, 20), jnp.int32))
    ae = tasks.digits_autoencoder()
    with pytest.raises(ValueError, match=r"expected \(batch, 64\)"):
        ae.loss(ae.init(KEY), jnp.zeros((2, 40)))
