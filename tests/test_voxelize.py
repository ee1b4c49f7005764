"""so.ops.voxelize: raw points to a SparseTensor inside the graph.

Checked against so.utils.sparse_quantize (numpy) on the same points, against
the pure-TF reference path, with numerical gradients, in graph mode with an
unknown number of points, in tf.data and in a SavedModel; and every bad
input gives a clear error naming the argument.
"""

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import utils

MODES = ("average", "sum", "max", "first")


def _points(rng, n=3000, d=3, batch=3, scale=4.0):
    b = rng.integers(0, batch, (n, 1)).astype(np.float64)
    return np.concatenate([b, rng.normal(size=(n, d)) * scale], 1)


def _quantize(points, features, voxel_size, mode):
    """sparse_quantize with the batch column as an axis of voxel size 1."""
    d = points.shape[1] - 1
    sizes = np.concatenate([[1.0], np.broadcast_to(voxel_size, [d])])
    coords, merged, inverse = utils.sparse_quantize(
        points, features, voxel_size=sizes, mode=mode, return_inverse=True)
    return coords, merged, inverse


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agrees_with_sparse_quantize(mode, dtype):
    rng = np.random.default_rng(0)
    points = _points(rng)
    # Few levels: many ties for "max"; a coarse grid: many points per site.
    features = rng.integers(-3, 4, (len(points), 5)).astype(dtype)
    features[::7] = rng.normal(size=features[::7].shape)
    voxel_size = [0.9, 1.3, 2.0]
    x, inverse = so.ops.voxelize(points.astype(dtype), features, voxel_size, mode)
    coords, merged, want_inverse = _quantize(points.astype(dtype).astype(np.float64),
                                             features, voxel_size, mode)
    np.testing.assert_array_equal(x.coordinates.numpy(), coords)
    np.testing.assert_array_equal(inverse.numpy(), want_inverse)
    assert x.features.dtype == dtype
    # Sums in float64 in input order on both sides: equal, not just close.
    np.testing.assert_array_equal(x.features.numpy(), merged)
    assert int(x.stride_tensor[0]) == 1


def test_counts_without_features_and_2d_5d():
    rng = np.random.default_rng(1)
    for d in (1, 2, 5):
        points = _points(rng, n=500, d=d, scale=2.0)
        x, inverse = so.ops.voxelize(points, voxel_size=0.5)
        coords, _, want_inverse = _quantize(points, np.ones((len(points), 1)), 0.5, "sum")
        np.testing.assert_array_equal(x.coordinates.numpy(), coords)
        np.testing.assert_array_equal(inverse.numpy(), want_inverse)
        counts = np.bincount(want_inverse, minlength=len(coords))
        np.testing.assert_array_equal(x.features.numpy()[:, 0], counts)
        assert x.features.dtype == tf.float32 and x.features.shape[1] == 1


@pytest.mark.parametrize("mode", MODES)
def test_reference_path_agrees(mode):
    rng = np.random.default_rng(2)
    points = _points(rng, n=800)
    features = rng.normal(size=(len(points), 3))
    features[5, 1] = np.nan
    x, inverse = so.ops.voxelize(points, features, 1.5, mode)
    with so.config.implementation("reference"):
        r, r_inverse = so.ops.voxelize(points, features, 1.5, mode)
    np.testing.assert_array_equal(r.coordinates.numpy(), x.coordinates.numpy())
    np.testing.assert_array_equal(r_inverse.numpy(), inverse.numpy())
    np.testing.assert_allclose(r.features.numpy(), x.features.numpy(), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradient(mode):
    rng = np.random.default_rng(3)
    points = _points(rng, n=60, scale=1.0)
    features = tf.constant(rng.normal(size=(60, 3)))  # no ties: max is differentiable

    def merged(f):
        return so.ops.voxelize(points, f, 0.8, mode)[0].features

    theoretical, numerical = tf.test.compute_gradient(merged, [features])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)
    # max / first: the gradient reaches only the point whose value was kept.
    if mode in ("max", "first"):
        with tf.GradientTape() as tape:
            tape.watch(features)
            x, inverse = so.ops.voxelize(points, features, 0.8, mode)
            loss = tf.reduce_sum(x.features)
        grad = tape.gradient(loss, features).numpy()
        assert np.all(grad.sum(0) == len(x.coordinates))  # one point per site and channel
        assert set(np.unique(grad)) <= {0.0, 1.0}


def test_unknown_number_of_points_in_graph_and_tf_data():
    rng = np.random.default_rng(4)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None, 2], tf.float32)])
    def fn(points, features):
        x, inverse = so.ops.voxelize(points, features, 0.5)
        assert x.features.shape.as_list() == [None, 2]
        assert x.coordinates.shape.as_list() == [None, 4]
        assert inverse.shape.as_list() == [None]
        return x.coordinates, x.features, inverse

    points = _points(rng, n=300).astype(np.float32)
    features = rng.normal(size=(300, 2)).astype(np.float32)
    coords, merged, inverse = fn(points, features)
    x, want_inverse = so.ops.voxelize(points, features, 0.5)
    np.testing.assert_array_equal(coords.numpy(), x.coordinates.numpy())
    np.testing.assert_array_equal(inverse.numpy(), want_inverse.numpy())

    clouds = [_points(rng, n=n).astype(np.float32) for n in (50, 120, 7)]
    data = tf.data.Dataset.from_generator(
        lambda: iter(clouds), output_signature=tf.TensorSpec([None, 4], tf.float32))
    data = data.map(lambda p: so.ops.voxelize(p, voxel_size=0.3)[0].coordinates)
    for cloud, coords in zip(clouds, data):
        np.testing.assert_array_equal(coords.numpy(),
                                      _quantize(cloud.astype(np.float64),
                                                np.ones((len(cloud), 1)), 0.3, "sum")[0])


