"""Convolution with pruned (zero) weights: the C++ op skips zero kernel
offsets, zero channels and, below a measured density, takes a sparse-weight
product. Whatever it skips, the values must be those of the dense-weight
convolution: dense TensorFlow on the densified input is the oracle, forward
and backward, and the op's three weight paths ('auto', 'dense': nothing
skipped, 'sparse') must agree, bit for bit where the AVX2 float kernels run
on both sides (output channels a multiple of 8).
"""

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import _loader
from sparse_ops.ops import coordinates as so_coordinates

from conftest import assert_close, random_sparse, read_at

PATTERNS = ("unstructured_0.05", "unstructured_0.3", "offsets", "channels",
            "in_channels", "all_zero", "none")


def prune(rng, kernel, pattern):
    """kernel [..., C_in, C_out] with weights zeroed by `pattern`."""
    w = kernel.copy()
    flat = w.reshape(-1, *w.shape[-2:])  # a view: [K, C_in, C_out]
    if pattern.startswith("unstructured"):
        w[rng.random(w.shape) >= float(pattern.split("_")[1])] = 0
    elif pattern == "offsets":
        flat[rng.random(len(flat)) < 0.6] = 0
        flat[0] = 0
    elif pattern == "channels":  # whole output channels and input-output pairs
        flat[:, :, rng.random(w.shape[-1]) < 0.5] = 0
        flat[:, rng.random(w.shape[-2]) < 0.3, :2] = 0
    elif pattern == "in_channels":
        flat[:, rng.random(w.shape[-2]) < 0.6, :] = 0
    elif pattern == "all_zero":
        w[...] = 0
    return w


def _dense_grads(dense_in, idx, kernel, upstream):
    """Output at idx and gradients of sum(out * upstream) of dense TF conv."""
    @tf.function
    def run(features, kernel):
        with tf.GradientTape() as tape:
            tape.watch([features, kernel])
            dense = tf.scatter_nd(idx, features, dense_in)
            out = tf.gather_nd(tf.nn.convolution(dense, kernel, padding="SAME"), idx)
            loss = tf.reduce_sum(out * upstream)
        return [out] + tape.gradient(loss, [features, kernel])
    return run


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("channels,dtype", [((16, 16), np.float32),
                                            ((5, 13), np.float32),
                                            ((6, 8), np.float64)])
def test_pruned_conv_matches_dense_tf(rng, pattern, channels, dtype):
    """so.ops.conv with pruned weights == tf.nn.convolution with the same
    weights: output and the gradients of features and kernel."""
    c_in, c_out = channels
    shape = (7, 6, 5)
    x, _ = random_sparse(rng, shape, c_in, dtype=dtype, density=0.4)
    kernel = prune(rng, rng.uniform(-1, 1, (3, 3, 3, c_in, c_out)).astype(dtype), pattern)
    features, k = tf.constant(x.features), tf.constant(kernel)
    upstream = rng.uniform(-1, 1, (x.features.shape[0], c_out)).astype(dtype)
    with tf.GradientTape() as tape:
        tape.watch([features, k])
        y = so.ops.conv(x.with_features(features), k)
        loss = tf.reduce_sum(y.features * upstream)
    got = [y.features] + tape.gradient(loss, [features, k])
    idx = x.coordinates.numpy()
    expected = _dense_grads([2, *shape, c_in], idx, kernel, upstream)(features, k)
    for g, e in zip(got, expected):  # output, features grad, kernel grad
        assert_close(tf.convert_to_tensor(g).numpy(), e.numpy(), dtype)


def _op_inputs(rng, c_in, c_out, dtype, sites=600):
    coords = np.unique(rng.integers(-6, 6, (sites, 3)), axis=0)
    coords = np.concatenate([rng.integers(0, 2, (len(coords), 1)), coords], 1)
    coords = tf.constant(np.unique(coords, axis=0).astype(np.int32))
    kmap = so_coordinates.kernel_map(coords, coords, so.kernel_offsets(3, dimension=3),
                                     tf.constant([1, 1, 1]))
    n = coords.shape[0]
    features = rng.normal(size=(n, c_in)).astype(dtype)
    grad = rng.normal(size=(n, c_out)).astype(dtype)
    return kmap, n, features, grad


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("c_in,c_out", [(64, 64), (16, 32), (24, 8), (7, 16), (9, 5),
                                        (3, 11)])
def test_weight_paths_agree(rng, pattern, c_in, c_out):
    """The op's 'auto', 'dense' and 'sparse' weight paths give the same
    forward and input gradient: bit for bit with AVX2 kernels on both sides
    (the output channels of the product a multiple of 8), else to rounding."""
    lib = _loader.library()
    kmap, n, features, grad = _op_inputs(rng, c_in, c_out, np.float32)
    kernel = prune(rng, rng.normal(size=(27, c_in, c_out)).astype(np.float32), pattern)
    fwd = {p: lib.sparse_ops_conv(features, kernel, *kmap, n, weight_path=p).numpy()
           for p in ("dense", "sparse", "auto")}
    bwd = {p: lib.sparse_ops_conv_backprop_input(grad, kernel, *kmap, n,
                                                 weight_path=p).numpy()
           for p in ("dense", "sparse", "auto")}
    for results, channels in ((fwd, c_out), (bwd, c_in)):
        for path in ("sparse", "auto"):
            if channels % 8 == 0:
                np.testing.assert_array_equal(results[path], results["dense"])
            else:
                assert_close(results[path], results["dense"], np.float32, atol=1e-5)
    if pattern == "all_zero":
        assert not fwd["auto"].any() and not bwd["auto"].any()


def test_weight_paths_float64_and_empty(rng):
    """float64 (no sparse-weight product: zero offsets are skipped) and a map
    with no pairs, on every path."""
    lib = _loader.library()
    kmap, n, features, grad = _op_inputs(rng, 6, 8, np.float64)
    kernel = prune(rng, rng.normal(size=(27, 6, 8)), "offsets")
    want = lib.sparse_ops_conv(features, kernel, *kmap, n, weight_path="dense").numpy()
    for path in ("sparse", "auto"):
        np.testing.assert_array_equal(
            lib.sparse_ops_conv(features, kernel, *kmap, n, weight_path=path).numpy(), want)
    empty = (tf.zeros([28], tf.int64), tf.zeros([0], tf.int32), tf.zeros([0], tf.int32))
    for path in ("dense", "sparse", "auto"):
        out = lib.sparse_ops_conv(tf.zeros([0, 64]), tf.zeros([27, 64, 64]), *empty, 3,
                                  weight_path=path)
        np.testing.assert_array_equal(out.numpy(), np.zeros([3, 64], np.float32))


def test_pruned_conv_layer_and_strided(rng):
    """A Conv layer with half of its weights pruned, strided, against dense TF."""
    x, dense = random_sparse(rng, (8, 8), 8, density=0.5)
    kernel = prune(rng, rng.uniform(-1, 1, (3, 3, 8, 16)).astype(np.float32),
                   "unstructured_0.05")
    y = so.ops.conv(x, kernel, strides=2)
    expected = tf.nn.convolution(dense, kernel, strides=2, padding="SAME").numpy()
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, 2), np.float32)
