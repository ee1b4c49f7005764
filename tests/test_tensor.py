"""Tests of `so.SparseTensor` (docs/concepts.md, "Sites, coordinates and the
batch column").

Dense conversions are checked against a numpy scatter written here; sparse
interop against `tf.sparse.to_dense`.
"""

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

InvalidArgumentError = tf.errors.InvalidArgumentError


# -- helpers -------------------------------------------------------------------

def _unique_coordinates(rng, n, dimension, batch, low, high, stride=1):
    """n unique int32 rows [batch, x1..xD], spatial values multiples of stride."""
    seen, rows = set(), []
    while len(rows) < n:
        row = (int(rng.integers(0, batch)),) + tuple(
            int(v) * stride for v in rng.integers(low, high, size=dimension))
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return np.asarray(rows, np.int32).reshape(n, 1 + dimension)


def _random_tensor(seed=0, n=12, dimension=3, channels=2, batch=2, low=0, high=5,
                   stride=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    coords = _unique_coordinates(rng, n, dimension, batch, low, high, stride)
    feats = rng.normal(size=[n, channels]).astype(dtype)
    return feats, coords


def _numpy_dense(feats, coords, batch, spatial, stride=1, origin=None):
    """Scatter: out[b, (c - origin) // stride] = feats."""
    d = coords.shape[1] - 1
    origin = np.zeros(d, np.int64) if origin is None else np.asarray(origin)
    out = np.zeros([batch, *spatial, feats.shape[1]], feats.dtype)
    for f, c in zip(feats, coords):
        idx = (np.asarray(c[1:], np.int64) - origin) // np.asarray(stride)
        out[(c[0], *idx)] = f
    return out


def _site_dict(coords, feats):
    coords, feats = np.asarray(coords), np.asarray(feats)
    assert len(coords) == len(feats)
    out = {tuple(int(v) for v in c): f for c, f in zip(coords, feats)}
    assert len(out) == len(coords), "duplicate sites"
    return out


def _assert_same_sites(a_coords, a_feats, b_coords, b_feats, **tol):
    a, b = _site_dict(a_coords, a_feats), _site_dict(b_coords, b_feats)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], **tol)


# -- construction and properties --------------------------------------------

def test_properties_and_aliases():
    feats, coords = _random_tensor(n=7, dimension=3, channels=4)
    x = so.SparseTensor(feats, coords)
    assert x.F is x.features
    assert x.C is x.coordinates
    assert x.dimension == 3 and x.D == 3
    assert x.num_channels == 4
    assert x.stride == (1, 1, 1)
    assert x.features.dtype == tf.float32
    assert x.coordinates.dtype == tf.int32
    np.testing.assert_array_equal(x.features.numpy(), feats)
    np.testing.assert_array_equal(x.coordinates.numpy(), coords)


@pytest.mark.parametrize("stride,want", [(2, (2, 2)), ((1, 4), (1, 4)),
                                         (np.int64(3), (3, 3))])
def test_stride_is_a_tuple_of_dimension_ints(stride, want):
    feats, coords = _random_tensor(n=4, dimension=2, stride=4)
    x = so.SparseTensor(feats, coords, stride)
    assert isinstance(x.stride, tuple)
    assert x.stride == want
    assert all(isinstance(s, int) for s in x.stride)


def test_stride_is_a_tensor_when_not_static():
    feats, coords = _random_tensor(n=4, dimension=2, stride=2)

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def stride_of(s):
        x = so.SparseTensor(feats, coords, s)
        assert isinstance(x.stride, tf.Tensor)  # runs while tracing
        return x.stride

    np.testing.assert_array_equal(stride_of(tf.constant([2, 4])).numpy(), [2, 4])


@pytest.mark.parametrize("batch_rows,want", [([0, 0, 0], 1), ([0, 3, 1], 4),
                                             ([2], 3)])
def test_batch_size_is_max_batch_index_plus_one(batch_rows, want):
    coords = np.array([[b, i, 0] for i, b in enumerate(batch_rows)], np.int32)
    x = so.SparseTensor(np.ones([len(coords), 1], np.float32), coords)
    size = x.batch_size()
    assert isinstance(size, tf.Tensor) and size.shape.rank == 0
    assert size.dtype.is_integer
    assert int(size) == want


