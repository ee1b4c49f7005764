"""Tests of coordinate lookup and union, Union, interpolation and slicing.

Oracles are independent of the library: dicts from site tuple to row, a
per-point numpy loop over the 2^D corners for multilinear interpolation,
and numpy indexing with sparse_quantize's inverse for slicing. Every test
with the `impl` fixture runs the C++ ops and the pure-TF reference path.
"""

import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import _loader

from conftest import assert_close, random_sparse

HAVE_LIBRARY = _loader.try_library() is not None
needs_library = pytest.mark.skipif(not HAVE_LIBRARY,
                                   reason="the sparse_ops op library is not built")


def _random_coords(rng, n, d, low=-6, high=6, batch=2, step=1):
    """n unique int32 rows [batch, x1..xd] with multiples of `step`."""
    assert batch * (high - low) ** d >= 2 * n, "too few sites to draw from"
    rows = set()
    while len(rows) < n:
        rows.add((int(rng.integers(batch)),) + tuple(
            int(v) * step for v in rng.integers(low, high, d)))
    rows = np.array(sorted(rows), np.int64).reshape(n, d + 1)
    rng.shuffle(rows)
    return rows.astype(np.int32)


def _table(coords):
    return {tuple(r): i for i, r in enumerate(np.asarray(coords).tolist())}


# -- lookup ------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 3])
def test_lookup_matches_dict(impl, rng, d):
    coords = _random_coords(rng, 40, d, -30, 30)
    table = _table(coords)
    extreme = [[0] + [2**31 - 1] * d, [1] + [-2**31] * d, [-1] + [0] * d,
               [2**31 - 1] + [0] * d, [-2**31] + [1] * d]
    queries = np.concatenate([coords[rng.permutation(40)[:25]],  # present
                              coords[:5],  # repeated
                              _random_coords(rng, 30, d, low=-35, high=35),
                              np.array(extreme, np.int32)])
    rows = so.ops.lookup_coordinates(coords, queries).numpy()
    expected = [table.get(tuple(q), -1) for q in queries.tolist()]
    np.testing.assert_array_equal(rows, expected)
    assert rows.dtype == np.int32


def test_lookup_empty_and_one_site(impl):
    empty = np.zeros([0, 3], np.int32)
    q = np.array([[0, 0, 0], [0, 1, 2]], np.int32)
    np.testing.assert_array_equal(so.ops.lookup_coordinates(empty, q), [-1, -1])
    one = np.array([[0, 1, 2]], np.int32)
    np.testing.assert_array_equal(so.ops.lookup_coordinates(one, q), [-1, 0])
    assert so.ops.lookup_coordinates(one, empty).shape == (0,)


def test_lookup_rejects_duplicates_and_columns(impl):
    dup = np.array([[0, 1, 2], [0, 1, 2]], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="duplicate"):
        so.ops.lookup_coordinates(dup, dup)
    with pytest.raises(ValueError, match="queries"):
        so.ops.lookup_coordinates(dup[:1], np.zeros([1, 4], np.int32))


# -- union of coordinates ----------------------------------------------------------------

def _union_oracle(coords_list):
    """First-appearance order, by a dict (numpy)."""
    table, rows = {}, []
    for c in coords_list:
        rows.append(np.array([table.setdefault(tuple(r), len(table))
                              for r in np.asarray(c).tolist()], np.int64))
    union = np.array(list(table), np.int64).reshape(len(table), -1)
    return union, rows


@pytest.mark.parametrize("d", [2, 3])
def test_union_coordinates_match_dict(impl, rng, d):
    a = _random_coords(rng, 30, d, low=-3, high=3)
    b = np.concatenate([a[rng.permutation(30)[:10]],
                        _random_coords(rng, 25, d, low=-3, high=3)])
    b = np.unique(b, axis=0)
    rng.shuffle(b)
    c = np.zeros([0, d + 1], np.int32)
    e = _random_coords(rng, 5, d, low=-3, high=3)
    e[:, 1] = [-2**31, 2**31 - 1, -2**31 + 1, 2**31 - 2, 0]  # int32 limits on one axis
    union, rows = so.ops.union_coordinates([a, b, c, e])
    want_union, want_rows = _union_oracle([a, b, c, e])
    np.testing.assert_array_equal(union, want_union)
    assert len(rows) == 4
    for r, w in zip(rows, want_rows):
        np.testing.assert_array_equal(r, w)


