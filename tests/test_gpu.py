"""The GPU kernels against the CPU kernels (marked `gpu`; skipped where
TensorFlow sees no GPU, e.g. in CI, which only compiles the CUDA build).

Each op runs on /GPU:0 and /CPU:0 on the same inputs: the coordinate ops,
attention and the pooling ops must be identical (averaged unpooling to
rounding), the convolutions equal to rounding (float64 to 1e-12), the
errors the same InvalidArgumentError; gradients through so.ops.conv too,
and a MinkUNet14 training step.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import _loader

from conftest import random_sparse

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not tf.config.list_physical_devices("GPU"),
                       reason="no GPU visible to TensorFlow"),
]

CUBE = np.array([[x, y, z] for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)],
                np.int32)


def _on(device, fn, *args):
    with tf.device(device):
        out = fn(*args)
    return tf.nest.map_structure(lambda t: t.numpy(), out)


def _both(fn, *args):
    return _on("/CPU:0", fn, *args), _on("/GPU:0", fn, *args)


def _errors(fn, *args):
    """The InvalidArgumentError messages of fn on the CPU and on the GPU,
    without TensorFlow's device-specific wrapping."""
    messages = []
    for device in ("/CPU:0", "/GPU:0"):
        with tf.device(device), pytest.raises(tf.errors.InvalidArgumentError) as error:
            fn(*args)
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.value.message)
        messages.append(re.sub(r"\s*\[Op:.*$", "", message, flags=re.S))
    return messages


def _sites(rng, n=400, extent=12, batch=2):
    coords = np.unique(np.concatenate(
        [rng.integers(0, batch, (n, 1)), rng.integers(-extent, extent, (n, 3))], 1), axis=0)
    return tf.constant(coords, tf.int32)