def test_int64_coordinates_are_accepted():
    feats, coords = _random_tensor(n=5, dimension=2, low=-3)
    x = so.SparseTensor(feats, coords.astype(np.int64))
    assert x.coordinates.dtype == tf.int32
    np.testing.assert_array_equal(x.coordinates.numpy(), coords)
    x = so.SparseTensor(feats, tf.constant(coords, tf.int64))
    assert x.coordinates.dtype == tf.int32
    np.testing.assert_array_equal(x.coordinates.numpy(), coords)


def test_int64_coordinates_at_the_int32_limits_are_accepted():
    coords = np.array([[0, -2**31, 2**31 - 1], [0, 0, 0]], np.int64)
    x = so.SparseTensor(np.ones([2, 1], np.float32), coords)
    np.testing.assert_array_equal(x.coordinates.numpy(), coords)


def test_int64_coordinates_outside_int32_are_rejected():
    coords = np.array([[0, 2**31, 0]], np.int64)
    with pytest.raises(InvalidArgumentError, match="int32"):
        so.SparseTensor(np.ones([1, 1], np.float32), coords)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_float_coordinates_are_cast(dtype):
    feats, coords = _random_tensor(n=6, dimension=3, low=-4)
    x = so.SparseTensor(feats, coords.astype(dtype))
    assert x.coordinates.dtype == tf.int32
    np.testing.assert_array_equal(x.coordinates.numpy(), coords)


def test_whole_float_coordinates_are_cast_in_tf_function():
    feats, coords = _random_tensor(n=6, dimension=2, low=-4)

    @tf.function
    def make(c):
        return so.SparseTensor(feats, c).coordinates

    out = make(tf.constant(coords, tf.float32))
    assert out.dtype == tf.int32
    np.testing.assert_array_equal(out.numpy(), coords)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_whole_float_coordinates_are_rejected(dtype):
    coords = np.array([[0, 1.0, 2.0], [0, 1.5, 2.0]], dtype)
    with pytest.raises(InvalidArgumentError, match="(?i)whole|integer"):
        so.SparseTensor(np.ones([2, 1], np.float32), coords)


def test_non_whole_float_coordinates_are_rejected_in_tf_function():
    @tf.function
    def make(c):
        return so.SparseTensor(tf.ones([2, 1]), c).coordinates

    with pytest.raises(InvalidArgumentError, match="(?i)whole|integer"):
        make(tf.constant([[0, 1.0, 2.0], [0, 0.25, 2.0]]))


def test_whole_float_coordinates_outside_int32_are_rejected():
    coords = np.array([[0, 3e9, 0]], np.float64)
    with pytest.raises(InvalidArgumentError, match="int32"):
        so.SparseTensor(np.ones([1, 1], np.float32), coords)


@pytest.mark.parametrize("n_feats,n_coords", [(3, 2), (2, 3), (0, 1)])
def test_row_count_mismatch_is_rejected(n_feats, n_coords):
    coords = np.array([[0, i, 0] for i in range(n_coords)], np.int32).reshape(-1, 3)
    with pytest.raises((ValueError, InvalidArgumentError), match="rows"):
        so.SparseTensor(np.ones([n_feats, 2], np.float32), coords)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16, tf.bfloat16])
def test_other_float_feature_dtypes_are_kept(dtype):
    feats, coords = _random_tensor(n=5, dimension=2, channels=3)
    x = so.SparseTensor(tf.cast(feats, dtype), coords)
    assert x.features.dtype == dtype
    dense = x.dense()
    assert dense.dtype == dtype
    batch = int(coords[:, 0].max()) + 1
    want = _numpy_dense(tf.cast(feats, dtype).numpy().astype(np.float64), coords,
                        batch, coords[:, 1:].max(0) + 1)
    np.testing.assert_array_equal(tf.cast(dense, tf.float64).numpy(), want)


