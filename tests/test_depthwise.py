"""so.ops.depthwise_conv and so.layers.DepthwiseConv (channel-wise
convolution).

Ground truth is dense TensorFlow: `tf.nn.depthwise_conv2d(padding="SAME")`
in 2D, and per channel `tf.nn.convolution(padding="SAME")` with
`kernel[..., c:c+1, :]` in 3D; gradients are checked numerically; the
custom ops equal the pure-TF reference, and the Keras layer's weights are
interchangeable with keras.layers.DepthwiseConv2D.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

from conftest import assert_close, as_tuple, random_sparse, read_at, site_set, strided_sites


def _dense_depthwise(dense, kernel, strides, dilation):
    """channel c through tf.nn.convolution(SAME) with kernel[..., c:c+1, :]."""
    channels = kernel.shape[-2]
    outs = [tf.nn.convolution(dense[..., c:c + 1], kernel[..., c:c + 1, :], strides=strides,
                              dilations=dilation, padding="SAME") for c in range(channels)]
    return tf.concat(outs, -1).numpy()  # channel c's filters are c * M + m


@pytest.mark.parametrize("d,kernel_size,strides,dilation,multiplier", [
    (3, 3, 1, 1, 1), (3, 3, 2, 1, 2), (3, 2, 2, 1, 1), (3, 3, 1, 2, 3), (1, 5, 1, 1, 2),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_dense(rng, d, kernel_size, strides, dilation, multiplier, dtype):
    shape = tuple(-(-6 // s) * s for s in as_tuple(strides, d))
    x, dense = random_sparse(rng, shape, 5, dtype=dtype)
    kernel = rng.normal(size=as_tuple(kernel_size, d) + (5, multiplier)).astype(dtype)
    bias = rng.normal(size=5 * multiplier).astype(dtype)
    y = so.ops.depthwise_conv(x, kernel, bias, strides=strides, dilation_rate=dilation)
    expected = _dense_depthwise(dense, kernel, as_tuple(strides, d), dilation) + bias
    cell = as_tuple(strides, d)
    assert y.features.shape[1] == 5 * multiplier and y.features.dtype == dtype
    assert y.stride == cell
    if all(s == 1 for s in cell):
        np.testing.assert_array_equal(y.coordinates.numpy(), x.coordinates.numpy())
    else:
        assert site_set(y.coordinates) == strided_sites(x.coordinates, cell)
        # The output sites are Conv's with the same strides.
        conv = so.ops.conv(x, kernel[..., :1], strides=strides)
        np.testing.assert_array_equal(y.coordinates.numpy(), conv.coordinates.numpy())
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, cell), dtype)


def test_matches_depthwise_conv2d(rng):
    x, dense = random_sparse(rng, (7, 9), 4, dtype=np.float64)
    kernel = rng.normal(size=(3, 3, 4, 2))
    y = so.ops.depthwise_conv(x, kernel)
    expected = tf.nn.depthwise_conv2d(dense, kernel, [1, 1, 1, 1], "SAME").numpy()
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, (1, 1)), np.float64)


@pytest.mark.parametrize("multiplier", [1, 3])
def test_gradients(rng, multiplier):
    x, _ = random_sparse(rng, (4, 4, 4), 3, dtype=np.float64, density=0.4)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 3, multiplier)))
    features = tf.constant(x.features)
    for strides in (1, 2):
        def f(feats, k):
            return so.ops.depthwise_conv(x.with_features(feats), k, strides=strides).features

        theoretical, numerical = tf.test.compute_gradient(f, [features, kernel])
        for t, n in zip(theoretical, numerical):
            np.testing.assert_allclose(t, n, atol=1e-8)

    # Second order: the gradient ops are differentiable too.
    def grad_of(feats, k):
        with tf.GradientTape() as tape:
            tape.watch([feats, k])
            y = so.ops.depthwise_conv(x.with_features(feats), k).features
            loss = tf.reduce_sum(tf.sin(y))
        gx, gk = tape.gradient(loss, [feats, k])
        return tf.reduce_sum(gx * gx) + tf.reduce_sum(gk * gk)

    theoretical, numerical = tf.test.compute_gradient(grad_of, [features, kernel])
    for t, n in zip(theoretical, numerical):  # finite differences of a sin: O(delta^2)
        np.testing.assert_allclose(t, n, rtol=1e-3, atol=1e-5)


def test_reference_path_agrees(rng):
    x, _ = random_sparse(rng, (5, 5, 5), 6, dtype=np.float64)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 6, 2)))
    y = so.ops.depthwise_conv(x, kernel, strides=2)
    with so.config.implementation("reference"):
        r = so.ops.depthwise_conv(x, kernel, strides=2)
    np.testing.assert_array_equal(r.coordinates.numpy(), y.coordinates.numpy())
    np.testing.assert_allclose(r.features.numpy(), y.features.numpy(), rtol=1e-12, atol=1e-12)


def test_deterministic_and_hypercross(rng):
    x, _ = random_sparse(rng, (8, 8, 8), 16, density=0.5)
    kernel = rng.normal(size=(7, 16, 1)).astype(np.float32)  # hypercross of size 3 in 3D
    a = so.ops.depthwise_conv(x, kernel, region="hypercross").features.numpy()
    b = so.ops.depthwise_conv(x, kernel, region="hypercross").features.numpy()
    np.testing.assert_array_equal(a, b)


def test_layer_keras_weights_and_config(rng):
    x, dense = random_sparse(rng, (6, 6), 3, dtype=np.float32)
    layer = so.layers.DepthwiseConv(kernel_size=3, depth_multiplier=2)
    y = layer(x)
    assert layer.kernel.shape == (3, 3, 3, 2) and layer.bias.shape == (6,)
    keras_layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")
    keras_layer.build((None, 6, 6, 3))
    keras_layer.set_weights(layer.get_weights())
    expected = keras_layer(dense).numpy()
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, (1, 1)), np.float32)
    clone = so.layers.DepthwiseConv.from_config(layer.get_config())
    assert clone.depth_multiplier == 2 and clone.get_config() == layer.get_config()
    # Functional model: the output spec has C * M channels.
    inputs = so.layers.Input(3, dimension=2)
    outputs = so.layers.DepthwiseConv(3, strides=2, depth_multiplier=2)(inputs)
    assert outputs.features.shape[-1] == 6
    model = keras.Model(inputs, so.layers.GlobalMaxPool()(outputs))
    assert model(x).shape == (2, 6)


def test_edge_cases_and_errors(rng):
    empty = so.SparseTensor(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.int32))
    y = so.ops.depthwise_conv(empty, np.ones((3, 3, 3, 4, 2), np.float32))
    assert y.features.shape == (0, 8)
    x, _ = random_sparse(rng, (4, 4, 4), 4)
    with pytest.raises(ValueError, match="input channels"):
        so.ops.depthwise_conv(x, np.ones((3, 3, 3, 5, 1), np.float32))
    with pytest.raises(ValueError, match="rank 5"):
        so.ops.depthwise_conv(x, np.ones((3, 3, 4, 1), np.float32))
    with pytest.raises(ValueError, match="bias has 3 entries"):
        so.ops.depthwise_conv(x, np.ones((3, 3, 3, 4, 1), np.float32), np.ones(3, np.float32))
    lib = so._loader.library()  # pylint: disable=protected-access
    with pytest.raises(tf.errors.InvalidArgumentError, match="kernel must be"):
        lib.sparse_ops_depthwise_conv(tf.ones([2, 3]), tf.ones([1, 4, 1]),
                                      tf.constant([0, 1], tf.int64), [0], [1],
                                      tf.constant(2, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiplier must be"):
        lib.sparse_ops_depthwise_conv_backprop_kernel(
            tf.ones([2, 3]), tf.ones([2, 5]), tf.constant([0, 1], tf.int64), [0], [1],
            tf.constant(2, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiplier must be"):
        lib.sparse_ops_depthwise_conv_backprop_kernel(  # 4 * 2^62 would overflow
            tf.ones([2, 4]), tf.ones([2, 4]), tf.constant([0, 1], tf.int64), [0], [1],
            tf.constant(2**62, tf.int64))
