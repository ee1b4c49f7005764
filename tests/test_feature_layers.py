"""Tests of the feature layers (global pools, broadcasts, per-site layers,
normalisation, Concat, ToDense, Prune) and `so.ops.global_pool`.

References are numpy computations per batch item, or the dense Keras layer
applied to the feature matrix [N, C] with copied weights.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

from conftest import assert_close, random_sparse

C = 3


def fields(x):
    return [x.features, x.coordinates, x.stride_tensor, list(x.finer)]


def _with_empty_item(rng, dtype=np.float32, spatial=(5, 5), channels=C):
    """Three batch items, item 1 without sites."""
    x, _ = random_sparse(rng, spatial, channels, batch=3, density=0.4, dtype=dtype)
    keep = x.coordinates.numpy()[:, 0] != 1
    return so.SparseTensor(x.features.numpy()[keep], x.coordinates.numpy()[keep])


def _np_global(x, mode, batch=None):
    f = x.features.numpy().astype(np.float64)
    b = x.coordinates.numpy()[:, 0]
    batch = int(b.max()) + 1 if batch is None else batch
    out = np.zeros((batch, f.shape[1]))
    for i in range(batch):
        rows = f[b == i]
        if len(rows):
            out[i] = {"max": rows.max(0), "avg": rows.mean(0), "sum": rows.sum(0)}[mode]
    return out


# -- global pooling ----------------------------------------------------------------

_POOLS = {"max": so.layers.GlobalMaxPool, "avg": so.layers.GlobalAvgPool,
          "sum": so.layers.GlobalSumPool}


@pytest.mark.parametrize("mode", sorted(_POOLS))
def test_global_pool_matches_numpy_with_empty_item(impl, rng, mode):
    x = _with_empty_item(rng)
    assert set(x.coordinates.numpy()[:, 0]) == {0, 2}
    expected = _np_global(x, mode, batch=3)
    y = _POOLS[mode]()(fields(x))
    assert y.shape == (3, C)
    assert_close(y.numpy(), expected.astype(np.float32))
    assert_close(so.ops.global_pool(x, mode).numpy(), expected.astype(np.float32))
    assert np.all(y.numpy()[1] == 0)


@pytest.mark.parametrize("mode", sorted(_POOLS))
def test_global_pool_3d_and_negative_features(impl, rng, mode):
    x, _ = random_sparse(rng, (3, 4, 3), 5, batch=2, density=0.5)
    x = x.with_features(-tf.abs(x.features))  # max of negatives is not clipped at 0
    y = so.ops.global_pool(x, mode)
    assert_close(y.numpy(), _np_global(x, mode).astype(np.float32))


def test_global_pool_bad_mode(rng):
    x, _ = random_sparse(rng, (4, 4), C)
    with pytest.raises(ValueError, match="mode"):
        so.ops.global_pool(x, "min")


def test_global_pool_no_sites(impl):
    x = so.SparseTensor(np.zeros((0, C), np.float32), np.zeros((0, 3), np.int32))
    for mode in _POOLS:
        assert so.ops.global_pool(x, mode).shape == (0, C)


@pytest.mark.parametrize("mode", sorted(_POOLS))
def test_global_pool_gradient(impl, rng, mode):
    x = _with_empty_item(rng, dtype=np.float64, spatial=(4, 4))
    coords = x.coordinates

    def f(features):
        return so.ops.global_pool(so.SparseTensor(features, coords), mode)

    theoretical, numerical = tf.test.compute_gradient(f, [x.features])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)


# -- broadcasting ----------------------------------------------------------------------

@pytest.mark.parametrize("op", ["add", "multiply", "concat"])
def test_broadcast_layers_match_numpy(rng, op):
    x = _with_empty_item(rng)
    g = rng.uniform(-1, 1, (3, C if op != "concat" else 2)).astype(np.float32)
    layer = {"add": so.layers.BroadcastAdd, "multiply": so.layers.BroadcastMultiply,
             "concat": so.layers.BroadcastConcat}[op]()
    y = layer(fields(x), g)
    f, b = x.features.numpy(), x.coordinates.numpy()[:, 0]
    expected = {"add": lambda: f + g[b], "multiply": lambda: f * g[b],
                "concat": lambda: np.concatenate([f, g[b]], 1)}[op]()
    assert_close(y.features.numpy(), expected)
    np.testing.assert_array_equal(y.coordinates.numpy(), x.coordinates.numpy())
    y2 = layer(x, g)
    assert y2.coordinates is x.coordinates  # same tensor: cached kernel maps apply


@pytest.mark.parametrize("op", ["add", "multiply", "concat"])
def test_broadcast_gradient(rng, op):
    x = _with_empty_item(rng, dtype=np.float64, spatial=(4, 4))
    g = rng.uniform(-1, 1, (3, C)).astype(np.float64)
    coords = x.coordinates

    def f(features, g):
        return so.ops.broadcast(so.SparseTensor(features, coords), g, op).features

    theoretical, numerical = tf.test.compute_gradient(f, [x.features, tf.constant(g)])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


# -- per-site layers ----------------------------------------------------------------------

def test_dense_weights_to_and_from_keras(rng):
    x, _ = random_sparse(rng, (5, 5), C)
    layer = so.layers.Dense(4, activation="tanh")
    ref = keras.layers.Dense(4, activation="tanh")
    layer(fields(x))
    ref.build((None, C))
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]
    assert tuple(layer.kernel.shape) == (C, 4)
    ref.set_weights([rng.uniform(-1, 1, w.shape).astype(np.float32)
                     for w in ref.get_weights()])
    layer.set_weights(ref.get_weights())
    y = layer(x)
    assert y.coordinates is x.coordinates
    assert_close(y.features.numpy(), ref(x.features).numpy())
    layer.set_weights([rng.uniform(-1, 1, w.shape).astype(np.float32)
                       for w in layer.get_weights()])
    ref.set_weights(layer.get_weights())
    assert_close(layer(x).features.numpy(), ref(x.features).numpy())


def test_dense_without_bias(rng):
    x, _ = random_sparse(rng, (5, 5), C)
    layer = so.layers.Dense(2, use_bias=False)
    y = layer(x)
    assert len(layer.get_weights()) == 1
    assert_close(y.features.numpy(), x.features.numpy() @ layer.get_weights()[0])


def test_activation_and_relu(rng):
    x, _ = random_sparse(rng, (5, 5), C)
    f = x.features.numpy()
    assert_close(so.layers.ReLU()(x).features.numpy(), np.maximum(f, 0))
    assert_close(so.layers.Activation("sigmoid")(fields(x)).features.numpy(),
                 1 / (1 + np.exp(-f)))
    y = so.layers.Activation(tf.math.square)(x)
    assert_close(y.features.numpy(), f * f)
    assert y.coordinates is x.coordinates


def test_dropout(rng):
    x, _ = random_sparse(rng, (8, 8), 4, density=0.6)
    layer = so.layers.Dropout(0.5, seed=3)
    f = x.features.numpy()
    np.testing.assert_array_equal(layer(x).features.numpy(), f)
    np.testing.assert_array_equal(layer(x, training=False).features.numpy(), f)
    y = layer(x, training=True)
    assert y.coordinates is x.coordinates
    out = y.features.numpy()
    dropped = out == 0
    assert dropped.any() and (~dropped).any()
    assert_close(out[~dropped], 2 * f[~dropped])


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_matches_keras(rng, training):
    x, _ = random_sparse(rng, (6, 6), C, density=0.5)
    layer = so.layers.BatchNorm(momentum=0.9, epsilon=1e-3)
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    layer(x)
    ref.build((None, C))
    assert len(layer.get_weights()) == 4
    weights = [rng.uniform(-1, 1, (C,)).astype(np.float32),  # gamma
               rng.uniform(-1, 1, (C,)).astype(np.float32),  # beta
               rng.uniform(-1, 1, (C,)).astype(np.float32),  # moving mean
               rng.uniform(0.5, 2, (C,)).astype(np.float32)]  # moving variance
    ref.set_weights(weights)
    layer.set_weights(ref.get_weights())
    y = layer(fields(x), training=training)
    assert_close(y.features.numpy(), ref(x.features, training=training).numpy())
    for a, b in zip(layer.get_weights(), ref.get_weights()):  # moving stats too
        assert_close(a, b)
    if training:  # batch statistics over every site of every batch item
        f = x.features.numpy().astype(np.float64)
        expected = (f - f.mean(0)) / np.sqrt(f.var(0) + 1e-3) * weights[0] + weights[1]
        assert_close(y.features.numpy(), expected.astype(np.float32))


def _np_instance_norm(x, eps, gamma=1.0, beta=0.0):
    f = x.features.numpy().astype(np.float64)
    b = x.coordinates.numpy()[:, 0]
    out = np.zeros_like(f)
    for i in np.unique(b):
        rows = f[b == i]
        out[b == i] = (rows - rows.mean(0)) / np.sqrt(rows.var(0) + eps)
    return out * gamma + beta


def test_instance_norm_matches_numpy(rng):
    x = _with_empty_item(rng)
    layer = so.layers.InstanceNorm(epsilon=1e-4)
    y = layer(fields(x))
    assert_close(y.features.numpy(), _np_instance_norm(x, 1e-4).astype(np.float32),
                 atol=1e-4, rtol=1e-4)
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.uniform(-1, 1, C).astype(np.float32)
    layer.set_weights([gamma, beta])
    y = layer(x)
    assert y.coordinates is x.coordinates
    assert_close(y.features.numpy(),
                 _np_instance_norm(x, 1e-4, gamma, beta).astype(np.float32),
                 atol=1e-4, rtol=1e-4)
    plain = so.layers.InstanceNorm(center=False, scale=False)
    plain(x)
    assert plain.get_weights() == []


def test_instance_norm_gradient(rng):
    x = _with_empty_item(rng, dtype=np.float64, spatial=(5, 5))
    coords = x.coordinates
    gamma = tf.constant(rng.uniform(0.5, 2, C))
    beta = tf.constant(rng.uniform(-1, 1, C))

    def f(features, gamma, beta):
        return so.ops.instance_norm(so.SparseTensor(features, coords), 1e-3, gamma,
                                    beta).features

    theoretical, numerical = tf.test.compute_gradient(f, [x.features, gamma, beta])
    for t, n in zip(theoretical, numerical):  # finite differences of a curved map
        np.testing.assert_allclose(t, n, rtol=2e-4, atol=1e-5)


# -- structural layers -------------------------------------------------------------------

def test_concat(rng):
    x, _ = random_sparse(rng, (5, 5), C)
    a = so.layers.Dense(2)(x)
    b = so.layers.ReLU()(x)
    y = so.layers.Concat()([a, fields(b), x])
    assert y.coordinates is x.coordinates
    assert_close(y.features.numpy(), np.concatenate(
        [a.features.numpy(), b.features.numpy(), x.features.numpy()], 1))
    other, _ = random_sparse(rng, (5, 5), C, density=0.9)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        so.layers.Concat()([x, other])


def test_to_dense_matches_numpy_scatter(rng):
    x, dense = random_sparse(rng, (4, 5), C, stride=2)
    y = so.layers.ToDense((4, 5))(fields(x))
    assert_close(y.numpy(), dense)
    c = x.coordinates.numpy()
    shifted = so.SparseTensor(x.features, c + np.array([0, 3, -2], np.int32), 2)
    y = so.layers.ToDense((4, 5), min_coordinate=(3, -2))(shifted)
    assert_close(y.numpy(), dense)


def test_prune(rng):
    x, _ = random_sparse(rng, (6, 6), C, stride=2)
    mask = x.features.numpy()[:, 0] > 0
    y = so.layers.Prune()(fields(x), mask)
    np.testing.assert_array_equal(y.features.numpy(), x.features.numpy()[mask])
    np.testing.assert_array_equal(y.coordinates.numpy(), x.coordinates.numpy()[mask])
    assert y.stride == (2, 2)
    y = so.layers.Prune()(x, tf.zeros([x.features.shape[0]], tf.bool))
    assert y.features.shape == (0, C) and y.coordinates.shape == (0, 3)


@pytest.mark.parametrize("extra", [-1, 1])
def test_prune_mask_of_another_length_raises(rng, extra):
    """A mask of the wrong length is refused, also when its length is only
    known at run time (tf.boolean_mask alone drops the sites past a short
    mask without a word)."""
    x, _ = random_sparse(rng, (6, 6), C)
    n = x.features.shape[0]
    layer = so.layers.Prune()
    with pytest.raises(ValueError, match="mask has .* entries but x has"):
        layer(x, np.ones([n + extra], bool))
    run = tf.function(lambda m: layer(x, m).coordinates,
                      input_signature=[tf.TensorSpec([None], tf.bool)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one entry per site"):
        run(tf.ones([n + extra], tf.bool))
    np.testing.assert_array_equal(run(tf.ones([n], tf.bool)).numpy(),
                                  x.coordinates.numpy())


# -- tf.SparseTensor input ---------------------------------------------------------------

def test_tf_sparse_input(rng):
    x, dense = random_sparse(rng, (5, 5), C)
    sp = tf.sparse.from_dense(dense)
    assert_close(so.layers.GlobalSumPool()(sp).numpy(), dense.sum((1, 2)))
    y = so.layers.ReLU()(sp)
    assert_close(y.dense((5, 5)).numpy(), np.maximum(dense, 0))
    assert_close(so.layers.ToDense((5, 5))(sp).numpy(), dense)
    layer = so.layers.Dense(2)
    y = layer(sp)
    k, b = layer.get_weights()
    active = np.any(dense != 0, -1, keepdims=True)
    assert_close(y.dense((5, 5)).numpy(), (dense @ k + b) * active)


# -- get_config round trips --------------------------------------------------------------

_CONFIGS = {
    "global_max": lambda: so.layers.GlobalMaxPool(),
    "global_avg": lambda: so.layers.GlobalAvgPool(name="gap"),
    "global_sum": lambda: so.layers.GlobalSumPool(),
    "dense": lambda: so.layers.Dense(4, activation="relu", use_bias=False,
                                     kernel_initializer="he_normal",
                                     kernel_regularizer="l2"),
    "activation": lambda: so.layers.Activation("gelu"),
    "relu": lambda: so.layers.ReLU(),
    "dropout": lambda: so.layers.Dropout(0.3, seed=1),
    "batch_norm": lambda: so.layers.BatchNorm(momentum=0.8, epsilon=1e-2,
                                              center=False),
    "instance_norm": lambda: so.layers.InstanceNorm(epsilon=1e-3, scale=False),
    "to_dense": lambda: so.layers.ToDense((6, 6), min_coordinate=(0, 0)),
}


@pytest.mark.parametrize("name", sorted(_CONFIGS) + ["broadcast", "concat", "prune"])
def test_get_config_round_trip(rng, name):
    x, _ = random_sparse(rng, (6, 6), C)
    if name == "broadcast":
        layers = [so.layers.BroadcastAdd(), so.layers.BroadcastMultiply(),
                  so.layers.BroadcastConcat()]
        args = (tf.ones([2, C]),)
    elif name == "concat":
        layers, args = [so.layers.Concat()], ()
    elif name == "prune":
        layers, args = [so.layers.Prune()], (x.features[:, 0] > 0,)
    else:
        layers, args = [_CONFIGS[name]()], ()
    for layer in layers:
        inp = [x, x] if name == "concat" else fields(x)
        y1 = layer(inp, *args)
        config = layer.get_config()
        json.dumps(config)
        for clone in (type(layer).from_config(config),
                      keras.layers.deserialize(keras.layers.serialize(layer))):
            assert type(clone) is type(layer)
            assert clone.get_config() == config
            clone(inp, *args)
            clone.set_weights(layer.get_weights())
            y2 = clone(inp, *args)
            for a, b in zip(tf.nest.flatten(y1), tf.nest.flatten(y2)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- functional model ----------------------------------------------------------------------

def test_functional_model_fit_one_step(rng):
    keras.utils.set_random_seed(5)
    x, dense = random_sparse(rng, (6, 6), C, batch=2, density=0.5)
    inp = keras.Input(shape=(6, 6, C), sparse=True)
    h = so.layers.Conv(4, 3)(inp)
    h = so.layers.BatchNorm()(h)
    h = so.layers.ReLU()(h)
    h = so.layers.GlobalAvgPool()(h)
    out = keras.layers.Dense(2)(h)
    model = keras.Model(inp, out)
    assert tuple(model.output.shape) == (None, 2)
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensors((tf.sparse.from_dense(dense),
                                         np.array([0, 1])))
    w0 = [w.copy() for w in model.get_weights()]
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    w1 = model.get_weights()
    assert np.abs(w1[0] - w0[0]).max() > 1e-5  # the conv kernel trained
    assert np.abs(w1[-2] - w0[-2]).max() > 1e-5  # the head trained
    assert model.predict(data, verbose=0).shape == (2, 2)


def test_functional_model_on_fields(rng):
    """Inputs as (features, coordinates): Dense -> InstanceNorm -> Concat ->
    BroadcastConcat(GlobalMaxPool) -> the features as the output."""
    x, _ = random_sparse(rng, (5, 5), C)
    f_in = keras.Input(shape=(C,))
    c_in = keras.Input(shape=(3,), dtype="int32")
    a = so.layers.Dense(4)([f_in, c_in])
    b = so.layers.InstanceNorm()(a)
    cat = so.layers.Concat()([a, b])
    g = so.layers.GlobalMaxPool()(cat)
    z = so.layers.BroadcastConcat()(cat, g)
    out = keras.layers.Lambda(lambda t: t[0], output_shape=(16,))(z)
    model = keras.Model([f_in, c_in], out)
    y = model.predict((x.features.numpy(), x.coordinates.numpy()), verbose=0)
    assert y.shape == (x.features.shape[0], 16)
    assert np.all(np.isfinite(y))


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_model_save_and_load(rng, tmp_path):
    x, _ = random_sparse(rng, (5, 5), C)
    f_in = keras.Input(shape=(C,))
    c_in = keras.Input(shape=(3,), dtype="int32")
    h = so.layers.Dense(4, activation="relu")([f_in, c_in])
    h = so.layers.BatchNorm()(h)
    h = so.layers.InstanceNorm()(h)
    h = so.layers.Dropout(0.2)(h)
    out = so.layers.GlobalSumPool()(h)
    model = keras.Model([f_in, c_in], out)
    for layer in model.layers[2:5]:
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    inputs = (x.features.numpy(), x.coordinates.numpy())
    before = model.predict(inputs, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=False)
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), before)