def test_with_features_keeps_the_coordinates_object():
    feats, coords = _random_tensor(n=6, dimension=2, stride=2)
    x = so.SparseTensor(feats, coords, 2)
    new = tf.constant(np.arange(18, dtype=np.float64).reshape(6, 3))
    y = x.with_features(new)
    assert isinstance(y, so.SparseTensor)
    assert y.coordinates is x.coordinates
    assert y.stride == (2, 2)
    assert y.features.dtype == tf.float64 and y.num_channels == 3
    np.testing.assert_array_equal(y.features.numpy(), new.numpy())


# -- dense -----------------------------------------------------------------------

@pytest.mark.parametrize("dimension", [1, 2, 3])
def test_dense_matches_numpy_scatter(dimension):
    feats, coords = _random_tensor(seed=dimension, n=10, dimension=dimension,
                                   channels=3, batch=3)
    x = so.SparseTensor(feats, coords)
    shape = [6] * dimension
    got = x.dense(shape=shape).numpy()
    want = _numpy_dense(feats, coords, int(coords[:, 0].max()) + 1, shape)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_dense_default_shape_just_fits():
    feats, coords = _random_tensor(seed=4, n=9, dimension=2, channels=2, batch=2)
    x = so.SparseTensor(feats, coords)
    got = x.dense().numpy()
    want = _numpy_dense(feats, coords, int(coords[:, 0].max()) + 1,
                        coords[:, 1:].max(0) + 1)
    np.testing.assert_array_equal(got, want)


def test_dense_with_batch_in_shape():
    feats, coords = _random_tensor(seed=5, n=6, dimension=2, channels=2, batch=2)
    x = so.SparseTensor(feats, coords)
    got = x.dense(shape=[4, 5, 5]).numpy()
    np.testing.assert_array_equal(got, _numpy_dense(feats, coords, 4, [5, 5]))
    got = x.dense(shape=[4, 5, 5, 2]).numpy()
    np.testing.assert_array_equal(got, _numpy_dense(feats, coords, 4, [5, 5]))


def test_dense_with_min_coordinate_and_negative_coordinates():
    feats, coords = _random_tensor(seed=6, n=10, dimension=3, low=-3, high=3)
    x = so.SparseTensor(feats, coords)
    origin = [-3, -3, -3]
    got = x.dense(shape=[6, 6, 6], min_coordinate=origin).numpy()
    want = _numpy_dense(feats, coords, int(coords[:, 0].max()) + 1, [6, 6, 6],
                        origin=origin)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stride", [2, (2, 3)])
def test_dense_divides_by_the_stride(stride):
    s = np.broadcast_to(np.asarray(stride), [2])
    rng = np.random.default_rng(7)
    cells = _unique_coordinates(rng, 8, 2, 2, -2, 4)
    coords = cells.copy()
    coords[:, 1:] *= s
    feats = rng.normal(size=[8, 2]).astype(np.float32)
    x = so.SparseTensor(feats, coords, stride)
    origin = (-2 * s).tolist()
    got = x.dense(shape=[6, 6], min_coordinate=origin).numpy()
    want = _numpy_dense(feats, coords, int(coords[:, 0].max()) + 1, [6, 6],
                        stride=s, origin=origin)
    np.testing.assert_array_equal(got, want)
    # The grid cell of a site is (c - origin) / stride.
    want2 = _numpy_dense(feats, cells, int(cells[:, 0].max()) + 1, [6, 6],
                         origin=[-2, -2])
    np.testing.assert_array_equal(got, want2)


@pytest.mark.parametrize("coords,kwargs", [
    ([[0, 5, 0]], dict(shape=[5, 5])),
    ([[0, 0, 7]], dict(shape=[5, 5])),
    ([[0, -1, 0]], dict(shape=[5, 5])),
    ([[0, 1, 1]], dict(shape=[5, 5], min_coordinate=[2, 0])),
    ([[0, 10, 0]], dict(shape=[5, 5], min_coordinate=[4, 0])),
    ([[3, 1, 1]], dict(shape=[2, 5, 5])),
], ids=["x_high", "y_high", "negative", "below_origin", "beyond_origin", "batch"])
def test_dense_rejects_sites_outside_the_shape(coords, kwargs):
    x = so.SparseTensor(np.ones([len(coords), 1], np.float32), coords)
    with pytest.raises(InvalidArgumentError):
        x.dense(**kwargs)


