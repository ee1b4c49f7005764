"""Inputs that once crashed or misled: oversized shapes, malformed maps,
cache lifetimes, stride mismatches, dilated custom regions, functional
Keras models."""

import gc
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops.ops import cache as so_cache

_RAW_CASES = textwrap.dedent("""
    import tensorflow as tf, sparse_ops as so
    lib = so._loader.library()
    i64 = lambda v: tf.constant(v, tf.int64)
    i32 = lambda v: tf.constant(v, tf.int32)
    empty = tf.zeros([0], tf.int32)
    cases = {
        "conv_output_overflows": lambda: lib.sparse_ops_conv(
            tf.zeros([0, 0]), tf.zeros([1, 0, 2**62]), i64([0, 0]), empty, empty, i64(4)),
        "kernel_grad_overflows": lambda: lib.sparse_ops_conv_backprop_kernel(
            tf.zeros([0, 2**40]), tf.zeros([0, 2**40]), i64([0, 0]), empty, empty),
        "too_many_channels": lambda: lib.sparse_ops_conv_backprop_kernel(
            tf.zeros([0, 2**20]), tf.zeros([0, 8]), i64([0, 0]), empty, empty),
        "repeated_input_row": lambda: lib.sparse_ops_conv_backprop_input(
            tf.ones([2, 1]), tf.ones([1, 1, 1]), i64([0, 2]), i32([0, 0]), i32([0, 1]),
            i64(1)),
        "generative_too_large": lambda: lib.sparse_ops_generative_coordinates(
            tf.zeros([0, 3], tf.int32), tf.zeros([2**62, 2], tf.int32), i32([1, 1])),
    }
    for name, fn in cases.items():
        try:
            fn()
            print(name, "NO ERROR")
        except tf.errors.InvalidArgumentError as e:
            print(name, "InvalidArgumentError")
        except Exception as e:
            print(name, type(e).__name__)
""")