def test_union_coordinates_reference_equals_custom(rng):
    if not HAVE_LIBRARY:
        pytest.skip("the sparse_ops op library is not built")
    a, b = _random_coords(rng, 50, 3, -4, 4), _random_coords(rng, 50, 3, -4, 4)
    results = []
    for impl in ("custom", "reference"):
        with so.config.implementation(impl):
            union, rows = so.ops.union_coordinates([a, b])
            looked_up = so.ops.lookup_coordinates(union, b)
            results.append([union.numpy()] + [r.numpy() for r in rows]
                           + [looked_up.numpy()])
    for x, y in zip(*results):
        np.testing.assert_array_equal(x, y)


def test_union_coordinates_errors(impl):
    dup = np.array([[0, 1, 2], [0, 3, 3], [0, 1, 2]], np.int32)
    ok = np.array([[0, 1, 2]], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"coordinates\[1\]"):
        so.ops.union_coordinates([ok, dup])
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative batch"):
        so.ops.union_coordinates([ok, np.array([[-1, 0, 0]], np.int32)])
    with pytest.raises(ValueError, match="columns"):
        so.ops.union_coordinates([ok, np.zeros([1, 4], np.int32)])
    with pytest.raises(ValueError, match="non-empty"):
        so.ops.union_coordinates([])


# -- Union of sparse tensors ---------------------------------------------------------------

def _sparse(rng, coords, channels=3, dtype=np.float64, stride=1):
    feats = rng.normal(size=[len(coords), channels]).astype(dtype)
    return so.SparseTensor(feats, coords, stride)


def _union_features_oracle(xs):
    sums = {}
    for x in xs:
        for r, f in zip(x.coordinates.numpy().tolist(), x.features.numpy()):
            sums[tuple(r)] = sums.get(tuple(r), 0) + f.astype(np.float64)
    return sums


@pytest.mark.parametrize("stride", [1, 2])
def test_union_sums_overlap(impl, rng, stride):
    a = _sparse(rng, _random_coords(rng, 30, 2, -3, 3, step=stride), stride=stride)
    b = _sparse(rng, _random_coords(rng, 30, 2, -3, 3, step=stride), stride=stride)
    c = _sparse(rng, a.coordinates.numpy()[:7], stride=stride)  # overlaps a
    y = so.ops.union([a, b, c])
    want = _union_features_oracle([a, b, c])
    got = {tuple(r): f for r, f in zip(y.coordinates.numpy().tolist(),
                                       y.features.numpy())}
    assert len(got) == y.coordinates.shape[0] == len(want)
    for site, f in want.items():
        assert_close(got[site], f)
    assert y.stride == (stride, stride)
    # Order: a's sites first, in order.
    np.testing.assert_array_equal(y.coordinates[:30], a.coordinates)


def test_union_gradient(impl, rng):
    a = _sparse(rng, _random_coords(rng, 8, 2, -2, 2), channels=2)
    b = _sparse(rng, _random_coords(rng, 8, 2, -2, 2), channels=2)
    weights = tf.constant(rng.normal(size=[16, 2]))

    def loss(fa, fb):
        y = so.ops.union([a.with_features(fa), b.with_features(fb)])
        # A weighted sum that depends on every output row.
        n = tf.shape(y.features)[0]
        return tf.reduce_sum(y.features * weights[:n] ** 2, axis=1)

    theoretical, numerical = tf.test.compute_gradient(loss, [a.features, b.features])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)
    # The gradient of a plain sum is one per input row.
    with tf.GradientTape() as tape:
        tape.watch([a.features, b.features])
        s = tf.reduce_sum(so.ops.union([a, b]).features)
    for g in tape.gradient(s, [a.features, b.features]):
        np.testing.assert_array_equal(g, np.ones([8, 2]))


