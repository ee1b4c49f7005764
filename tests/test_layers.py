"""Acceptance tests of the Keras layers `so.layers.Conv` and `so.layers.ConvTranspose`.

Ground truth is the dense Keras layer (`keras.layers.ConvND` /
`ConvNDTranspose`, padding="same") with the same weights, read at the output
sites; weights are copied both ways with get_weights/set_weights.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

from conftest import (as_tuple, assert_close, brute_force_conv, densify,
                      random_sparse, read_at, site_set, strided_sites)

CIN, COUT = 3, 4

KERAS_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
KERAS_CONV_TRANSPOSE = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
                        3: keras.layers.Conv3DTranspose}


def fields(x):
    """The plain-list form of a SparseTensor that Keras hands layers."""
    return [x.features, x.coordinates, x.stride_tensor, list(x.finer)]


def _uniform(rng, shape, dtype=np.float32):
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)


def _random_weights(rng, layer):
    return [_uniform(rng, w.shape) for w in layer.get_weights()]


def _grid(d, strides, extent):
    return tuple(-(-n // s) * s for n, s in zip(as_tuple(extent, d), as_tuple(strides, d)))


# -- Conv vs keras.layers.ConvND ------------------------------------------------

@pytest.mark.parametrize("d,kernel_size,strides,dilation", [
    (1, 3, 1, 1), (1, 4, 2, 1), (1, 3, 1, 2), (2, 1, 1, 1), (2, 3, 1, 1), (2, 2, 1, 1),
    (2, 3, 2, 1), (2, 4, 3, 1), (2, 3, 1, 2), (2, (3, 2), (2, 1), 1),
    (2, (1, 4), 1, (1, 2)), (3, 3, 1, 1), (3, 2, 2, 1)])
def test_conv_layer_weights_to_and_from_keras(impl, rng, d, kernel_size, strides,
                                              dilation):
    shape = _grid(d, strides, 6 if d < 3 else 4)
    x, dense = random_sparse(rng, shape, CIN)
    ks = as_tuple(kernel_size, d)
    cell = as_tuple(strides, d)
    dense_layer = KERAS_CONV[d](COUT, kernel_size, strides=strides,
                                dilation_rate=dilation, padding="same")
    dense_layer.build(dense.shape)
    layer = so.layers.Conv(COUT, kernel_size, strides=strides, dilation_rate=dilation)
    layer(fields(x))  # builds
    assert tuple(layer.kernel.shape) == tuple(dense_layer.kernel.shape) == ks + (CIN, COUT)
    assert tuple(layer.bias.shape) == (COUT,)
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]

    # Keras -> sparse.
    dense_layer.set_weights(_random_weights(rng, dense_layer))
    layer.set_weights(dense_layer.get_weights())
    y = layer(fields(x))
    assert y.stride == cell
    assert site_set(y.coordinates) == strided_sites(x.coordinates, cell)
    assert_close(y.features.numpy(), read_at(dense_layer(dense), y.coordinates, cell),
                 np.float32)

    # sparse -> Keras (and a so.SparseTensor input, now that the layer is built).
    layer.set_weights(_random_weights(rng, layer))
    dense_layer.set_weights(layer.get_weights())
    y = layer(x)
    assert_close(y.features.numpy(), read_at(dense_layer(dense), y.coordinates, cell),
                 np.float32)


def test_conv_layer_without_bias(impl, rng):
    x, dense = random_sparse(rng, (6, 6), CIN)
    dense_layer = keras.layers.Conv2D(COUT, 3, padding="same", use_bias=False)
    dense_layer.build(dense.shape)
    layer = so.layers.Conv(COUT, 3, use_bias=False)
    layer(fields(x))
    assert len(layer.get_weights()) == 1
    dense_layer.set_weights(_random_weights(rng, dense_layer))
    layer.set_weights(dense_layer.get_weights())
    y = layer(fields(x))
    assert_close(y.features.numpy(), read_at(dense_layer(dense), y.coordinates, 1),
                 np.float32)


def test_conv_layer_float64(impl, rng):
    """A float64 layer computes in float64 (a default layer, like Keras' own,
    casts its inputs to float32)."""
    x, dense = random_sparse(rng, (6, 6), CIN, dtype=np.float64)
    layer = so.layers.Conv(COUT, 3, strides=2, dtype="float64")
    y = layer(fields(x))
    assert y.features.dtype == tf.float64
    kernel, bias = layer.get_weights()
    expected = tf.nn.convolution(dense, kernel.astype(np.float64), strides=2,
                                 padding="SAME").numpy() + bias
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, 2), np.float64)


def test_conv_layer_custom_region(impl, rng):
    region = np.array([[0, 0], [1, 0], [0, -1], [2, 2]], np.int32)
    x, _ = random_sparse(rng, (6, 6), CIN, dtype=np.float64)
    layer = so.layers.Conv(COUT, None, region=region)
    y = layer(fields(x))
    assert tuple(layer.kernel.shape) == (4, CIN, COUT)
    kernel, bias = layer.get_weights()
    expected = brute_force_conv(x.coordinates, x.features, x.coordinates, kernel,
                                region, 1) + bias
    assert_close(y.features.numpy(), expected, np.float32)


def test_conv_layer_hypercross(impl, rng):
    x, _ = random_sparse(rng, (6, 6), CIN, dtype=np.float64)
    layer = so.layers.Conv(COUT, 3, region="hypercross")
    y = layer(fields(x))
    assert tuple(layer.kernel.shape) == (5, CIN, COUT)
    kernel, bias = layer.get_weights()
    offsets = so.kernel_offsets(3, region="hypercross", dimension=2).numpy()
    expected = brute_force_conv(x.coordinates, x.features, x.coordinates, kernel,
                                offsets, 1) + bias
    assert_close(y.features.numpy(), expected, np.float32)


# -- ConvTranspose vs keras.layers.ConvNDTranspose ---------------------------------

_TRANSPOSE_CASES = [(1, 3, 2), (1, 4, 3), (2, 1, 2), (2, 2, 2), (2, 3, 2), (2, 4, 2),
                    (2, 3, 3), (3, 2, 2), (3, 3, 2)]


@pytest.mark.parametrize("mode", ["finer", "coordinates", "generative"])
@pytest.mark.parametrize("d,kernel_size,strides", _TRANSPOSE_CASES)
def test_conv_transpose_layer_weights_to_and_from_keras(impl, rng, d, kernel_size,
                                                        strides, mode):
    if mode == "generative":
        # Sites one coarse cell away from the edges: all generated sites fit.
        inner = (3,) * d if d < 3 else (2,) * d
        coarse_shape = tuple(n + 2 for n in inner)
        fine_shape = tuple(n * strides for n in coarse_shape)
    else:
        fine_shape = _grid(d, strides, 6 if d < 3 else 4)
        coarse_shape = tuple(n // strides for n in fine_shape)
    kwargs = {}
    if mode == "finer":
        x, _ = random_sparse(rng, fine_shape, CIN)
        down = so.layers.Conv(CIN, 2, strides=strides)
        y = down(fields(x))
        expected_sites = site_set(x.coordinates)
    elif mode == "coordinates":
        y, _ = random_sparse(rng, coarse_shape, CIN, stride=strides)
        out, _ = random_sparse(rng, fine_shape, 1)
        kwargs["coordinates"] = out.coordinates
        expected_sites = site_set(out.coordinates)
    else:
        y, _ = random_sparse(rng, inner, CIN, stride=strides, origin=strides,
                             density=0.4)
        expected_sites = None
    coarse = densify(y, coarse_shape, batch=2)

    dense_layer = KERAS_CONV_TRANSPOSE[d](COUT, kernel_size, strides=strides,
                                         padding="same")
    dense_layer.build(coarse.shape)
    layer = so.layers.ConvTranspose(COUT, kernel_size, strides=strides,
                                    generative=mode == "generative")
    layer(fields(y), **kwargs)
    assert (tuple(layer.kernel.shape) == tuple(dense_layer.kernel.shape)
            == (kernel_size,) * d + (COUT, CIN))

    for direction in ("keras_to_sparse", "sparse_to_keras"):
        if direction == "keras_to_sparse":
            dense_layer.set_weights(_random_weights(rng, dense_layer))
            layer.set_weights(dense_layer.get_weights())
        else:
            layer.set_weights(_random_weights(rng, layer))
            dense_layer.set_weights(layer.get_weights())
        z = layer(fields(y), **kwargs)
        assert z.stride == (1,) * d
        if expected_sites is not None:
            assert site_set(z.coordinates) == expected_sites
        expected = dense_layer(coarse).numpy()
        assert expected.shape[1:-1] == fine_shape
        zc = z.coordinates.numpy()
        assert np.all((zc[:, 1:] >= 0) & (zc[:, 1:] < np.array(fine_shape)))
        assert_close(z.features.numpy(), read_at(expected, zc, 1), np.float32)
        if mode == "generative":
            # Every site where the dense result differs from the bias was generated.
            bias = layer.get_weights()[1]
            changed = {tuple(int(v) for v in r) for r in
                       np.argwhere(np.any(np.abs(expected - bias) > 1e-6, axis=-1))}
            assert changed <= set(site_set(zc))


def test_conv_transpose_layer_coordinates_as_sparse_tensor(impl, rng):
    """coordinates= a skip connection's SparseTensor."""
    skip, _ = random_sparse(rng, (6, 6), CIN)
    y, coarse = random_sparse(rng, (3, 3), CIN, stride=2)
    layer = so.layers.ConvTranspose(COUT, 3, strides=2)
    z = layer(fields(y), coordinates=skip)
    np.testing.assert_array_equal(z.coordinates.numpy(), skip.coordinates.numpy())
    dense_layer = keras.layers.Conv2DTranspose(COUT, 3, strides=2, padding="same")
    dense_layer.build(coarse.shape)
    dense_layer.set_weights(layer.get_weights())
    assert_close(z.features.numpy(), read_at(dense_layer(coarse), z.coordinates, 1),
                 np.float32)