def test_oversized_and_malformed_raw_inputs_raise_instead_of_aborting():
    out = subprocess.run([sys.executable, "-c", _RAW_CASES], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert len(lines) == 5, out.stdout
    for name, result in lines.items():
        assert result in ("InvalidArgumentError", "ResourceExhaustedError"), (name, result)


def _line(n):
    return so.SparseTensor(tf.ones([n, 1]), [[0, i] for i in range(n)])


def test_eager_cache_entries_die_with_their_tensors():
    so_cache.clear()
    gc.collect()
    for _ in range(5):
        y = so.ops.conv(_line(8), tf.ones([3, 1, 1]), strides=2)
        so.ops.conv_transpose(y, tf.ones([3, 1, 1]), strides=2)
    del y
    gc.collect()
    assert len(so_cache._eager_entries) == 0  # pylint: disable=protected-access


def test_graph_cache_lives_on_the_graph():
    so_cache.clear()

    @tf.function
    def f(features):
        x = so.SparseTensor(features, tf.constant([[0, i] for i in range(8)]))
        y = so.ops.conv(x, tf.ones([3, 1, 1]), strides=2)
        return so.ops.conv_transpose(y, tf.ones([3, 1, 1]), strides=2).features

    f(tf.ones([8, 1]))
    assert len(so_cache._eager_entries) == 0  # pylint: disable=protected-access


def test_conv_transpose_refuses_finer_sites_of_another_stride():
    x = _line(8)
    y = so.ops.conv(x, tf.ones([3, 1, 1]), strides=4)  # stride 4 from stride 1
    with pytest.raises(ValueError, match="out_coordinates"):
        so.ops.conv_transpose(y, tf.ones([3, 1, 1]), strides=2)  # would be stride 2
    z = so.ops.conv_transpose(y, tf.ones([4, 1, 1]), strides=4)
    assert z.coordinates is x.coordinates


def test_custom_region_is_dilated():
    region = np.array([[0, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(
        so.kernel_offsets(None, dilation=2, region=region).numpy(), region * 2)
    np.testing.assert_array_equal(
        so.kernel_offsets(None, dilation=(1, 3), region=region).numpy(),
        region * np.array([1, 3]))
    # The convolution uses them: the dilated custom region equals a dense
    # 2D convolution with a dilation-2 kernel that is zero outside the region.
    rng = np.random.default_rng(0)
    mask = rng.random((1, 6, 6)) < 0.5
    dense = (rng.standard_normal((1, 6, 6, 2)) * mask[..., None]).astype(np.float32)
    x = so.SparseTensor.from_dense(dense)
    kernel = rng.standard_normal((3, 2, 3)).astype(np.float32)
    y = so.ops.conv(x, kernel, region=region, dilation_rate=2)
    full = np.zeros((2, 2, 2, 3), np.float32)
    for k, (a, b) in enumerate(region):
        full[a, b] = kernel[k]
    # Region offsets start at 0 (no SAME centring): pad at the end only.
    ref = tf.nn.convolution(np.pad(dense, [[0, 0], [0, 2], [0, 2], [0, 0]]), full,
                            dilations=2, padding="VALID").numpy()
    c = x.coordinates.numpy()
    np.testing.assert_allclose(y.features.numpy(), ref[c[:, 0], c[:, 1], c[:, 2]],
                               rtol=1e-5, atol=1e-5)


def test_functional_unet_without_coordinates_argument():
    inp = keras.Input(shape=(8, 8, 2), sparse=True)
    h = so.layers.Conv(4, 3)(inp)
    d = so.layers.Conv(8, 2, strides=2)(h)
    u = so.layers.ConvTranspose(4, 2, strides=2)(d)
    out = keras.layers.Lambda(
        lambda t: tf.math.unsorted_segment_sum(t[0], t[1][:, 0], 2),
        output_shape=(4,))(u)
    model = keras.Model(inp, out)
    sp = tf.SparseTensor(tf.constant([[0, 1, 1, 0], [1, 3, 3, 1]], tf.int64),
                         tf.constant([1.0, 2.0]), [2, 8, 8, 2])
    # The same network run eagerly, layer by layer, with the model's weights.
    layers = [layer for layer in model.layers
              if isinstance(layer, (so.layers.Conv, so.layers.ConvTranspose))]
    x = so.SparseTensor.from_tf_sparse(sp)
    y = layers[2](layers[1](layers[0](x)))
    expected = tf.math.unsorted_segment_sum(y.features, y.coordinates[:, 0], 2)
    np.testing.assert_allclose(model(sp).numpy(), expected.numpy(), rtol=1e-5)


def test_layer_arguments_are_plain_ints_in_config():
    layer = so.layers.Conv(4, np.int64(3), strides=(np.int32(1), 1))
    config = layer.get_config()
    assert config["kernel_size"] == 3 and config["strides"] == (1, 1)
    with pytest.raises(ValueError, match="kernel_size"):
        so.layers.Conv(4, 0)


def test_long_stride_chains_refuse_to_wrap_int32():
    x = so.SparseTensor(tf.ones([1, 1]), [[0, 0]])
    kernel = tf.ones([1, 1, 1])
    for _ in range(30):  # tensor stride 2**30
        x = so.ops.conv(x, kernel, strides=2)
    assert x.stride == (2**30,)
    with pytest.raises(ValueError, match="overflows int32"):
        so.ops.conv(x, kernel, strides=2)


def test_huge_kernels_are_refused_before_building_offsets():
    with pytest.raises(ValueError, match="offsets"):
        so.kernel_offsets(3, dimension=20)  # 3**20 offsets


def test_eight_dimensional_conv_matches_reference():
    rng = np.random.default_rng(3)
    coords = np.unique(rng.integers(0, 3, (60, 9)), axis=0).astype(np.int32)
    coords[:, 0] = 0
    coords = np.unique(coords, axis=0)
    x = so.SparseTensor(rng.standard_normal((len(coords), 2)), coords)
    kernel = rng.standard_normal((2,) * 8 + (2, 3))
    y = so.ops.conv(x, kernel)
    with so.config.implementation("reference"):
        so_cache.clear()
        ref = so.ops.conv(x, kernel)
    np.testing.assert_allclose(y.features.numpy(), ref.features.numpy(), atol=1e-12)
    # and against a direct sum over the 256 offsets
    offsets = so.kernel_offsets(2, dimension=8).numpy()
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    k3 = kernel.reshape(256, 2, 3)
    expected = np.zeros((len(coords), 3))
    for o, c in enumerate(coords.tolist()):
        for k, off in enumerate(offsets):
            i = index.get((c[0],) + tuple(np.add(c[1:], off)))
            if i is not None:
                expected[o] += x.features.numpy()[i] @ k3[k]
    np.testing.assert_allclose(y.features.numpy(), expected, atol=1e-10)