def test_union_shared_coordinates_keep_them(impl, rng):
    a = _sparse(rng, _random_coords(rng, 10, 3))
    y = so.ops.union([a, a.with_features(a.features * 2)])
    assert y.coordinates is a.coordinates
    assert_close(y.features, 3 * a.features.numpy())


def test_union_empty_and_one_site(impl, rng):
    empty = _sparse(rng, np.zeros([0, 3], np.int32))
    one = _sparse(rng, np.array([[0, -4, 7]], np.int32))
    y = so.ops.union([empty, one])
    np.testing.assert_array_equal(y.coordinates, one.coordinates)
    assert_close(y.features, one.features.numpy())
    y = so.ops.union([empty, empty.with_features(empty.features)])
    assert y.features.shape == (0, 3)
    y = so.ops.union([one])
    np.testing.assert_array_equal(y.coordinates, one.coordinates)


def test_union_errors(rng):
    a = _sparse(rng, _random_coords(rng, 4, 2))
    with pytest.raises(ValueError, match=r"inputs\[1\] has 2 channels"):
        so.ops.union([a, _sparse(rng, _random_coords(rng, 4, 2), channels=2)])
    with pytest.raises(ValueError, match=r"inputs\[1\] has tensor stride \(2, 2\)"):
        so.ops.union([a, _sparse(rng, _random_coords(rng, 4, 2, step=2), stride=2)])
    with pytest.raises(ValueError, match="dimension"):
        so.ops.union([a, _sparse(rng, _random_coords(rng, 4, 3))])
    with pytest.raises(ValueError, match="list"):
        so.ops.union(a)
    with pytest.raises(ValueError, match="list"):
        so.layers.Union()(a)


def test_union_dynamic_stride_is_checked(impl, rng):
    a = _sparse(rng, _random_coords(rng, 4, 2, step=2), stride=2)
    coords = _random_coords(rng, 4, 2, step=2)

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def run(stride):
        b = so.SparseTensor(a.features, coords, stride)
        return so.ops.union([a, b]).features

    assert run(tf.constant([2, 2])).shape[1] == 3
    with pytest.raises(tf.errors.InvalidArgumentError, match="stride"):
        run(tf.constant([2, 1]))


# -- interpolation -------------------------------------------------------------------------

def _interpolate_oracle(coords, feats, stride, points, normalize=False):
    """Per point, the weighted sum over the 2^D corners (numpy loops)."""
    table = _table(coords)
    d = coords.shape[1] - 1
    s = np.broadcast_to(np.asarray(stride, np.float64), [d])
    out = np.zeros([len(points), feats.shape[1]])
    for n, p in enumerate(np.asarray(points, np.float64)):
        lower = np.floor(p[1:] / s) * s
        total, wsum = np.zeros(feats.shape[1]), 0.0
        for bits in itertools.product((0, 1), repeat=d):
            corner = lower + np.array(bits) * s
            w = np.prod(1 - np.abs(p[1:] - corner) / s)
            row = table.get((int(p[0]),) + tuple(int(v) for v in corner))
            if row is not None:
                total += w * feats[row]
                wsum += w
        out[n] = total / wsum if normalize and wsum > 0 else (
            0 if normalize else total)
    return out