def test_conv_transpose_layer_coordinates_as_list(impl, rng):
    skip, _ = random_sparse(rng, (6, 6), CIN)
    y, coarse = random_sparse(rng, (3, 3), CIN, stride=2)
    layer = so.layers.ConvTranspose(COUT, 3, strides=2)
    z = layer(fields(y), coordinates=fields(skip))
    np.testing.assert_array_equal(z.coordinates.numpy(), skip.coordinates.numpy())
    dense_layer = keras.layers.Conv2DTranspose(COUT, 3, strides=2, padding="same")
    dense_layer.build(coarse.shape)
    dense_layer.set_weights(layer.get_weights())
    assert_close(z.features.numpy(), read_at(dense_layer(coarse), z.coordinates, 1),
                 np.float32)


def test_conv_transpose_layer_without_output_sites_raises(impl, rng):
    y, _ = random_sparse(rng, (3, 3), CIN, stride=2)  # not made by a strided op
    with pytest.raises(ValueError, match="generative"):
        so.layers.ConvTranspose(COUT, 2, strides=2)(fields(y))


# -- input forms -----------------------------------------------------------------

def _conv_and_keras(rng, d=2):
    layer = so.layers.Conv(COUT, 3, strides=2)
    dense_layer = KERAS_CONV[d](COUT, 3, strides=2, padding="same")
    dense_layer.build((2,) + (6,) * d + (CIN,))
    dense_layer.set_weights(_random_weights(rng, dense_layer))
    return layer, dense_layer


