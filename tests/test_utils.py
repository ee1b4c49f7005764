"""Tests of `so.utils` (docs/guides/data.md, "Voxelizing beforehand, in
numpy").

`sparse_quantize` is checked against a brute-force oracle: a python dict from
voxel (computed point by point with math.floor) to the list of its points.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

MODES = ("average", "sum", "max", "first", "random")


# -- oracle ----------------------------------------------------------------------

def _voxel_of(point, voxel_size):
    sizes = voxel_size if np.ndim(voxel_size) else [voxel_size] * len(point)
    return tuple(int(math.floor(float(p) / float(s))) for p, s in zip(point, sizes))


def _groups(points, voxel_size):
    """{voxel: [point indices in input order]}."""
    groups = {}
    for i, p in enumerate(np.asarray(points)):
        groups.setdefault(_voxel_of(p, voxel_size), []).append(i)
    return groups


def _merge(feats, members, mode):
    f = np.asarray(feats, np.float64)[members]
    if mode == "average":
        return f.mean(0)
    if mode == "sum":
        return f.sum(0)
    if mode == "max":
        return f.max(0)
    if mode == "first":
        return f[0]
    raise ValueError(mode)


def _points(seed, n=60, d=3, scale=2.0, low=-2.0):
    """Points with many duplicates per voxel (small range), some negative."""
    rng = np.random.default_rng(seed)
    return (low + rng.random([n, d]) * scale * 2).astype(np.float32), rng


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


# -- sparse_quantize ------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("voxel_size", [1.0, 0.5, (0.5, 1.0, 0.75)],
                         ids=["scalar1", "scalar0.5", "per_axis"])
def test_sparse_quantize_modes_match_oracle(mode, voxel_size):
    points, rng = _points(1)
    feats = rng.normal(size=[len(points), 3]).astype(np.float32)
    coords, merged, index = so.utils.sparse_quantize(
        points, feats, voxel_size=voxel_size, mode=mode, return_index=True)
    groups = _groups(points, voxel_size)
    assert coords.dtype == np.int32
    assert coords.shape == (len(groups), 3)
    assert merged.shape == (len(groups), 3)
    assert len(index) == len(groups)
    got = {tuple(int(v) for v in c): (m, int(i))
           for c, m, i in zip(coords, merged, index)}
    assert set(got) == set(groups)
    for voxel, members in groups.items():
        values, idx = got[voxel]
        assert idx in members  # index: a point of this voxel
        if mode == "random":
            np.testing.assert_array_equal(values, feats[idx])
        else:
            np.testing.assert_allclose(values, _merge(feats, members, mode),
                                       rtol=1e-5, atol=1e-6)
        if mode == "first":
            assert idx == members[0]


def test_sparse_quantize_coordinates_only():
    points, _ = _points(2, n=40, d=2)
    coords = so.utils.sparse_quantize(points, voxel_size=0.5)
    assert not isinstance(coords, tuple)
    assert {tuple(c) for c in coords.tolist()} == set(_groups(points, 0.5))
    assert len(coords) == len(_groups(points, 0.5))


def test_sparse_quantize_floors_negative_points():
    points = np.array([[-0.5, 0.5], [-0.01, 0.99], [-1.0, -1.0], [-1.5, 2.0],
                       [0.0, 0.0]], np.float64)
    coords, index = so.utils.sparse_quantize(points, voxel_size=1.0,
                                             return_index=True, mode="first")
    want = {(-1, 0), (-1, -1), (-2, 2), (0, 0)}
    assert {tuple(c) for c in coords.tolist()} == want
    # The voxel of every kept point is floor(point), not trunc(point).
    for c, i in zip(coords, index):
        np.testing.assert_array_equal(c, np.floor(points[i]))


def test_sparse_quantize_per_axis_voxel_size_differs_from_scalar():
    points = np.array([[0.9, 0.9], [1.1, 0.2], [0.2, 1.9]], np.float32)
    per_axis = so.utils.sparse_quantize(points, voxel_size=(2.0, 1.0))
    assert {tuple(c) for c in per_axis.tolist()} == {(0, 0), (0, 1)}
    scalar = so.utils.sparse_quantize(points, voxel_size=2.0)
    assert {tuple(c) for c in scalar.tolist()} == {(0, 0)}


def test_sparse_quantize_random_picks_other_points_than_first():
    # 20 voxels of 10 points each: "random" keeping the first point of every
    # voxel has probability 1e-20.
    points = np.repeat(np.arange(20, dtype=np.float32)[:, None], 10, 0) + 0.5
    points = np.concatenate([points, np.zeros_like(points)], 1)
    feats = np.arange(len(points), dtype=np.float32)[:, None]
    _, merged, index = so.utils.sparse_quantize(points, feats, mode="random",
                                                return_index=True)
    first = so.utils.sparse_quantize(points, feats, mode="first",
                                     return_index=True)[2]
    assert np.any(index != first)
    np.testing.assert_array_equal(merged[:, 0], index.astype(np.float32))


@pytest.mark.parametrize("ignore_label", [-100, 255])
def test_sparse_quantize_labels(ignore_label):
    points, rng = _points(3, n=80, d=2)
    # Labels mostly constant per voxel, with disagreement in some voxels.
    groups = _groups(points, 1.0)
    labels = np.zeros(len(points), np.int64)
    for v, members in groups.items():
        labels[members] = (v[0] * 7 + v[1]) % 5
    flip = rng.choice(len(points), size=6, replace=False)
    labels[flip] += 1
    kwargs = dict(ignore_label=ignore_label) if ignore_label != -100 else {}
    coords, out_labels = so.utils.sparse_quantize(points, labels=labels, **kwargs)
    got = {tuple(c): int(label) for c, label in zip(coords.tolist(), out_labels)}
    assert set(got) == set(groups)
    disagreeing = 0
    for v, members in groups.items():
        values = set(labels[members].tolist())
        if len(values) == 1:
            assert got[v] == values.pop()
        else:
            disagreeing += 1
            assert got[v] == ignore_label
    assert disagreeing > 0, "test needs a voxel whose points disagree"


def test_sparse_quantize_features_and_labels_order():
    points, rng = _points(4, n=30, d=3)
    feats = rng.normal(size=[30, 2]).astype(np.float32)
    labels = np.ones(30, np.int32)
    out = so.utils.sparse_quantize(points, feats, labels, voxel_size=0.5,
                                   mode="sum", return_index=True,
                                   return_inverse=True)
    assert len(out) == 5
    coords, merged, out_labels, index, inverse = out
    m = len(coords)
    assert merged.shape == (m, 2) and out_labels.shape == (m,)
    assert index.shape == (m,) and inverse.shape == (30,)
    assert np.all(out_labels == 1)


def test_sparse_quantize_inverse_round_trip():
    points, rng = _points(5, n=70, d=3)
    feats = rng.normal(size=[70, 4]).astype(np.float32)
    coords, merged, inverse = so.utils.sparse_quantize(
        points, feats, voxel_size=0.75, mode="average", return_inverse=True)
    assert inverse.shape == (70,)
    # points -> voxels -> points: each point's voxel row holds its voxel.
    want = np.array([_voxel_of(p, 0.75) for p in points])
    np.testing.assert_array_equal(coords[inverse], want)
    # Voxel predictions sliced back to points are the voxel's merged value.
    groups = _groups(points, 0.75)
    for i, p in enumerate(points):
        np.testing.assert_allclose(merged[inverse][i],
                                   feats[groups[_voxel_of(p, 0.75)]].mean(0),
                                   rtol=1e-5, atol=1e-6)


def test_sparse_quantize_index_selects_points_of_each_voxel():
    points, _ = _points(6, n=50, d=2)
    coords, index, inverse = so.utils.sparse_quantize(
        points, voxel_size=0.5, return_index=True, return_inverse=True)
    # voxels -> points -> voxels
    np.testing.assert_array_equal(inverse[index], np.arange(len(coords)))
    np.testing.assert_array_equal(
        coords, np.array([_voxel_of(points[i], 0.5) for i in index]))


@pytest.mark.parametrize("mode", ["average", "max", "first"])
def test_sparse_quantize_numpy_and_tensor_inputs_agree(mode):
    points, rng = _points(7, n=40, d=3)
    feats = rng.normal(size=[40, 2]).astype(np.float32)
    labels = rng.integers(0, 2, size=40)
    a = so.utils.sparse_quantize(points, feats, labels, voxel_size=0.5, mode=mode,
                                 return_index=True, return_inverse=True)
    b = so.utils.sparse_quantize(tf.constant(points), tf.constant(feats),
                                 tf.constant(labels), voxel_size=0.5, mode=mode,
                                 return_index=True, return_inverse=True)
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        y = y.numpy() if isinstance(y, tf.Tensor) else np.asarray(y)
        np.testing.assert_array_equal(np.asarray(x), y)


def test_sparse_quantize_integer_points():
    points = np.array([[0, 0], [0, 0], [3, -2], [3, -2], [1, 1]], np.int64)
    coords, index = so.utils.sparse_quantize(points, return_index=True,
                                             mode="first")
    assert {tuple(c) for c in coords.tolist()} == {(0, 0), (3, -2), (1, 1)}
    assert sorted(index.tolist()) == [0, 2, 4]


def test_sparse_quantize_output_is_valid_sparse_tensor_input():
    points, rng = _points(8, n=40, d=3)
    feats = rng.normal(size=[40, 2]).astype(np.float32)
    coords, merged = so.utils.sparse_quantize(points, feats, voxel_size=0.5)
    c = so.utils.batched_coordinates([coords])
    x = so.SparseTensor(merged, c)
    assert len({tuple(r) for r in x.coordinates.numpy().tolist()}) == len(coords)


@pytest.mark.parametrize("mode", ["average", "first"])
def test_sparse_quantize_empty_points_without_features(mode):
    coords, inverse = so.utils.sparse_quantize(np.zeros([0, 3], np.float32),
                                               mode=mode, return_inverse=True)
    assert coords.shape == (0, 3) and inverse.shape == (0,)


@pytest.mark.parametrize("mode", MODES)
def test_sparse_quantize_empty_points_with_features(mode):
    out = so.utils.sparse_quantize(np.zeros([0, 3], np.float32),
                                   np.zeros([0, 2], np.float32),
                                   np.zeros([0], np.int64), mode=mode,
                                   return_index=True, return_inverse=True)
    coords, feats, labels, index, inverse = out
    assert coords.shape == (0, 3) and feats.shape == (0, 2)
    assert labels.shape == index.shape == inverse.shape == (0,)


@pytest.mark.parametrize("kwargs,error", [
    (dict(mode="mean"), ValueError),
    (dict(mode="MAX"), ValueError),
    (dict(voxel_size=0.0), ValueError),
    (dict(voxel_size=-1.0), ValueError),
    (dict(voxel_size=(1.0, 0.0, 1.0)), ValueError),
    (dict(features=np.ones([5, 2], np.float32)), ValueError),
    (dict(labels=np.ones([7], np.int32)), ValueError),
], ids=["mode_mean", "mode_case", "voxel0", "voxel_negative", "voxel_axis0",
        "feature_rows", "label_rows"])
def test_sparse_quantize_errors(kwargs, error):
    points, _ = _points(9, n=6, d=3)
    with pytest.raises(error):
        so.utils.sparse_quantize(points, **kwargs)


@pytest.mark.parametrize("points", [np.zeros([5], np.float32),
                                    np.zeros([2, 3, 4], np.float32)],
                         ids=["rank1", "rank3"])
def test_sparse_quantize_rejects_wrong_rank(points):
    with pytest.raises(ValueError, match="points"):
        so.utils.sparse_quantize(points)


def test_sparse_quantize_rejects_points_outside_int32():
    with pytest.raises(ValueError, match="int32"):
        so.utils.sparse_quantize(np.array([[1e10, 0.0]]), voxel_size=1.0)


# -- batched_coordinates and sparse_collate ---------------------------------------

def _per_sample(seed, sizes, d=3):
    rng = np.random.default_rng(seed)
    coords = [rng.integers(-5, 5, size=[n, d]).astype(np.int32) for n in sizes]
    feats = [rng.normal(size=[n, 2]).astype(np.float32) for n in sizes]
    labels = [rng.integers(0, 4, size=[n]).astype(np.int64) for n in sizes]
    return coords, feats, labels


@pytest.mark.parametrize("as_tensor", [False, True])
def test_batched_coordinates(as_tensor):
    coords, _, _ = _per_sample(10, [3, 0, 5, 2])
    inputs = [tf.constant(c) for c in coords] if as_tensor else coords
    out = so.utils.batched_coordinates(inputs)
    out = out.numpy() if isinstance(out, tf.Tensor) else np.asarray(out)
    assert out.dtype == np.int32
    assert out.shape == (10, 4)
    want = np.concatenate([np.concatenate([np.full([len(c), 1], b), c], 1)
                           for b, c in enumerate(coords)])
    np.testing.assert_array_equal(out, want)


def test_batched_coordinates_accepts_whole_floats():
    out = np.asarray(so.utils.batched_coordinates(
        [np.array([[1.0, -2.0]]), np.array([[3.0, 4.0], [0.0, 0.0]])]))
    np.testing.assert_array_equal(out, [[0, 1, -2], [1, 3, 4], [1, 0, 0]])
    assert out.dtype == np.int32


@pytest.mark.parametrize("arg", [
    [],
    [np.zeros([2, 3], np.int32), np.zeros([2, 2], np.int32)],
    [np.zeros([3], np.int32)],
    [np.array([[0.5, 1.0]])],
], ids=["empty_list", "mixed_dims", "rank1", "non_whole"])
def test_batched_coordinates_errors(arg):
    with pytest.raises(ValueError):
        so.utils.batched_coordinates(arg)


def test_sparse_collate_without_labels():
    coords, feats, _ = _per_sample(11, [4, 3])
    out = so.utils.sparse_collate(coords, feats)
    assert len(out) == 2
    c, f = (np.asarray(v) for v in out)
    np.testing.assert_array_equal(c[:, 0], [0] * 4 + [1] * 3)
    np.testing.assert_array_equal(c[:, 1:], np.concatenate(coords))
    np.testing.assert_array_equal(f, np.concatenate(feats))
    x = so.SparseTensor(f, c)
    assert int(x.batch_size()) == 2


def test_sparse_collate_with_labels_and_tensors():
    coords, feats, labels = _per_sample(12, [2, 5, 1])
    out = so.utils.sparse_collate([tf.constant(c) for c in coords],
                                  [tf.constant(f) for f in feats],
                                  [tf.constant(lab) for lab in labels])
    assert len(out) == 3
    c, f, lab = (v.numpy() if isinstance(v, tf.Tensor) else np.asarray(v)
                 for v in out)
    np.testing.assert_array_equal(c[:, 0], [0, 0, 1, 1, 1, 1, 1, 2])
    np.testing.assert_array_equal(c[:, 1:], np.concatenate(coords))
    np.testing.assert_array_equal(f, np.concatenate(feats))
    np.testing.assert_array_equal(lab, np.concatenate(labels))


@pytest.mark.parametrize("case", [
    "lengths", "labels_length", "rows",
    "label_rows"])
def test_sparse_collate_errors(case):
    coords, feats, labels = _per_sample(13, [2, 3])
    if case == "lengths":
        args = (coords, feats[:1])
    elif case == "labels_length":
        args = (coords, feats, labels[:1])
    elif case == "rows":
        args = (coords, [feats[0], feats[0]])
    else:
        args = (coords, feats, [labels[0], labels[0]])
    with pytest.raises(ValueError):
        so.utils.sparse_collate(*args)
