"""Tests of sparse pooling: MaxPool, AvgPool, SumPool, Unpool and their ops.

References: dense `tf.nn.max_pool` / a dense convolution with a per-channel
ones kernel read at the output sites, and a brute-force dict oracle for
unpooling. The raw ops' input checks run in a child process, so that a
crash fails the test instead of killing the run.
"""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import _loader

from conftest import (assert_close, as_tuple, random_sparse, read_at,
                      same_offsets, site_set, strided_sites)

C = 3
HAVE_LIBRARY = _loader.try_library() is not None
SHAPES = {2: (12, 12), 3: (6, 6, 6)}


def _strides_for(d, stride):
    return stride


def _dense_window_sum(dense, pool, stride):
    """Depthwise conv with a ones kernel: identity per channel (float64)."""
    d = dense.ndim - 2
    c = dense.shape[-1]
    kernel = np.ones(as_tuple(pool, d) + (1, 1)) * np.eye(c)
    return tf.nn.convolution(tf.constant(dense, tf.float64), tf.constant(kernel),
                             strides=stride, padding="SAME").numpy()


def _dense_count(dense, pool, stride):
    mask = np.any(dense != 0, axis=-1, keepdims=True).astype(np.float64)
    return _dense_window_sum(mask, pool, stride)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("pool", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_max_pool_matches_dense(impl, rng, d, pool, stride):
    x, dense = random_sparse(rng, SHAPES[d], C)
    x = so.SparseTensor(np.abs(x.features.numpy()), x.coordinates)
    dense = np.abs(dense)
    y = so.ops.max_pool(x, pool, stride)
    expected = tf.nn.max_pool(dense, pool, stride, padding="SAME").numpy()
    assert site_set(y.coordinates) == strided_sites(x.coordinates, stride)
    assert tuple(y.stride) == (stride,) * d
    assert_close(y.features, read_at(expected, y.coordinates, stride))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("pool,stride", [(2, 2), (3, 2), (3, 1), (2, 3), (3, 3)])
def test_sum_and_avg_pool_match_dense(impl, rng, d, pool, stride):
    x, dense = random_sparse(rng, SHAPES[d], C, dtype=np.float64)
    s = so.ops.sum_pool(x, pool, stride)
    a = so.ops.avg_pool(x, pool, stride)
    total = _dense_window_sum(dense, pool, stride)
    count = _dense_count(dense, pool, stride)
    assert site_set(s.coordinates) == strided_sites(x.coordinates, stride)
    np.testing.assert_array_equal(s.coordinates, a.coordinates)
    expected_sum = read_at(total, s.coordinates, stride)
    expected_count = read_at(count, s.coordinates, stride)
    if pool >= stride:  # windows cover every input site
        assert np.all(expected_count >= 1)
    assert_close(s.features, expected_sum)
    # A window without active sites (pool < stride) averages to 0.
    assert_close(a.features, expected_sum / np.maximum(expected_count, 1))


def test_pool_layers_and_float32(impl, rng):
    x, dense = random_sparse(rng, (8, 8), C)
    x = so.SparseTensor(np.abs(x.features.numpy()), x.coordinates)
    y = so.layers.MaxPool()(x)
    expected = tf.nn.max_pool(np.abs(dense), 2, 2, padding="SAME").numpy()
    assert y.features.dtype == tf.float32
    assert_close(y.features, read_at(expected, y.coordinates, 2))
    s = so.layers.SumPool(pool_size=2)(x)
    a = so.layers.AvgPool(pool_size=(2, 2), strides=2)(x)
    np.testing.assert_array_equal(s.coordinates, y.coordinates)
    assert np.all(a.features.numpy() <= y.features.numpy() + 1e-6)


def _brute_unpool(x, pool, stride):
    """{fine site: sum of the coarse features whose window reaches it}."""
    c = np.asarray(x.coordinates).astype(np.int64)
    f = np.asarray(x.features, np.float64)
    d = c.shape[1] - 1
    t_out = np.array(x.stride, np.int64) // np.array(as_tuple(stride, d))
    out = {}
    for row, feat in zip(c.tolist(), f):
        for off in same_offsets(pool, 1, stride, d):
            site = (row[0],) + tuple(int(v) for v in np.array(row[1:]) + off * t_out)
            out[site] = out.get(site, 0) + feat
    return out


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("pool,stride", [(2, 2), (3, 2), (2, 1), (3, 1), (4, 2)])
def test_unpool_matches_brute_force(impl, rng, d, pool, stride):
    x, _ = random_sparse(rng, (4,) * d, C, dtype=np.float64, stride=2, density=0.3)
    y = so.ops.unpool(x, pool, stride)
    expected = _brute_unpool(x, pool, stride)
    assert site_set(y.coordinates) == sorted(expected)
    assert tuple(y.stride) == (2 // stride,) * d
    got = {tuple(r): f for r, f in zip(y.coordinates.numpy().tolist(),
                                       y.features.numpy())}
    assert_close(np.array([got[k] for k in sorted(expected)]),
                 np.array([expected[k] for k in sorted(expected)]))


def test_unpool_children_get_parent_features(impl, rng):
    x, _ = random_sparse(rng, (8, 8, 8), C)
    pooled = so.ops.max_pool(x, 2)
    up = so.layers.Unpool(2)(pooled)
    assert tuple(up.stride) == (1, 1, 1)
    parents = {tuple(r): f for r, f in zip(pooled.coordinates.numpy().tolist(),
                                           pooled.features.numpy())}
    assert len(up.coordinates) == 8 * len(parents)
    for r, f in zip(up.coordinates.numpy().tolist(), up.features.numpy()):
        parent = (r[0],) + tuple(v // 2 * 2 for v in r[1:])
        np.testing.assert_array_equal(f, parents[parent])


def test_unpool_is_the_transpose_of_sum_pool(impl, rng):
    # <sum_pool(x), y> == <x, unpool(y)> when unpool's sites include x's.
    x, _ = random_sparse(rng, (6, 6), C, dtype=np.float64)
    s = so.ops.sum_pool(x, 3, 2)
    y = so.SparseTensor(rng.normal(size=s.features.shape), s.coordinates, stride=2)
    u = so.ops.unpool(y, 3, 2)
    table = {tuple(r): i for i, r in enumerate(u.coordinates.numpy().tolist())}
    rows = [table[tuple(r)] for r in x.coordinates.numpy().tolist()]
    lhs = np.sum(s.features.numpy() * y.features.numpy())
    rhs = np.sum(x.features.numpy() * u.features.numpy()[rows])
    assert_close(lhs, rhs)


def _distinct_input(rng, shape=(5, 5), channels=2):
    x, _ = random_sparse(rng, shape, channels, dtype=np.float64, density=0.5)
    n = x.features.shape[0] * channels
    values = rng.permutation(n).reshape(-1, channels) / n + 0.1
    return so.SparseTensor(values, x.coordinates)


def _features_of(op, args):
    """features -> the op's output features (global pools: the dense [B, C])."""
    fn = getattr(so.ops, op)
    if op == "global_pool":
        return lambda x: fn(x, *args)
    return lambda x: fn(x, *args).features


@pytest.mark.parametrize("op,args", [
    ("max_pool", (2, 2)), ("max_pool", (3, 1)), ("avg_pool", (3, 2)),
    ("sum_pool", (2, 1)), ("unpool", (3, 1)), ("unpool", (2, 2)), ("global_pool", ("max",)),
    ("global_pool", ("avg",)), ("global_pool", ("sum",))])
def test_gradients(impl, rng, op, args):
    # Unpooling has many outputs per input: a smaller input keeps the
    # Jacobian (one backward pass per output entry) quick.
    x = _distinct_input(rng, (3, 3) if op == "unpool" else (5, 5))
    if op == "unpool":  # a coarse input of stride 2
        x = so.SparseTensor(x.features, x.coordinates * [1, 2, 2], stride=2)
    fn = _features_of(op, args)

    @tf.function
    def f(features):
        return fn(so.SparseTensor(features, x.coordinates, x.stride_tensor))

    theoretical, numerical = tf.test.compute_gradient(f, [x.features])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
def test_max_pool_grad_second_order(rng):
    x = _distinct_input(rng)
    kmap = so.ops.kernel_map(x.coordinates, x.coordinates,
                             so.geometry.offsets_array(3, 1, "hypercube", 2, 1))
    lib = _loader.library()
    _, argmax = lib.sparse_ops_max_pool(x.features, *kmap, tf.constant(
        x.features.shape[0], tf.int64))
    g = tf.constant(rng.normal(size=x.features.shape))

    def f(grad):
        return lib.sparse_ops_max_pool_grad(grad, argmax, tf.constant(
            x.features.shape[0], tf.int64))

    theoretical, numerical = tf.test.compute_gradient(f, [g])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
@pytest.mark.parametrize("op,args", [
    ("max_pool", (2, 2)), ("max_pool", (3, 1)), ("max_pool", (3, 2)),
    ("avg_pool", (3, 2)), ("avg_pool", (2, 1)), ("sum_pool", (2, 2)),
    ("sum_pool", (3, 2)), ("unpool", (2, 1)), ("unpool", (3, 2)),
    ("global_pool", ("max",)), ("global_pool", ("avg",)), ("global_pool", ("sum",))])
def test_custom_matches_reference(rng, op, args):
    x = _distinct_input(rng, (7, 7, 7), 5)
    if op == "unpool":
        x = so.SparseTensor(x.features, x.coordinates * [1, 2, 2, 2], stride=2)
    results = {}
    for name in ("custom", "reference"):
        with so.config.implementation(name):
            features = tf.Variable(x.features)
            with tf.GradientTape() as tape:
                out = getattr(so.ops, op)(
                    so.SparseTensor(features, x.coordinates, x.stride_tensor), *args)
                y = out if op == "global_pool" else out.features
                loss = tf.reduce_sum(y * tf.sin(y))
            coords = None if op == "global_pool" else out.coordinates.numpy()
            results[name] = (coords, y.numpy(),
                             tf.convert_to_tensor(tape.gradient(loss, features)).numpy())
    (c_a, f_a, g_a), (c_b, f_b, g_b) = results["custom"], results["reference"]
    np.testing.assert_array_equal(c_a, c_b)
    assert_close(f_a, f_b)
    assert_close(g_a, g_b)


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
def test_max_pool_deterministic_with_ties(rng):
    # All features equal: the argmax is the first pair in offset order, and
    # the overlapping gradient sums are bitwise repeatable.
    x, _ = random_sparse(rng, (9, 9, 9), 4, density=0.5)
    ones = tf.Variable(tf.ones_like(x.features))
    grads = []
    for _ in range(3):
        with tf.GradientTape() as tape:
            y = so.ops.max_pool(so.SparseTensor(ones, x.coordinates), 3, 1)
            loss = tf.reduce_sum(y.features * tf.cos(tf.range(
                tf.size(y.features), dtype=tf.float32)[:, None][:y.features.shape[0]]))
        grads.append(tape.gradient(loss, ones).numpy())
    np.testing.assert_array_equal(y.features, np.ones_like(y.features))
    for g in grads[1:]:
        np.testing.assert_array_equal(g, grads[0])
    # The first offset of a 3-window at stride 1 is (-1, -1, -1).
    kmap = so.ops.kernel_map(x.coordinates, x.coordinates,
                             so.geometry.offsets_array(3, 1, "hypercube", 3, 1))
    _, argmax = _loader.library().sparse_ops_max_pool(
        ones, *kmap, tf.constant(x.features.shape[0], tf.int64))
    splits, in_rows, out_rows = (np.asarray(t) for t in kmap)
    first = {}
    for k in range(len(splits) - 1):
        for p in range(splits[k], splits[k + 1]):
            first.setdefault(int(out_rows[p]), int(in_rows[p]))
    expected = np.array([first[o] for o in range(x.features.shape[0])])
    np.testing.assert_array_equal(argmax.numpy(), np.repeat(expected[:, None], 4, 1))


def _brute_pool(x, pool, stride, mode):
    """{output site: max / mean / sum over the active input sites of its
    window} by dict lookups (numpy; handles any coordinates)."""
    c = np.asarray(x.coordinates).astype(np.int64)
    f = np.asarray(x.features, np.float64)
    d = c.shape[1] - 1
    t = np.array(as_tuple(x.stride, d), np.int64)
    table = {tuple(r): v for r, v in zip(c.tolist(), f)}
    reduce = {"max": np.max, "avg": np.mean, "sum": np.sum}[mode]
    out = {}
    for site in strided_sites(c, t * np.array(as_tuple(stride, d))):
        window = [(site[0],) + tuple(int(v) for v in np.array(site[1:]) + off * t)
                  for off in same_offsets(pool, 1, stride, d)]
        values = [table[w] for w in window if w in table]
        out[site] = reduce(values, axis=0) if values else np.zeros(f.shape[1])
    return out


def _as_dict(y):
    return {tuple(r): v for r, v in zip(np.asarray(y.coordinates).tolist(),
                                        np.asarray(y.features))}


@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
@pytest.mark.parametrize("pool,stride", [(2, 2), (3, 2), (3, 1), (2, 3)])
def test_pool_negative_coordinates_and_signed_features(impl, rng, mode, pool, stride):
    # Sites around the origin (negative coordinates round down to the
    # output grid) and features of both signs (max is not clipped at 0).
    x, _ = random_sparse(rng, (5, 6, 5), C, dtype=np.float64, origin=(-4, -3, -5))
    y = getattr(so.ops, f"{mode}_pool")(x, pool, stride)
    expected = _brute_pool(x, pool, stride, mode)
    got = _as_dict(y)
    assert sorted(got) == sorted(expected)
    assert_close(np.array([got[k] for k in sorted(got)]),
                 np.array([expected[k] for k in sorted(got)]))


def test_one_site(impl):
    f = np.array([[1.5, -2.0]])
    x = so.SparseTensor(f, np.array([[0, -3, 5]], np.int32))
    for op in ("max_pool", "avg_pool", "sum_pool"):
        y = getattr(so.ops, op)(x, 3, 2)
        np.testing.assert_array_equal(y.coordinates, [[0, -4, 4]])
        np.testing.assert_array_equal(y.features, f)
        u = so.ops.unpool(y, 2)
        np.testing.assert_array_equal(u.coordinates,
                                      [[0, -4, 4], [0, -4, 5], [0, -3, 4], [0, -3, 5]])
        np.testing.assert_array_equal(u.features, np.repeat(f, 4, 0))
    for mode in ("max", "avg", "sum"):
        np.testing.assert_array_equal(so.ops.global_pool(x, mode), f)


def _np_global(f, batch, num, mode):
    out = np.zeros((num, f.shape[1]))
    for b in range(num):
        rows = f[batch == b]
        if len(rows):
            out[b] = {"max": rows.max(0), "avg": rows.mean(0), "sum": rows.sum(0)}[mode]
    return out


@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
def test_global_pool_many_rows_unsorted(impl, rng, mode):
    # More rows than one partial-sum chunk (2048) per item, rows of the
    # items interleaved, item 2 empty, item 3 a single row.
    n = 5000
    batch = rng.choice([0, 1, 4], n).astype(np.int32)
    batch[rng.integers(n)] = 3
    coords = np.concatenate([batch[:, None], rng.integers(-50, 50, (n, 2))], 1)
    coords[:, 1] = np.arange(n)  # unique sites
    f = rng.normal(size=(n, 4))
    y = so.ops.global_pool(so.SparseTensor(f, coords.astype(np.int32)), mode)
    assert y.shape == (5, 4)
    assert_close(y, _np_global(f, batch, 5, mode))


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
def test_global_max_pool_ties_go_to_the_lowest_row(rng):
    coords = np.array([[1, 5, 0], [0, 1, 1], [1, 2, 2], [0, 0, 0], [1, 0, 9]], np.int32)
    features = tf.Variable(np.ones((5, 2)))
    with tf.GradientTape() as tape:
        y = so.ops.global_pool(so.SparseTensor(features, coords), "max")
        loss = tf.reduce_sum(y * [[1.0, 2.0], [3.0, 4.0]])
    grad = tape.gradient(loss, features).numpy()
    expected = np.zeros((5, 2))
    expected[1] = [1, 2]  # item 0: rows 1 and 3, the lower wins
    expected[0] = [3, 4]  # item 1: rows 0, 2 and 4
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
@pytest.mark.parametrize("average", [False, True])
def test_raw_sum_pool_ops_are_adjoint(rng, average):
    # <sum_pool(a), b> == <a, sum_pool_transpose(b)>, and the transpose op's
    # own gradient (second order of pooling) is numerically right.
    x = _distinct_input(rng, (6, 6))
    out_c = so.ops.strided_coordinates(x.coordinates, [2, 2])
    kmap = so.ops.kernel_map(x.coordinates, out_c,
                             so.geometry.offsets_array(3, 1, "hypercube", 2, 2), [1, 1])
    lib = _loader.library()
    n_in, n_out = x.features.shape[0], out_c.shape[0]
    a = tf.constant(rng.normal(size=(n_in, 2)))
    b = tf.constant(rng.normal(size=(n_out, 2)))
    pooled = lib.sparse_ops_sum_pool(a, *kmap, n_out, average=average)
    back = lib.sparse_ops_sum_pool_transpose(b, *kmap, n_in, average=average)
    assert_close(np.sum(pooled * b), np.sum(a * back))

    def transpose(t):
        return lib.sparse_ops_sum_pool_transpose(t, *kmap, n_in, average=average)

    theoretical, numerical = tf.test.compute_gradient(transpose, [b])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
@pytest.mark.parametrize("average", [False, True])
def test_raw_global_sum_pool_grad_second_order(rng, average):
    batch = tf.constant([2, 0, 2, 2, 0], tf.int32)
    g = tf.constant(rng.normal(size=(3, 2)))
    lib = _loader.library()

    def grad_op(t):
        return lib.sparse_ops_global_sum_pool_grad(t, batch, average=average)

    theoretical, numerical = tf.test.compute_gradient(grad_op, [g])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)
    # Row i gets its item's gradient row (item 1 has no rows).
    counts = np.array([2.0, 1.0, 3.0]) if average else np.ones(3)
    assert_close(grad_op(g), (g.numpy() / counts[:, None])[batch.numpy()])


DETERMINISM_CHILD = r"""
import hashlib, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
import sparse_ops as so
so.config.set_implementation("custom")
rng = np.random.default_rng(0)
sites = np.unique(rng.integers(-20, 20, (6000, 4)) % [2, 99, 99, 99], axis=0)
coords = tf.constant(sites.astype(np.int32))
features = tf.Variable(rng.normal(size=(len(sites), 16)).astype(np.float32))
digest = hashlib.sha256()
calls = [(so.ops.max_pool, (2, 2)), (so.ops.avg_pool, (3, 2)), (so.ops.sum_pool, (3, 1)),
         (so.ops.global_pool, ("max",)), (so.ops.global_pool, ("avg",)),
         (so.ops.global_pool, ("sum",))]
for fn, args in calls:
    with tf.GradientTape() as tape:
        y = fn(so.SparseTensor(features, coords), *args)
        if not isinstance(y, tf.Tensor):
            y = so.ops.unpool(y, 2, 2).features if fn is so.ops.max_pool else y.features
        weights = tf.sin(tf.range(tf.size(y), dtype=y.dtype)[:, None][:tf.shape(y)[0]])
        loss = tf.reduce_sum(y * weights)
    for t in (y, tape.gradient(loss, features)):
        digest.update(tf.convert_to_tensor(t).numpy().tobytes())
print("@@" + digest.hexdigest())
"""


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
def test_bitwise_deterministic_across_thread_counts():
    # One inline thread against a pool of 5: different shards, same bits.
    procs = [subprocess.Popen([sys.executable, "-c", DETERMINISM_CHILD, str(threads)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for threads in (1, 5)]
    digests = set()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1].startswith("@@"), out
        digests.add(out.strip().splitlines()[-1])
    assert len(digests) == 1, digests


@pytest.mark.parametrize("op", ["max_pool", "avg_pool", "sum_pool"])
def test_empty_input(impl, op):
    x = so.SparseTensor(np.zeros((0, C), np.float32), np.zeros((0, 4), np.int32))
    y = getattr(so.ops, op)(x, 2)
    assert y.features.shape == (0, C) and y.coordinates.shape[0] == 0
    u = so.ops.unpool(y, 2)
    assert u.features.shape == (0, C)
    with tf.GradientTape() as tape:
        features = tf.Variable(x.features)
        tape.watch(features)
        z = getattr(so.ops, op)(so.SparseTensor(features, x.coordinates), 2)
        loss = tf.reduce_sum(z.features)
    assert tape.gradient(loss, features).shape == (0, C)


def test_tf_function_and_float16(impl, rng):
    x, dense = random_sparse(rng, (6, 6), C)
    x = so.SparseTensor(np.abs(x.features.numpy()), x.coordinates)

    @tf.function
    def f(features, coordinates):
        return so.ops.max_pool(so.SparseTensor(features, coordinates), 3, 2).features

    out = f(x.features, x.coordinates)
    y = so.ops.max_pool(x, 3, 2)
    assert_close(out, y.features)
    h = so.ops.avg_pool(so.SparseTensor(tf.cast(x.features, tf.float16),
                                        x.coordinates), 3, 2)
    assert h.features.dtype == tf.float16
    assert_close(h.features, so.ops.avg_pool(x, 3, 2).features, dtype=np.float16)


@pytest.mark.parametrize("name", ["MaxPool", "AvgPool", "SumPool", "Unpool"])
def test_get_config_round_trip(name):
    layer = getattr(so.layers, name)(pool_size=(2, 3), strides=(1, 3), name="p")
    config = layer.get_config()
    json.dumps(config)
    assert config["pool_size"] == (2, 3) and config["strides"] == (1, 3)
    for clone in (type(layer).from_config(config),
                  keras.layers.deserialize(keras.layers.serialize(layer))):
        assert type(clone) is type(layer)
        assert clone.get_config() == config
    default = getattr(so.layers, name)()
    assert default.get_config()["pool_size"] == 2
    assert default.get_config()["strides"] is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        so.layers.MaxPool(0)
    with pytest.raises(ValueError):
        so.layers.AvgPool(2, strides=(1, 0))
    x = so.SparseTensor(np.ones((1, 1), np.float32), np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError):
        so.ops.unpool(x, 2)  # stride 1 is not divisible by 2


CHILD = r'''
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import sparse_ops as so
lib = so._loader.library()
i64 = lambda v: tf.constant(v, tf.int64)
i32 = lambda v: tf.constant(v, tf.int32)
f = tf.constant(np.ones((4, 2), np.float32))
good = (i64([0, 2, 4]), i32([0, 1, 2, 3]), i32([0, 1, 0, 1]))
cases = {
  "splits_not_monotone": lambda: lib.sparse_ops_max_pool(
      f, i64([0, 3, 2]), i32([0, 1]), i32([0, 1]), i64(2)),
  "splits_past_end": lambda: lib.sparse_ops_max_pool(
      f, i64([0, 9]), i32([0, 1]), i32([0, 1]), i64(2)),
  "in_row_out_of_range": lambda: lib.sparse_ops_max_pool(
      f, i64([0, 2]), i32([0, 99]), i32([0, 1]), i64(2)),
  "negative_in_row": lambda: lib.sparse_ops_max_pool(
      f, i64([0, 2]), i32([-5, 1]), i32([0, 1]), i64(2)),
  "out_row_out_of_range": lambda: lib.sparse_ops_max_pool(
      f, i64([0, 2]), i32([0, 1]), i32([0, 7]), i64(2)),
  "out_rows_not_increasing": lambda: lib.sparse_ops_max_pool(
      f, i64([0, 2]), i32([0, 1]), i32([1, 1]), i64(2)),
  "pairs_mismatch": lambda: lib.sparse_ops_max_pool(
      f, i64([0, 2]), i32([0, 1, 2]), i32([0, 1]), i64(2)),
  "negative_rows": lambda: lib.sparse_ops_max_pool(f, *good, i64(-1)),
  "huge_rows": lambda: lib.sparse_ops_max_pool(f, *good, i64(2**40)),
  "features_not_matrix": lambda: lib.sparse_ops_max_pool(
      tf.ones([4], tf.float32), *good, i64(2)),
  "argmax_too_big": lambda: lib.sparse_ops_max_pool_grad(
      tf.ones([2, 2]), i32([[0, 1], [4, 0]]), i64(4)),
  "argmax_negative": lambda: lib.sparse_ops_max_pool_grad(
      tf.ones([2, 2]), i32([[0, -2], [1, 0]]), i64(4)),
  "argmax_int_min": lambda: lib.sparse_ops_max_pool_grad(
      tf.ones([2, 2]), i32([[0, -2**31], [1, 0]]), i64(4)),
  "argmax_shape": lambda: lib.sparse_ops_max_pool_grad(
      tf.ones([2, 2]), i32([[0, 1, 2], [1, 0, 0]]), i64(4)),
  "grad_negative_rows": lambda: lib.sparse_ops_max_pool_grad(
      tf.ones([2, 2]), i32([[0, 1], [1, 0]]), i64(-3)),
}
for name, fn in cases.items():
    for wrap in (lambda g: g, tf.function):
        try:
            wrap(fn)()
        except tf.errors.InvalidArgumentError:
            pass
        except ValueError:
            pass  # caught by the shape function while tracing
        else:
            raise SystemExit("no error for " + name)
# A valid call still works after all that.
out, argmax = lib.sparse_ops_max_pool(f, *good, i64(2))
assert out.numpy().tolist() == [[1, 1], [1, 1]], out
print("@@OK")
'''


@pytest.mark.skipif(not HAVE_LIBRARY, reason="op library not built")
def test_raw_ops_reject_garbage():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "@@OK" in proc.stdout, (
        proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