def test_coordinate_ops_are_identical():
    rng = np.random.default_rng(0)
    lib = _loader.library()
    coords = _sites(rng)
    other = _sites(rng, n=300)
    stride = tf.constant([2, 1, 3], tf.int32)
    box = tf.constant(CUBE[:18], tf.int32)  # not symmetric
    for a, b, offsets in [(coords, coords, tf.constant(CUBE)),  # submanifold, mirrored
                          (coords, other, box), (coords[:0], other, box)]:
        cpu, gpu = _both(lib.sparse_ops_kernel_map, a, b, offsets, stride)
        for c, g in zip(cpu, gpu):
            np.testing.assert_array_equal(c, g)
    for sites, strides in [(coords, [2, 2, 2]), (other, [2, 1, 3]), (coords[:0], [2, 2, 2])]:
        cpu, gpu = _both(lib.sparse_ops_strided_coordinates, sites, tf.constant(strides))
        np.testing.assert_array_equal(gpu, cpu)
        cpu, gpu = _both(lib.sparse_ops_generative_coordinates, sites, box,
                         tf.constant(strides))
        np.testing.assert_array_equal(gpu, cpu)
    queries = tf.concat([other, coords[::3], tf.constant([[-1, 0, 0, 0], [0, 2**31 - 1, 0, 0]])],
                        0)
    cpu, gpu = _both(lib.sparse_ops_coordinate_lookup, coords, queries)
    np.testing.assert_array_equal(gpu, cpu)
    for inputs in ([coords, other], [other, coords[:0], coords, other], [coords[:0]]):
        cpu, gpu = _both(lib.sparse_ops_coordinate_union, inputs)
        for c, g in zip(tf.nest.flatten(cpu), tf.nest.flatten(gpu)):
            np.testing.assert_array_equal(g, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_is_identical(dtype):
    rng = np.random.default_rng(4)
    lib = _loader.library()
    coords = _sites(rng, n=500, batch=3)
    n = int(coords.shape[0])
    # Ties (a few levels), signed zeros, infinities and NaN.
    values = rng.integers(-3, 4, (n, 11)).astype(dtype)
    values[rng.random((n, 11)) < 0.05] = np.nan
    values[0, :4] = [-0.0, 0.0, np.inf, -np.inf]
    for features in (tf.constant(values), tf.constant(rng.normal(size=(n, 11)), dtype)):
        for mode in ("value", "abs"):
            for per in ("channel", "site"):
                for k in (0, 1, 23, 10**6):
                    args = (features, coords, tf.constant(k, tf.int64))
                    cpu, gpu = _both(
                        lambda *a: lib.sparse_ops_attention(*a, mode=mode, per=per), *args)
                    for c, g in zip(cpu, gpu):
                        np.testing.assert_array_equal(g, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_voxelize_is_identical(dtype):
    rng = np.random.default_rng(5)
    lib = _loader.library()
    n = 2000
    points = np.concatenate([rng.integers(0, 3, (n, 1)), rng.normal(size=(n, 3)) * 3], 1)
    features = rng.integers(-3, 4, (n, 6)).astype(dtype)  # ties for max
    features[::17, 2] = np.nan
    size = tf.constant([0.9, 1.1, 0.7], tf.float64)
    for mode in ("average", "sum", "max", "first"):
        cpu, gpu = _both(lambda m=mode: lib.sparse_ops_voxelize(
            tf.constant(points.astype(dtype)), features, size, mode=m))
        for c, g in zip(cpu, gpu):
            np.testing.assert_array_equal(g, c)
    x_cpu, x_gpu = _both(lambda: so.ops.voxelize(points, features, 0.5)[0].features)
    np.testing.assert_array_equal(x_gpu, x_cpu)
    bad = points.copy()
    bad[7, 2] = np.inf
    cpu, gpu = _errors(lib.sparse_ops_voxelize, bad, features, size)
    assert cpu == gpu == "points row 7 has a non-finite position inf in column 2"


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_conv_and_gradients_match_cpu(dtype, tol):
    rng = np.random.default_rng(1)
    lib = _loader.library()
    coords = _sites(rng)
    offsets = tf.constant(CUBE)
    splits, in_rows, out_rows = lib.sparse_ops_kernel_map(
        coords, coords, offsets, tf.constant([1, 1, 1], tf.int32))
    n = int(coords.shape[0])
    features = tf.constant(rng.normal(size=(n, 37)), dtype)
    kernel = tf.constant(rng.normal(size=(27, 37, 70)), dtype)
    grad = tf.constant(rng.normal(size=(n, 70)), dtype)
    rows = tf.constant(n, tf.int64)
    cases = [
        (lib.sparse_ops_conv, (features, kernel, splits, in_rows, out_rows, rows)),
        (lib.sparse_ops_conv_backprop_input, (grad, kernel, splits, in_rows, out_rows, rows)),
        (lib.sparse_ops_conv_backprop_kernel, (features, grad, splits, in_rows, out_rows)),
    ]
    for op, args in cases:
        cpu, gpu = _both(op, *args)
        np.testing.assert_allclose(gpu, cpu, rtol=tol, atol=tol * np.abs(cpu).max())
        again = _on("/GPU:0", op, *args)
        np.testing.assert_array_equal(again, gpu)  # deterministic


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_ops_are_identical(dtype):
    rng = np.random.default_rng(6)
    lib = _loader.library()
    coords = _sites(rng)
    splits, in_rows, out_rows = lib.sparse_ops_kernel_map(
        coords, coords, tf.constant(CUBE), tf.constant([1, 1, 1], tf.int32))
    n = int(coords.shape[0])
    for multiplier in (1, 3):
        features = tf.constant(rng.normal(size=(n, 13)), dtype)
        kernel = tf.constant(rng.normal(size=(27, 13, multiplier)), dtype)
        grad = tf.constant(rng.normal(size=(n, 13 * multiplier)), dtype)
        rows = tf.constant(n, tf.int64)
        for op, args in [
                (lib.sparse_ops_depthwise_conv, (features, kernel, splits, in_rows, out_rows,
                                                 rows)),
                (lib.sparse_ops_depthwise_conv_backprop_input, (grad, kernel, splits, in_rows,
                                                                out_rows, rows)),
                (lib.sparse_ops_depthwise_conv_backprop_kernel, (
                    features, grad, splits, in_rows, out_rows,
                    tf.constant(multiplier, tf.int64)))]:
            cpu, gpu = _both(op, *args)
            np.testing.assert_array_equal(gpu, cpu)  # the same sums in the same order


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_ops_match_cpu(dtype):
    rng = np.random.default_rng(4)
    lib = _loader.library()
    fine = _sites(rng, n=900, extent=9, batch=3)
    one = tf.constant([1, 1, 1], tf.int32)
    coarse = lib.sparse_ops_strided_coordinates(fine, tf.constant([2, 2, 2], tf.int32))
    box = tf.constant(CUBE[CUBE.min(axis=1) >= 0])  # 2x2x2
    kmap = lib.sparse_ops_kernel_map(fine, coarse, box, one)
    n_in, n_out = int(fine.shape[0]), int(coarse.shape[0])
    # Ties (small integers) and a NaN: max pooling's tie and NaN rules.
    values = rng.integers(-3, 4, (n_in, 13)).astype(dtype) / 3
    values[5, 2] = np.nan
    features = tf.constant(values)
    grad_out = tf.constant(rng.normal(size=(n_out, 13)), dtype)
    batch = fine[:, 0]
    rows_in, rows_out = tf.constant(n_in, tf.int64), tf.constant(n_out, tf.int64)
    exact = [
        (lib.sparse_ops_max_pool, (features, *kmap, rows_out), {}),
        (lib.sparse_ops_sum_pool, (features, *kmap, rows_out), {"average": False}),
        (lib.sparse_ops_sum_pool, (features, *kmap, rows_out), {"average": True}),
        (lib.sparse_ops_sum_pool_transpose, (grad_out, *kmap, rows_in), {"average": False}),
        (lib.sparse_ops_global_max_pool, (features, batch, tf.constant(4, tf.int64)), {}),
        (lib.sparse_ops_global_sum_pool, (features, batch, tf.constant(4, tf.int64)),
         {"average": True}),
        (lib.sparse_ops_global_sum_pool_grad, (grad_out[:4], batch), {"average": True}),
    ]
    for op, args, attrs in exact:
        cpu, gpu = _both(lambda: op(*args, **attrs))
        for c, g in zip(tf.nest.flatten(cpu), tf.nest.flatten(gpu)):
            np.testing.assert_array_equal(g, c, err_msg=op.__name__)
    _, argmax = _on("/CPU:0", lib.sparse_ops_max_pool, features, *kmap, rows_out)
    cpu, gpu = _both(lib.sparse_ops_max_pool_grad, grad_out, argmax, rows_in)
    np.testing.assert_array_equal(gpu, cpu)
    cpu, gpu = _both(lambda: lib.sparse_ops_sum_pool_transpose(grad_out, *kmap, rows_in,
                                                               average=True))
    np.testing.assert_allclose(gpu, cpu, rtol=1e-6 if dtype == np.float32 else 1e-14)
    # Bad index inputs: the CPU's error.
    bad_argmax = argmax.copy()
    bad_argmax[3, 1] = n_in
    bad_batch = batch.numpy().copy()
    bad_batch[7] = 9
    cpu, gpu = _errors(lib.sparse_ops_max_pool_grad, grad_out, bad_argmax, rows_in)
    assert cpu == gpu and cpu.startswith("argmax entry 40 is")
    cpu, gpu = _errors(lib.sparse_ops_global_max_pool, features, bad_batch,
                       tf.constant(4, tf.int64))
    assert cpu == gpu and cpu.startswith("batch index of row 7 is 9")


def test_gradients_through_conv_match_cpu():
    rng = np.random.default_rng(2)
    x, _ = random_sparse(rng, (8, 8, 8), 5, dtype=np.float64, origin=-3)
    kernel = tf.Variable(rng.normal(size=(3, 3, 3, 5, 6)))

    def step():
        with tf.GradientTape() as tape:
            tape.watch(x.features)
            y = so.ops.conv(x, kernel, strides=2)
            loss = tf.reduce_sum(y.features ** 2)
        return tape.gradient(loss, [x.features, kernel])

    cpu, gpu = _both(step)
    for c, g in zip(cpu, gpu):
        np.testing.assert_allclose(g, c, rtol=1e-10, atol=1e-10)


def test_gpu_errors_match_cpu():
    lib = _loader.library()
    duplicate = tf.constant([[0, 1, 1, 1], [0, 2, 2, 2], [0, 1, 1, 1]], tf.int32)
    one = tf.constant([1, 1, 1])
    cpu, gpu = _errors(lib.sparse_ops_kernel_map, duplicate, duplicate, CUBE, one)
    assert cpu == gpu and cpu.startswith("coordinates has duplicate sites: rows 0 and 2")
    negative = tf.constant([[0, 1, 1, 1], [-2, 2, 2, 2]], tf.int32)
    cpu, gpu = _errors(lib.sparse_ops_strided_coordinates, negative, tf.constant([2, 2, 2]))
    assert cpu == gpu == "coordinates row 1 has a negative batch index -2"
    cpu, gpu = _errors(lib.sparse_ops_attention, tf.ones([2, 3]), negative,
                       tf.constant(1, tf.int64))
    assert cpu == gpu == "coordinates row 1 has a negative batch index -2"
    valid = negative[:1]
    cpu, gpu = _errors(lib.sparse_ops_coordinate_union, [valid, negative])
    assert cpu == gpu == "coordinates[1] row 1 has a negative batch index -2"
    cpu, gpu = _errors(lib.sparse_ops_coordinate_union, [valid, duplicate])
    assert cpu == gpu and cpu.startswith("coordinates[1] has duplicate sites: rows 0 and 2")
    # Duplicates among separate output sites: the CPU's "out_coordinates:" error.
    sites = tf.constant([[0, 0, 0, 0], [0, 4, 4, 4]], tf.int32)
    cpu, gpu = _errors(lib.sparse_ops_kernel_map, sites, duplicate, CUBE, one)
    assert cpu == gpu and cpu.startswith("out_coordinates: coordinates has duplicate")
    # A map that repeats an input row within an offset: fine forwards,
    # refused by the transposing ops on both devices.
    repeated = (tf.constant([0, 2], tf.int64), tf.constant([1, 1]), tf.constant([0, 1]))
    grad, rows = tf.ones([2, 3]), tf.constant(4, tf.int64)
    for messages in (_errors(lib.sparse_ops_conv_backprop_input, grad, tf.ones([1, 2, 3]),
                             *repeated, rows),
                     _errors(lib.sparse_ops_sum_pool_transpose, grad, *repeated, rows)):
        assert messages[0] == messages[1]
        assert messages[0].startswith("kernel map pair 1 repeats input row 1")
    # A map whose rows point outside the features: an error, never a fault.
    features = tf.ones([4, 2])
    kernel = tf.ones([1, 2, 3])
    bad_map = (tf.constant([0, 2], tf.int64), tf.constant([0, 9]), tf.constant([0, 1]))
    for device in ("/CPU:0", "/GPU:0"):
        with tf.device(device), pytest.raises(tf.errors.InvalidArgumentError,
                                              match="out of range"):
            lib.sparse_ops_conv(features, kernel, *bad_map, tf.constant(4, tf.int64))
    # validate_map=False: the GPU skips the check and stays in bounds.
    with tf.device("/GPU:0"):
        out = lib.sparse_ops_conv(features, kernel, *bad_map, tf.constant(4, tf.int64),
                                  validate_map=False)
    assert out.shape == (4, 3)


def test_minkunet14_training_step_matches_cpu():
    rng = np.random.default_rng(3)
    x, _ = random_sparse(rng, (10, 10, 10), 3, batch=2, density=0.3, origin=-4)
    labels = tf.constant(rng.integers(0, 2, x.features.shape[0]))

    def train_step():
        tf.keras.utils.set_random_seed(7)
        net = so.models.MinkUNet14(2, planes=(4, 6, 8, 8, 6, 6, 4, 4), init_dim=4)
        optimizer = tf.keras.optimizers.SGD(0.1)
        with tf.GradientTape() as tape:
            logits = net(x, training=True).features
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss, [v for v in net.trainable_variables]

    (cpu_loss, cpu_vars), (gpu_loss, gpu_vars) = _both(train_step)
    np.testing.assert_allclose(gpu_loss, cpu_loss, rtol=1e-4)
    for c, g in zip(cpu_vars, gpu_vars):
        np.testing.assert_allclose(g, c, rtol=1e-3, atol=1e-4)
