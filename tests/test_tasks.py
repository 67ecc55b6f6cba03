"""Tasks: shapes, purity, closed forms, splits and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilopt import tasks
from minilopt.tasks import data

KEY = jax.random.key(0)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_is_pure_and_jittable(name):
    task = tasks.get(name)
    params = task.init(KEY)
    batch = task.batch(jax.random.key(1))
    loss = jax.jit(task.loss)(params, batch)
    assert loss.shape == () and np.isfinite(loss)
    # pure: the same key gives the same params, batch and loss
    assert jnp.array_equal(jax.jit(task.loss)(task.init(KEY), task.batch(jax.random.key(1))), loss)
    grads = jax.grad(task.loss)(params, batch)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", ["digits_logreg", "digits_mlp", "mnist1d_mlp", "mnist1d_cnn"])
def test_untrained_classifier_is_near_chance(name):
    task = tasks.get(name)
    loss = task.loss(task.init(KEY), task.eval_batch(KEY))
    assert abs(float(loss) - np.log(10)) < 0.5  # ten classes


def test_datasets_are_offline_and_split_as_documented():
    digits = data.load("digits")
    assert digits.x_train.shape == (1438, 64) and digits.x_test.shape == (359, 64)
    assert float(digits.x_train.max()) <= 1.0 and float(digits.x_train.min()) >= 0.0
    m1d = data.load("mnist1d")
    assert m1d.x_train.shape == (4000, 40) and m1d.x_test.shape == (1000, 40)
    assert set(np.unique(np.asarray(m1d.y_train))) == set(range(10))
    text = data.load("text")
    assert text.x_train.shape[0] > 30_000
    assert int(text.x_train.max()) < len(data.VOCAB)
    assert data.decode(data.encode("The digits")) == "The digits"


def test_char_lm_untrained_loss_is_log_vocab():
    task = tasks.char_lm(init_scale=0.01)
    loss = task.loss(task.init(KEY), task.batch(KEY))
    assert abs(float(loss) - np.log(len(data.VOCAB))) < 0.05


def test_quadratic_gradient_is_closed_form():
    task = tasks.quadratic(dim=5, condition=10.0)
    x = jnp.arange(5.0)
    batch = task.batch(KEY)  # noise-free: the batch is the center
    np.testing.assert_allclose(batch, jnp.ones((1, 5)))
    g = jax.grad(task.loss)({"x": x}, batch)["x"]
    np.testing.assert_allclose(g, task.curvatures * (x - 1.0), rtol=1e-6)
    assert float(task.loss(task.optimum(), batch)) == 0.0


def test_noisy_quadratic_expected_loss_at_optimum():
    task = tasks.noisy_quadratic(dim=4, noise=0.5, batch_size=20_000)
    loss = task.loss(task.optimum(), task.batch(KEY))
    np.testing.assert_allclose(loss, task.min_expected_loss(), rtol=0.03)


def test_batches_follow_the_key_and_the_split():
    task = tasks.digits_mlp(batch_size=16)
    a, b = task.batch(jax.random.key(1)), task.batch(jax.random.key(2))
    assert not jnp.array_equal(a[0], b[0])
    x_test, _ = task.batch(jax.random.key(1), "test")
    train_rows = {tuple(r) for r in np.asarray(data.load("digits").x_train)}
    assert not any(tuple(r) in train_rows for r in np.asarray(x_test))


def test_traceable_family_vmaps_and_splits_differ():
    family = tasks.family("quadratic", dim=3)
    batch = jax.vmap(family.sample)(jax.random.split(KEY, 4))
    assert batch.curvatures.shape == (4, 3)
    train, held = family.sample(KEY, "train"), family.sample(KEY, "heldout")
    assert not jnp.allclose(train.curvatures, held.curvatures)
    lo, hi = 0.5, 2.0
    scales = jax.vmap(tasks.family("digits_mlp").sample)(jax.random.split(KEY, 64)).init_scale
    assert float(scales.min()) >= lo and float(scales.max()) <= hi


def test_random_family_varies_shapes_and_holds_out_widths():
    family = tasks.RandomFamily()
    names = {family.sample(jax.random.key(i)).name for i in range(12)}
    assert len(names) > 3
    for i in range(6):
        held = family.structure(jax.random.key(i), "heldout")
        assert all(w in (24, 48) for w in held.hidden) and held.batch_size == 64
        task = held.sample(jax.random.key(i), "heldout")
        assert np.isfinite(task.loss(task.init(KEY), task.batch(KEY)))


def test_random_family_refuses_traced_keys_with_advice():
    with pytest.raises(ValueError, match="structure"):
        jax.jit(lambda k: tasks.RandomFamily().sample(k).init_scale)(KEY)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'digitz'.*digits_mlp"):
        tasks.get("digitz")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        tasks.mlp_task("cifar")
    with pytest.raises(ValueError, match="unknown task family"):
        tasks.family("nope")
    with pytest.raises(ValueError, match="unknown activation"):
        tasks.digits_mlp(activation="relu6")
    with pytest.raises(ValueError, match="unknown split"):
        tasks.digits_mlp().batch(KEY, "validation")


def test_wrong_batch_shapes_are_named():
    task = tasks.digits_mlp()
    params = task.init(KEY)
    x, y = task.batch(KEY)
    with pytest.raises(ValueError, match=r"inputs has shape \(128, 40\), expected \(batch, 64\)"):
        task.loss(params, (x[:, :40], y))
    with pytest.raises(ValueError, match="labels"):
        task.loss(params, (x, y[:, None]))
    with pytest.raises(ValueError, match="pair"):
        task.loss(params, x)
    with pytest.raises(ValueError, match="expected"):
        tasks.quadratic(dim=3).loss({"x": jnp.zeros(3)}, jnp.zeros((1, 4)))


def test_a_dataset_first_loaded_inside_jit_is_cached_as_concrete_arrays():
    data.load.cache_clear()
    task = tasks.char_lm(batch_size=2, seq_len=4)
    jax.jit(lambda k: task.batch(k))(KEY)                 # first load happens under tracing
    assert not isinstance(data.load("text").x_train, jax.core.Tracer)
    jax.jit(lambda k: task.batch(k, "test"))(KEY)          # a second trace reuses the cache safely