def test_dense_rejects_sites_outside_the_shape_in_tf_function():
    @tf.function
    def dense(c):
        return so.SparseTensor(tf.ones([1, 1]), c).dense(shape=[4, 4])

    np.testing.assert_array_equal(dense(tf.constant([[0, 3, 3]])).numpy()[0, 3, 3],
                                  [1.0])
    with pytest.raises(InvalidArgumentError):
        dense(tf.constant([[0, 4, 3]]))


# -- from_dense -------------------------------------------------------------------

def _sparse_dense_input(seed, shape, density=0.3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    keep = rng.random(shape[:-1]) < density
    x *= keep[..., None]
    # A site with one zero channel stays a site.
    idx = np.argwhere(keep)[0]
    x[(*idx, 0)] = 0.0
    return x


@pytest.mark.parametrize("shape", [[2, 5, 3], [2, 4, 5, 2], [1, 3, 4, 3, 2]])
def test_from_dense_keeps_sites_with_any_non_zero_channel(shape):
    x = _sparse_dense_input(len(shape), shape)
    st = so.SparseTensor.from_dense(x)
    assert isinstance(st, so.SparseTensor)
    assert st.dimension == len(shape) - 2
    assert st.coordinates.dtype == tf.int32
    sites = np.argwhere(np.any(x != 0, axis=-1))
    want_feats = np.stack([x[tuple(s)] for s in sites])
    _assert_same_sites(st.coordinates.numpy(), st.features.numpy(), sites, want_feats)
    np.testing.assert_array_equal(st.dense(shape=shape).numpy(), x)


def test_from_dense_with_mask_keeps_masked_sites_even_if_zero():
    x = _sparse_dense_input(9, [2, 4, 4, 2])
    rng = np.random.default_rng(10)
    mask = rng.random([2, 4, 4]) < 0.5
    st = so.SparseTensor.from_dense(x, mask=mask)
    sites = np.argwhere(mask)
    want_feats = np.stack([x[tuple(s)] for s in sites])
    _assert_same_sites(st.coordinates.numpy(), st.features.numpy(), sites, want_feats)
    assert np.any(np.all(want_feats == 0, axis=1)), "test needs an all-zero site"


def test_from_dense_float64():
    x = _sparse_dense_input(11, [1, 5, 5, 2]).astype(np.float64)
    st = so.SparseTensor.from_dense(tf.constant(x))
    assert st.features.dtype == tf.float64
    np.testing.assert_array_equal(st.dense(shape=[1, 5, 5]).numpy(), x)


# -- tf.SparseTensor interop -------------------------------------------------------

@pytest.mark.parametrize("dimension", [1, 2, 3])
def test_to_tf_sparse_matches_dense(dimension):
    feats, coords = _random_tensor(seed=20 + dimension, n=9, dimension=dimension,
                                   channels=3, batch=2)
    feats[0, 1] = 0.0  # one element per NON-ZERO value
    feats[1, :] = 0.0
    x = so.SparseTensor(feats, coords)
    sp = x.to_tf_sparse()
    assert isinstance(sp, tf.SparseTensor)
    assert int(tf.size(sp.values)) == int(np.count_nonzero(feats))
    assert np.all(sp.values.numpy() != 0)
    want = _numpy_dense(feats, coords, int(coords[:, 0].max()) + 1,
                        coords[:, 1:].max(0) + 1)
    assert tuple(sp.dense_shape.numpy()) == want.shape
    np.testing.assert_array_equal(tf.sparse.to_dense(sp).numpy(), want)


def test_to_tf_sparse_with_shape():
    feats, coords = _random_tensor(seed=30, n=6, dimension=2, channels=2, batch=2)
    x = so.SparseTensor(feats, coords)
    sp = x.to_tf_sparse(shape=[7, 8])
    assert list(sp.dense_shape.numpy()) == [int(coords[:, 0].max()) + 1, 7, 8, 2]
    np.testing.assert_array_equal(
        tf.sparse.to_dense(sp).numpy(),
        _numpy_dense(feats, coords, int(coords[:, 0].max()) + 1, [7, 8]))
    sp = x.to_tf_sparse(shape=[3, 7, 8])
    assert list(sp.dense_shape.numpy()) == [3, 7, 8, 2]
    np.testing.assert_array_equal(tf.sparse.to_dense(sp).numpy(),
                                  _numpy_dense(feats, coords, 3, [7, 8]))


def test_to_tf_sparse_divides_by_the_stride():
    rng = np.random.default_rng(31)
    cells = _unique_coordinates(rng, 7, 2, 2, 0, 4)
    coords = cells * np.array([1, 2, 2], np.int32)
    feats = rng.normal(size=[7, 2]).astype(np.float32)
    sp = so.SparseTensor(feats, coords, 2).to_tf_sparse()
    want = _numpy_dense(feats, cells, int(cells[:, 0].max()) + 1,
                        cells[:, 1:].max(0) + 1)
    np.testing.assert_array_equal(tf.sparse.to_dense(sp).numpy(), want)


@pytest.mark.parametrize("dimension", [1, 2, 3])
def test_from_tf_sparse_matches_to_dense(dimension):
    rng = np.random.default_rng(40 + dimension)
    shape = [2] + [4] * dimension + [3]
    dense = rng.normal(size=shape).astype(np.float32)
    dense *= rng.random(shape) < 0.2  # element-wise sparse
    sp = tf.sparse.from_dense(dense)
    st = so.SparseTensor.from_tf_sparse(sp)
    assert st.dimension == dimension and st.num_channels == 3
    # Sites: every spatial cell holding at least one element.
    sites = np.argwhere(np.any(dense != 0, axis=-1))
    assert len(st.coordinates) == len(sites)
    np.testing.assert_array_equal(st.dense(shape=shape).numpy(),
                                  tf.sparse.to_dense(sp).numpy())


def test_from_tf_sparse_with_unordered_indices_and_int_values():
    sp = tf.SparseTensor(indices=[[1, 2, 0], [0, 0, 1], [1, 2, 1], [0, 3, 0]],
                         values=[4, 5, 6, 7], dense_shape=[2, 4, 2])
    st = so.SparseTensor.from_tf_sparse(sp)
    assert st.features.dtype.is_floating
    np.testing.assert_array_equal(
        st.dense(shape=[2, 4]).numpy(),
        tf.cast(tf.sparse.to_dense(tf.sparse.reorder(sp)), st.features.dtype).numpy())


def test_tf_sparse_round_trip():
    feats, coords = _random_tensor(seed=50, n=10, dimension=3, channels=2, batch=3)
    feats[3, 0] = 0.0
    x = so.SparseTensor(feats, coords)
    y = so.SparseTensor.from_tf_sparse(x.to_tf_sparse())
    _assert_same_sites(y.coordinates.numpy(), y.features.numpy(), coords, feats)
    # And the other way round.
    rng = np.random.default_rng(51)
    dense = rng.normal(size=[2, 3, 4, 2]).astype(np.float32) * (
        rng.random([2, 3, 4, 2]) < 0.3)
    sp = tf.sparse.from_dense(dense)
    back = so.SparseTensor.from_tf_sparse(sp).to_tf_sparse(shape=[2, 3, 4])
    np.testing.assert_array_equal(tf.sparse.to_dense(back).numpy(),
                                  tf.sparse.to_dense(sp).numpy())


def test_tf_sparse_round_trip_drops_all_zero_sites():
    # One element per non-zero value: a site whose features are all zero has
    # no element, so it is not a site after the round trip.
    feats = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], np.float32)
    coords = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 1]], np.int32)
    y = so.SparseTensor.from_tf_sparse(so.SparseTensor(feats, coords).to_tf_sparse())
    _assert_same_sites(y.coordinates.numpy(), y.features.numpy(),
                       coords[[0, 2]], feats[[0, 2]])