@pytest.mark.parametrize("form", ["tf_sparse", "list", "tuple", "list_of_two"])
def test_conv_layer_input_forms(impl, rng, form):
    """A layer accepts a tf.SparseTensor [B, *spatial, C] and the fields of a
    SparseTensor as a plain list or tuple (built by that first call)."""
    x, dense = random_sparse(rng, (6, 6), CIN)
    layer, dense_layer = _conv_and_keras(rng)
    if form == "tf_sparse":
        inp = tf.sparse.from_dense(dense)  # independent of the library
    elif form == "list":
        inp = [x.features, x.coordinates, np.array([1, 1], np.int32)]
    elif form == "tuple":
        inp = (x.features.numpy(), x.coordinates.numpy(), np.array([1, 1], np.int32))
    else:
        inp = [x.features, x.coordinates]
    y = layer(inp)
    layer.set_weights(dense_layer.get_weights())
    y = layer(inp)
    assert y.stride == (2, 2)
    active = np.argwhere(np.any(dense != 0, axis=-1))
    assert site_set(y.coordinates) == strided_sites(active, 2)
    assert_close(y.features.numpy(), read_at(dense_layer(dense), y.coordinates, 2),
                 np.float32)


def test_unbuilt_layer_accepts_sparse_tensor(impl, rng):
    """Building a layer from a so.SparseTensor (Keras' tracker rebuilds the
    namedtuple by field name while building)."""
    x, dense = random_sparse(rng, (6, 6), CIN)
    layer, dense_layer = _conv_and_keras(rng)
    layer(x)
    layer.set_weights(dense_layer.get_weights())
    y = layer(x)
    assert_close(y.features.numpy(), read_at(dense_layer(dense), y.coordinates, 2),
                 np.float32)