def test_saved_model_on_raw_points(tmp_path):
    class Counter(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, points):
            x, inverse = so.ops.voxelize(points, voxel_size=0.25)
            return tf.gather(x.features[:, 0], inverse)  # per point: its site's count

    tf.saved_model.save(Counter(), str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    points = np.array([[0, 0.1, 0.1, 0.1], [0, 0.2, 0.2, 0.2], [1, 0.1, 0.1, 0.1]],
                      np.float32)
    np.testing.assert_array_equal(loaded(points).numpy(), [2, 2, 1])


def test_edge_cases():
    # No points, one point, int and float16 inputs, integer features.
    x, inverse = so.ops.voxelize(np.zeros((0, 3)), np.zeros((0, 2), np.float32))
    assert x.coordinates.shape == (0, 3) and x.features.shape == (0, 2) and inverse.shape == (0,)
    x, inverse = so.ops.voxelize([[2, -0.5, 7.9]], [[3.0]], voxel_size=[1.0, 2.0])
    np.testing.assert_array_equal(x.coordinates.numpy(), [[2, -1, 3]])
    np.testing.assert_array_equal(inverse.numpy(), [0])
    x, _ = so.ops.voxelize(np.array([[0, 5, -5], [0, 5, -5]], np.int64),
                           np.array([[1], [4]], np.int32), mode="max")
    assert x.features.dtype == tf.float32 and x.features.numpy().tolist() == [[4]]
    x, _ = so.ops.voxelize(np.array([[0, 5, -5], [0, 5, -5]], np.int64),
                           np.array([[1], [4]], np.int32), mode="average")
    assert x.features.dtype == tf.float32 and x.features.numpy().tolist() == [[2.5]]
    x, _ = so.ops.voxelize(np.array([[0, 1.0, 2.0]], np.float16),
                           np.array([[1.5]], np.float16))
    assert x.features.dtype == tf.float16
    # Coordinates at the int32 limits, and rows too wide for one 64-bit key
    # (the comparison sort): still np.unique's order.
    big = np.array([[0, 2**31 - 1, -2**31, 0], [3, -2**31, 2**31 - 1, 5],
                    [0, 2**31 - 1, -2**31, 0], [1, 0, 0, 2**31 - 1]], np.float64)
    x, inverse = so.ops.voxelize(big)
    np.testing.assert_array_equal(x.coordinates.numpy(), np.unique(big.astype(np.int64), axis=0))
    np.testing.assert_array_equal(inverse.numpy(), [0, 2, 0, 1])


def test_bad_inputs():
    good = np.array([[0, 0.5, 0.5, 0.5]])
    for points, match in [
        (np.array([[0, np.nan, 0, 0]]), "points row 0 has a non-finite position nan"),
        (np.array([[0, 0, 0, 0], [0, 0, np.inf, 0]]), "points row 1 has a non-finite position"),
        (np.array([[-1, 0, 0, 0]]), "points row 0 has batch index -1"),
        (np.array([[0.5, 0, 0, 0]]), "points row 0 has batch index 0.5"),
        (np.array([[0, 3e9, 0, 0]]), "lies outside the int32 range"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            so.ops.voxelize(points)
    with pytest.raises(tf.errors.InvalidArgumentError, match="lies outside the int32 range"):
        so.ops.voxelize(np.array([[0, 1.0, 0, 0]]), voxel_size=1e-12)
    for size in (0.0, -1.0, np.inf, [1.0, 0.0, 1.0]):
        with pytest.raises(ValueError, match="voxel_size must be finite and > 0"):
            so.ops.voxelize(good, voxel_size=size)

    @tf.function
    def traced(size):
        return so.ops.voxelize(good, voxel_size=size)[0].coordinates

    with pytest.raises(tf.errors.InvalidArgumentError, match="voxel_size must be finite and > 0"):
        traced(tf.constant(0.0))
    with pytest.raises(ValueError, match="voxel_size must be a scalar or 3 sizes"):
        so.ops.voxelize(good, voxel_size=[1.0, 2.0])
    with pytest.raises(ValueError, match="mode must be one of"):
        so.ops.voxelize(good, mode="median")
    with pytest.raises(ValueError, match="points must be"):
        so.ops.voxelize(np.zeros((4,)))
    with pytest.raises(ValueError, match="at least one position"):
        so.ops.voxelize(np.zeros((4, 1)))
    with pytest.raises(ValueError, match="features has 2 rows but points has 1"):
        so.ops.voxelize(good, np.zeros((2, 1)))
    with pytest.raises(TypeError, match="points must be"):
        so.ops.voxelize([["a", "b"]])
    with pytest.raises(TypeError, match="features must be float or int"):
        so.ops.voxelize(good, np.array([[True]]))