# -- empty tensors ---------------------------------------------------------------

def test_empty_tensor():
    x = so.SparseTensor(np.zeros([0, 3], np.float32), np.zeros([0, 4], np.int32))
    assert x.dimension == 3 and x.num_channels == 3
    assert int(x.batch_size()) == 0
    dense = x.dense(shape=[2, 3, 4, 5]).numpy()
    assert dense.shape == (2, 3, 4, 5, 3) and not dense.any()
    sp = x.to_tf_sparse(shape=[2, 3, 4, 5])
    assert int(tf.size(sp.values)) == 0
    assert list(sp.dense_shape.numpy()) == [2, 3, 4, 5, 3]
    y = x.with_features(tf.zeros([0, 5]))
    assert y.num_channels == 5 and y.coordinates is x.coordinates


def test_from_dense_of_zeros_is_empty():
    st = so.SparseTensor.from_dense(np.zeros([2, 3, 3, 4], np.float32))
    assert st.features.shape == (0, 4)
    assert st.coordinates.shape == (0, 3)


# -- tf.function and tf.nest ------------------------------------------------------

def test_passes_through_tf_function():
    feats, coords = _random_tensor(seed=60, n=8, dimension=2, channels=2, stride=2)
    x = so.SparseTensor(feats, coords, 2)

    @tf.function
    def scale(st):
        assert isinstance(st, so.SparseTensor)
        return st.with_features(st.features * 2.0)

    y = scale(x)
    assert isinstance(y, so.SparseTensor)
    assert y.stride == (2, 2)
    np.testing.assert_array_equal(y.coordinates.numpy(), coords)
    np.testing.assert_allclose(y.features.numpy(), 2 * feats)

    @tf.function
    def densify(st):
        return st.dense(shape=[3, 6, 6])

    np.testing.assert_array_equal(
        densify(x).numpy(), _numpy_dense(feats, coords, 3, [6, 6], stride=2))