def _random_points(rng, coords, n, stride, spread=1.5):
    """Points near the sites (many cells with missing corners), some exactly
    on sites and lattice points, some far away."""
    d = coords.shape[1] - 1
    base = coords[rng.integers(len(coords), size=n)].astype(np.float64)
    jitter = rng.uniform(-spread, spread, [n, d]) * stride
    pts = np.concatenate([base[:, :1], base[:, 1:] + jitter], 1)
    pts[: n // 5, 1:] = base[: n // 5, 1:]  # exactly on sites
    pts[n // 5: n // 4, 1:] = base[n // 5: n // 4, 1:] + stride  # lattice points
    pts[-2, 1:] = 1e6  # far from every site
    return pts


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("normalize", [False, True])
def test_interpolate_matches_numpy(impl, rng, d, stride, normalize):
    coords = _random_coords(rng, 60, d, -5, 5, step=stride)
    x = _sparse(rng, coords, stride=stride)
    points = _random_points(rng, coords, 80, stride)
    y = so.ops.interpolate(x, points, normalize=normalize)
    want = _interpolate_oracle(coords, x.features.numpy(), stride, points, normalize)
    assert_close(y, want)
    # Some points must have had missing corners for this test to mean much.
    full = _interpolate_oracle(coords, np.ones([60, 1]), stride, points)[:, 0]
    assert np.sum((full > 1e-9) & (full < 1 - 1e-9)) > 10


@pytest.mark.parametrize("stride", [1, 3])
def test_interpolate_on_sites_reproduces_features(impl, rng, stride):
    coords = _random_coords(rng, 30, 3, -4, 4, step=stride)
    x = _sparse(rng, coords, stride=stride)
    points = coords.astype(np.float32)
    for normalize in (False, True):
        assert_close(so.ops.interpolate(x, points, normalize=normalize),
                     x.features.numpy())


def test_interpolate_dtypes(impl, rng):
    coords = _random_coords(rng, 20, 2, -3, 3)
    points = _random_points(rng, coords, 20, 1)
    x32 = _sparse(rng, coords, dtype=np.float32)
    want = _interpolate_oracle(coords, x32.features.numpy(), 1, points)
    y = so.ops.interpolate(x32, points.astype(np.float32))
    assert y.dtype == tf.float32
    assert_close(y, want.astype(np.float32))
    y = so.ops.interpolate(x32.with_features(tf.cast(x32.features, tf.float64)),
                           points.astype(np.float32))
    assert y.dtype == tf.float64
    assert_close(y, want, rtol=1e-6, atol=1e-6)  # float32 points


def test_interpolate_gradients(impl, rng):
    coords = _random_coords(rng, 12, 2, -2, 2)
    x = _sparse(rng, coords, channels=2)
    # Strictly inside cells (the weights are not differentiable across cells).
    cells = coords[rng.integers(12, size=10)].astype(np.float64)
    batch = tf.constant(cells[:, :1])
    spatial = tf.constant(cells[:, 1:] + rng.uniform(0.1, 0.9, [10, 2]))

    for normalize in (False, True):
        def f(features, xy):
            return so.ops.interpolate(x.with_features(features),
                                      tf.concat([batch, xy], 1), normalize=normalize)
        theoretical, numerical = tf.test.compute_gradient(f, [x.features, spatial])
        # Linear in the features; in the points a product (and with normalize
        # a quotient), where central differences have an O(delta^2) error.
        np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(theoretical[1], numerical[1], rtol=1e-4, atol=1e-4)
        assert np.any(theoretical[1] != 0)


def test_interpolate_empty_and_negative(impl, rng):
    empty = _sparse(rng, np.zeros([0, 3], np.int32), channels=2)
    y = so.ops.interpolate(empty, [[0.0, 0.5, -0.5]])
    np.testing.assert_array_equal(y, np.zeros([1, 2]))
    one = _sparse(rng, np.array([[1, -3, -5]], np.int32), channels=2)
    assert so.ops.interpolate(one, np.zeros([0, 3])).shape == (0, 2)
    y = so.ops.interpolate(one, [[1.0, -2.5, -5.0], [0.0, -3.0, -5.0]])
    assert_close(y, [one.features.numpy()[0] * 0.5, [0.0, 0.0]])


def test_interpolate_errors(impl, rng):
    x = _sparse(rng, _random_coords(rng, 4, 2))
    with pytest.raises(ValueError, match="points"):
        so.ops.interpolate(x, np.zeros([3, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch index"):
        so.ops.interpolate(x, [[0.5, 0.0, 0.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch index"):
        so.ops.interpolate(x, [[-1.0, 0.0, 0.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        so.ops.interpolate(x, [[0.0, np.nan, 0.0]])
    with pytest.raises(TypeError, match="points"):
        so.ops.interpolate(x, tf.constant([["a", "b", "c"]]))


# -- slicing -------------------------------------------------------------------------

def test_slice_gathers_and_differentiates(impl, rng):
    x = _sparse(rng, _random_coords(rng, 6, 2), channels=2)
    inverse = rng.integers(6, size=20)
    assert_close(so.ops.slice(x, inverse), x.features.numpy()[inverse])
    theoretical, numerical = tf.test.compute_gradient(
        lambda f: so.ops.slice(x.with_features(f), inverse), [x.features])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="inverse"):
        so.ops.slice(x, [0, 6])
    with pytest.raises(tf.errors.InvalidArgumentError, match="inverse"):
        so.ops.slice(x, [-1])
    with pytest.raises(TypeError, match="inverse"):
        so.ops.slice(x, [0.5])
    with pytest.raises(ValueError, match="inverse"):
        so.ops.slice(x, [[0, 1]])
    empty = _sparse(rng, np.zeros([0, 3], np.int32), channels=2)
    assert so.ops.slice(empty, np.zeros([0], np.int64)).shape == (0, 2)


def _segmentation_net(channels):
    keras.utils.set_random_seed(3)
    return [so.layers.Conv(4, 3), so.layers.ReLU(), so.layers.Conv(4, 3, strides=2),
            so.layers.ConvTranspose(4, 2, strides=2), so.layers.Dense(channels)]


def _run(layers, x):
    h = x
    skip = None
    for layer in layers:
        if isinstance(layer, so.layers.ConvTranspose):
            h = layer(h, coordinates=skip)
        else:
            if isinstance(layer, so.layers.Conv) and layer.strides != (1, 1, 1):
                skip = h
            h = layer(h)
    return h


def test_segmentation_round_trip(impl, rng):
    """points -> sparse_quantize -> network -> slice: every point gets its
    voxel's prediction, for a batch quantized in one call and for samples
    quantized alone and batched with sparse_collate."""
    clouds = [rng.uniform(-2, 2, [200, 3]) for _ in range(2)]
    colours = [rng.uniform(0, 1, [200, 2]) for _ in range(2)]
    voxel = 0.5
    layers = _segmentation_net(3)

    # (a) one call with the batch index as the first column.
    batched_points = np.concatenate(
        [np.c_[np.full(len(p), b), p] for b, p in enumerate(clouds)])
    coords, feats, inverse = so.utils.sparse_quantize(
        batched_points, np.concatenate(colours), voxel_size=[1, voxel, voxel, voxel],
        return_inverse=True)
    x = so.SparseTensor(feats.astype(np.float32), coords)
    logits = _run(layers, x)
    per_point = so.ops.slice(logits, inverse)
    assert per_point.shape == (400, 3)
    voxel_of_point = np.concatenate(
        [np.c_[np.full(len(p), b), np.floor(p / voxel)] for b, p in enumerate(clouds)])
    site = _table(coords)
    rows = [site[tuple(int(v) for v in r)] for r in voxel_of_point]
    np.testing.assert_array_equal(per_point, logits.features.numpy()[rows])

    # (b) per sample, batched with sparse_collate and offset inverses.
    quantized = [so.utils.sparse_quantize(p, c, voxel_size=voxel,
                                          return_inverse=True)
                 for p, c in zip(clouds, colours)]
    coords_b, feats_b = so.utils.sparse_collate([q[0] for q in quantized],
                                                [q[1] for q in quantized])
    offsets = np.cumsum([0] + [len(q[0]) for q in quantized[:-1]])
    inverse_b = np.concatenate([q[2] + o for q, o in zip(quantized, offsets)])
    per_point_b = so.ops.slice(
        _run(layers, so.SparseTensor(feats_b.astype(np.float32), coords_b)),
        inverse_b)
    # The same voxels (both sorted batch-major), so the same predictions.
    np.testing.assert_array_equal(coords_b, coords)
    assert_close(per_point_b, per_point.numpy())


# -- layers ----------------------------------------------------------------------------------

def test_layers_config_round_trip(rng):
    x = _sparse(rng, _random_coords(rng, 10, 2), dtype=np.float32)
    y = _sparse(rng, _random_coords(rng, 10, 2), dtype=np.float32)
    points = _random_points(rng, x.coordinates.numpy(), 7, 1).astype(np.float32)
    cases = [(so.layers.Union(), ([x, y],)),
             (so.layers.Interpolate(normalize=True), (x, points)),
             (so.layers.Interpolate(), (x, points)),
             (so.layers.Slice(), (x, np.array([3, 0, 9])))]
    for layer, args in cases:
        out = layer(*args)
        config = layer.get_config()
        json.dumps(config)
        for clone in (type(layer).from_config(config),
                      keras.layers.deserialize(keras.layers.serialize(layer))):
            assert type(clone) is type(layer) and clone.get_config() == config
            for a, b in zip(tf.nest.flatten(out), tf.nest.flatten(clone(*args))):
                np.testing.assert_array_equal(a, b)
    assert so.layers.Interpolate(normalize=True).get_config()["normalize"] is True


def test_layers_accept_tf_sparse_and_fields(rng):
    x, dense = random_sparse(rng, (4, 4), 2, batch=1, density=0.6)
    sp = tf.sparse.from_dense(dense)
    points = np.c_[np.zeros(3), rng.uniform(0, 3, [3, 2])]
    want = so.ops.interpolate(x, points)
    assert_close(so.layers.Interpolate()(sp, points), want.numpy())
    assert_close(so.layers.Interpolate()(
        [x.features, x.coordinates, x.stride_tensor], points), want.numpy())
    u = so.layers.Union()([sp, [x.features, x.coordinates]])
    assert u.coordinates.shape[0] == x.coordinates.shape[0]
    assert_close(tf.reduce_sum(u.features), 2 * tf.reduce_sum(x.features).numpy())


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_functional_model_union_interpolate_slice(rng, tmp_path):
    """Inputs (features, coordinates, points, inverse): a strided branch
    brought back with ConvTranspose, united with the input branch, read at
    the points and at the voxels of each point; saved and reloaded."""
    keras.utils.set_random_seed(7)
    coords = _random_coords(rng, 20, 2, 0, 6)
    feats = rng.normal(size=[20, 3]).astype(np.float32)
    points = _random_points(rng, coords, 9, 1).astype(np.float32)
    inverse = rng.integers(20, size=11)

    f_in = keras.Input(shape=(3,))
    c_in = keras.Input(shape=(3,), dtype="int32")
    p_in = keras.Input(shape=(3,))
    i_in = keras.Input(shape=(), dtype="int32")
    a = so.layers.Dense(4)([f_in, c_in])
    b = so.layers.Conv(4, 3)(a)
    u = so.layers.Union()([a, b])
    at_points = so.layers.Interpolate(normalize=True)(u, p_in)
    at_voxels = so.layers.Slice()(u, i_in)
    model = keras.Model([f_in, c_in, p_in, i_in], [at_points, at_voxels])
    assert tuple(model.outputs[0].shape) == (None, 4)
    inputs = [feats, coords, points, inverse]
    y_points, y_voxels = model(inputs)
    assert y_points.shape == (9, 4) and y_voxels.shape == (11, 4)

    # The same computation by hand.
    x = so.SparseTensor(feats, coords)
    ua = model.layers[2]([x.features, x.coordinates])
    ub = model.layers[3](ua)
    united = so.ops.union([ua, ub])
    assert_close(y_points, so.ops.interpolate(united, points, normalize=True).numpy())
    assert_close(y_voxels, united.features.numpy()[inverse])

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=False)
    for a_, b_ in zip(loaded(inputs), (y_points, y_voxels)):
        np.testing.assert_array_equal(a_, b_)