def test_chained_layers_eagerly(impl, rng):
    """conv2(conv1(x)): the second layer is built from a so.SparseTensor."""
    x, dense = random_sparse(rng, (6, 6), CIN)
    conv1, conv2 = so.layers.Conv(COUT, 3), so.layers.Conv(COUT, 3)
    y = conv2(conv1(fields(x)))
    k1, b1 = conv1.get_weights()
    k2, b2 = conv2.get_weights()
    h = read_at(tf.nn.convolution(dense, k1, padding="SAME").numpy() + b1,
                x.coordinates, 1)
    h_dense = densify(x.with_features(h), (6, 6), batch=2)
    expected = tf.nn.convolution(h_dense, k2, padding="SAME").numpy() + b2
    assert_close(y.features.numpy(), read_at(expected, x.coordinates, 1), np.float32)


# -- get_config round trip -----------------------------------------------------------

_CONFIGS = {
    "conv_default": lambda: so.layers.Conv(COUT),
    "conv_strided": lambda: so.layers.Conv(COUT, (3, 2), strides=(2, 1), use_bias=False,
                                           kernel_initializer="he_normal", name="c1"),
    "conv_dilated": lambda: so.layers.Conv(COUT, 3, dilation_rate=2,
                                           masked_gradients=True,
                                           kernel_regularizer="l2"),
    "conv_custom_region": lambda: so.layers.Conv(COUT, None,
                                                 region=[[0, 0], [1, 0], [0, -1]]),
    "transpose_generative": lambda: so.layers.ConvTranspose(COUT, 3, strides=2,
                                                            generative=True),
    "transpose_no_bias": lambda: so.layers.ConvTranspose(COUT, 2, strides=2,
                                                         use_bias=False),
}


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_get_config_round_trip(impl, rng, name):
    layer = _CONFIGS[name]()
    transposed = isinstance(layer, so.layers.ConvTranspose)
    x, _ = random_sparse(rng, (6, 6), CIN, stride=2 if transposed else 1)
    fine, _ = random_sparse(rng, (12, 12), 1)
    kwargs = {"coordinates": fine.coordinates} if transposed and not layer.generative else {}
    y1 = layer(fields(x), **kwargs)
    config = layer.get_config()
    json.dumps(config)  # serializable as it is
    for clone in (type(layer).from_config(config),
                  keras.layers.deserialize(keras.layers.serialize(layer))):
        assert type(clone) is type(layer)
        assert clone.get_config() == config
        clone(fields(x), **kwargs)
        clone.set_weights(layer.get_weights())
        y2 = clone(fields(x), **kwargs)
        np.testing.assert_array_equal(y2.coordinates.numpy(), y1.coordinates.numpy())
        np.testing.assert_array_equal(y2.features.numpy(), y1.features.numpy())


# -- training ----------------------------------------------------------------------------

def _dataset(x, labels):
    return tf.data.Dataset.from_tensors(((x.features, x.coordinates), labels))