def test_nest_flatten_has_three_tensors():
    feats, coords = _random_tensor(seed=70, n=5, dimension=3)
    x = so.SparseTensor(feats, coords, 2)
    flat = tf.nest.flatten(x)
    assert len(flat) == 3
    assert all(isinstance(t, tf.Tensor) for t in flat)


_NEST_BUG = ("BUG: the `stride` property shadows the namedtuple field `stride`, so "
             "tf.nest's packing (map_structure, pack_sequence_as) reads the tuple "
             "(1, 2, 1) instead of the stride tensor and fails")


def test_nest_map_structure_rebuilds_a_sparse_tensor():
    feats, coords = _random_tensor(seed=71, n=5, dimension=3)
    x = so.SparseTensor(feats, coords, (1, 2, 1))
    y = tf.nest.map_structure(tf.identity, x)
    assert isinstance(y, so.SparseTensor)
    np.testing.assert_array_equal(y.features.numpy(), feats)
    np.testing.assert_array_equal(y.coordinates.numpy(), coords)
    assert y.stride == (1, 2, 1)
    tf.nest.assert_same_structure(x, y)


def test_nest_map_structure_to_specs():
    feats, coords = _random_tensor(seed=72, n=5, dimension=2)
    x = so.SparseTensor(feats, coords)
    specs = tf.nest.map_structure(tf.type_spec_from_value, x)
    assert tf.nest.flatten(specs) == [tf.TensorSpec([5, 2], tf.float32),
                                      tf.TensorSpec([5, 3], tf.int32),
                                      tf.TensorSpec([2], tf.int32)]


def test_nest_pack_sequence_as_round_trip():
    feats, coords = _random_tensor(seed=73, n=4, dimension=1)
    x = so.SparseTensor(feats, coords, 3)
    y = tf.nest.pack_sequence_as(x, tf.nest.flatten(x))
    assert isinstance(y, so.SparseTensor)
    assert y.stride == (3,)
    np.testing.assert_array_equal(y.coordinates.numpy(), coords)