def _sparse_inputs(d=2):
    return (keras.Input(shape=(CIN,), name="features"),
            keras.Input(shape=(1 + d,), dtype="int32", name="coordinates"))


def test_fit_one_step_matches_dense_sgd(impl, rng):
    """model.fit on a tf.data dataset of ((features, coordinates), labels): one
    SGD step moves the weights exactly as the dense equivalent's gradient says."""
    x, dense = random_sparse(rng, (6, 6), CIN)
    labels = _uniform(rng, (x.features.shape[0], COUT))
    f_in, c_in = _sparse_inputs()
    conv = so.layers.Conv(COUT, 3, strides=1)
    out = keras.layers.Lambda(lambda t: t[0], output_shape=(COUT,))(conv([f_in, c_in]))
    model = keras.Model([f_in, c_in], out)
    lr = 0.1
    model.compile(keras.optimizers.SGD(lr), loss="mse")
    w0 = [w.copy() for w in model.get_weights()]
    model.fit(_dataset(x, labels), epochs=1, verbose=0, shuffle=False)
    kernel, bias = tf.constant(w0[0]), tf.constant(w0[1])
    idx = x.coordinates.numpy()
    with tf.GradientTape() as tape:
        tape.watch([kernel, bias])
        pred = tf.gather_nd(keras.ops.conv(dense, kernel, padding="same") + bias, idx)
        loss = tf.reduce_mean((pred - labels) ** 2)
    g_kernel, g_bias = tape.gradient(loss, [kernel, bias])
    w1 = model.get_weights()
    assert np.abs(w1[0] - w0[0]).max() > 1e-4  # it trained
    assert_close(w1[0], w0[0] - lr * g_kernel.numpy(), np.float32, atol=1e-6)
    assert_close(w1[1], w0[1] - lr * g_bias.numpy(), np.float32, atol=1e-6)


_IMPL_CUSTOM_FAST = pytest.mark.parametrize(
    "impl", ["custom", pytest.param("reference", marks=pytest.mark.slow)],
    indirect=True)  # whole-model tests take 10-25 s on the reference path


@_IMPL_CUSTOM_FAST
def test_fit_unet_style_model(impl, rng):
    """Down, submanifold, up (onto a skip connection's sites): fit reduces the
    loss and predict gives one row per input site."""
    keras.utils.set_random_seed(7)
    x, _ = random_sparse(rng, (8, 8), CIN, density=0.5)
    labels = rng.integers(0, 2, x.features.shape[0])
    f_in, c_in = _sparse_inputs()
    skip = so.layers.Conv(8, 3)([f_in, c_in])
    h = so.layers.Conv(8, 2, strides=2)(skip)
    h = so.layers.Conv(8, 3)(h)
    up = so.layers.ConvTranspose(8, 2, strides=2)(h, coordinates=skip)
    logits = keras.layers.Lambda(lambda t: t[0] + t[1], output_shape=(8,))(
        [up.features, skip.features])
    logits = keras.layers.Dense(2)(logits)
    model = keras.Model([f_in, c_in], logits)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(_dataset(x, labels).repeat(8), epochs=1, verbose=0,
                        shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    first = model.evaluate(_dataset(x, labels), verbose=0)
    model.fit(_dataset(x, labels).repeat(20), epochs=1, verbose=0, shuffle=False)
    assert model.evaluate(_dataset(x, labels), verbose=0) < first
    assert model.predict(_dataset(x, labels), verbose=0).shape == (x.features.shape[0], 2)


def test_gradient_tape_training_step_matches_dense(impl, rng):
    """A tf.function + GradientTape step through Conv(strides=2) and
    ConvTranspose (onto the finer sites) against the dense Keras equivalent:
    the dense strided output is masked to the active coarse sites."""
    x, dense = random_sparse(rng, (6, 6), CIN, density=0.4)
    labels = _uniform(rng, (x.features.shape[0], COUT))
    down = so.layers.Conv(8, 3, strides=2)
    up = so.layers.ConvTranspose(COUT, 2, strides=2)
    up(down(fields(x)))
    variables = down.trainable_variables + up.trainable_variables
    assert len(variables) == 4

    @tf.function
    def step(features, coordinates):
        with tf.GradientTape() as tape:
            z = up(down([features, coordinates]))
            loss = tf.reduce_mean((z.features - labels) ** 2)
        return loss, tape.gradient(loss, variables), z.coordinates

    loss, grads, z_coordinates = step(x.features, x.coordinates)
    assert site_set(z_coordinates) == site_set(x.coordinates)

    coarse_sites = np.array(strided_sites(x.coordinates, 2))
    coarse_mask = np.zeros((2, 3, 3, 1), np.float32)
    coarse_mask[coarse_sites[:, 0], coarse_sites[:, 1] // 2, coarse_sites[:, 2] // 2] = 1
    dense_vars = [tf.constant(v.numpy()) for v in variables]

    @tf.function  # graph mode: see test_conv._dense_conv_grads
    def dense_step(dense_vars):
        k1, b1, k2, b2 = dense_vars
        with tf.GradientTape() as tape:
            tape.watch(dense_vars)
            h = (tf.nn.convolution(dense, k1, strides=2, padding="SAME") + b1) * coarse_mask
            out = tf.nn.conv_transpose(h, k2, [2, 6, 6, COUT], strides=2,
                                       padding="SAME") + b2
            pred = tf.gather_nd(out, z_coordinates)
            loss = tf.reduce_mean((pred - labels) ** 2)
        return loss, tape.gradient(loss, dense_vars)

    expected_loss, expected_grads = dense_step(dense_vars)
    assert_close(loss.numpy(), expected_loss.numpy(), np.float32)
    for g, e in zip(grads, expected_grads):
        assert_close(g.numpy(), e.numpy(), np.float32)


def test_layers_share_kernel_maps(impl, rng, kernel_map_builds):
    """Two stride-1 layers on the same sites build one kernel map (in a graph)."""
    x, _ = random_sparse(rng, (6, 6), CIN)
    conv1, conv2 = so.layers.Conv(COUT, 3), so.layers.Conv(COUT, 3)
    conv1(fields(x))
    conv2([tf.zeros([x.features.shape[0], COUT]), x.coordinates])
    kernel_map_builds.clear()

    @tf.function
    def f(features, coordinates):
        return conv2(conv1([features, coordinates])).features

    f(x.features, x.coordinates)
    assert kernel_map_builds == [impl]


# Keras' own saving code converts variables with np.array(copy=False).
_KERAS_SAVING_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@_KERAS_SAVING_WARNING
@_IMPL_CUSTOM_FAST
def test_keras_model_save_and_load(impl, rng, tmp_path):
    x, _ = random_sparse(rng, (8, 8), CIN)
    f_in, c_in = _sparse_inputs()
    h = so.layers.Conv(8, 3)([f_in, c_in])
    h = so.layers.Conv(COUT, 2, strides=2)(h)
    out = keras.layers.Lambda(lambda t: t[0], output_shape=(COUT,))(h)
    model = keras.Model([f_in, c_in], out)
    before = model.predict((x.features.numpy(), x.coordinates.numpy()), verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=False)
    after = loaded.predict((x.features.numpy(), x.coordinates.numpy()), verbose=0)
    np.testing.assert_array_equal(after, before)


@_KERAS_SAVING_WARNING
@_IMPL_CUSTOM_FAST
def test_keras_model_with_skip_connection_save_and_load(impl, rng, tmp_path):
    x, _ = random_sparse(rng, (8, 8), CIN)
    f_in, c_in = _sparse_inputs()
    skip = so.layers.Conv(8, 3)([f_in, c_in])
    h = so.layers.Conv(8, 2, strides=2)(skip)
    up = so.layers.ConvTranspose(COUT, 2, strides=2)(h, coordinates=skip)
    out = keras.layers.Lambda(lambda t: t[0], output_shape=(COUT,))(up)
    model = keras.Model([f_in, c_in], out)
    before = model.predict((x.features.numpy(), x.coordinates.numpy()), verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=False)
    after = loaded.predict((x.features.numpy(), x.coordinates.numpy()), verbose=0)
    np.testing.assert_array_equal(after, before)
