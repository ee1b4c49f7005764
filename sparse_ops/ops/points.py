"""Coordinate sets and points: lookup, union, interpolation, slicing.

- `lookup_coordinates` / `union_coordinates`: the coordinate ops (C++, or
  the pure-TF reference path).
- `union`: the sites of several sparse tensors, features summed on overlap.
- `interpolate`: features at arbitrary float points, multilinear over the
  2^D lattice corners around each point.
- `slice`: voxel features back to the points they were quantized from, with
  the inverse map of `sparse_ops.utils.sparse_quantize`.

Only the integer coordinate work is a custom op; the feature arithmetic is
gather / segment-sum / multiply, so TensorFlow differentiates it (with
respect to features, and for `interpolate` also to the points).
"""

import itertools

import numpy as np
import tensorflow as tf

from sparse_ops import _checks
from sparse_ops.ops import _dispatch
from sparse_ops.ops import reference
from sparse_ops.tensor import SparseTensor, as_coordinates, as_sparse

tf.no_gradient("SparseOps>CoordinateLookup")
tf.no_gradient("SparseOps>CoordinateUnion")


# -- coordinate ops ------------------------------------------------------------

@_dispatch.dual(reference.coordinate_lookup)
def _lookup(library, coordinates, queries):
    return library.sparse_ops_coordinate_lookup(coordinates, queries)


@_dispatch.dual(reference.coordinate_union)
def _union(library, coordinates_list):
    return library.sparse_ops_coordinate_union(coordinates_list)


def lookup_coordinates(coordinates, queries):
    """The row of each query in a coordinate set.

    Args:
      coordinates: int32 [N, 1 + D], unique rows (column 0 the batch index).
      queries: int32 [Q, 1 + D]; may repeat, lie outside the set's range or
        have a negative batch index.
    Returns:
      int32 [Q]: the row r with coordinates[r] == queries[q], or -1.
    """
    coordinates = as_coordinates(coordinates, "coordinates")
    queries = as_coordinates(queries, "queries")
    cols, q_cols = coordinates.shape[1], queries.shape[1]
    if cols is not None and q_cols is not None and cols != q_cols:
        raise ValueError(f"queries must have the {cols} columns of coordinates, "
                         f"got shape {queries.shape}")
    rows = _lookup(_dispatch.current(), coordinates, queries)
    return tf.ensure_shape(rows, [queries.shape[0]])


def union_coordinates(coordinates_list):
    """Union of coordinate sets.

    Args:
      coordinates_list: a non-empty list of int32 [N_i, 1 + D], each with
        unique rows.
    Returns:
      (union int32 [M, 1 + D], [rows_i int32 [N_i]]): the union lists the rows
      of coordinates_list[0] in order, then the sites of the next inputs not
      seen before, in order of first appearance; `rows_i[r]` is the union
      row of `coordinates_list[i][r]`.
    """
    if not isinstance(coordinates_list, (list, tuple)) or not coordinates_list:
        raise ValueError("coordinates_list must be a non-empty list of coordinate "
                         "tensors")
    cs = [as_coordinates(c, f"coordinates_list[{i}]")
          for i, c in enumerate(coordinates_list)]
    cols = {c.shape[1] for c in cs} - {None}
    if len(cols) > 1:
        raise ValueError("every coordinates tensor must have the same number of "
                         f"columns, got {[c.shape[1] for c in cs]}")
    union, rows = _union(_dispatch.current(), cs)
    union = tf.ensure_shape(union, [None, cols.pop() if cols else None])
    return union, [tf.ensure_shape(r, [c.shape[0]]) for r, c in zip(rows, cs)]


# -- union of sparse tensors ---------------------------------------------------

def _check_same_stride(xs):
    """Static strides must match (ValueError); dynamic ones are asserted."""
    first = xs[0].stride
    checks = []
    for i, x in enumerate(xs[1:], 1):
        stride = x.stride
        if isinstance(first, tuple) and isinstance(stride, tuple):
            if stride != first:
                raise ValueError(f"union: inputs[{i}] has tensor stride {stride} "
                                 f"but inputs[0] has {first}; all inputs must have "
                                 "the same stride")
        else:
            checks.append(tf.debugging.assert_equal(
                x.stride_tensor, xs[0].stride_tensor,
                message=f"union: inputs[{i}] has another tensor stride than "
                "inputs[0]"))
    return checks


def union(tensors):
    """The sites of all inputs; features summed where sites overlap.

    Args:
      tensors: a non-empty list of sparse tensors (`SparseTensor`,
        `tf.SparseTensor`, or fields) with the same dimension, tensor stride
        and number of channels. Features are cast to the first input's dtype.
    Returns:
      `SparseTensor` whose sites are those of tensors[0] in order, then the
      new sites of tensors[1], tensors[2], ... in order of first appearance
      (MinkowskiEngine's MinkowskiUnion). When every input shares one
      coordinates tensor, the output keeps it (and its cached kernel maps).
    """
    if isinstance(tensors, SparseTensor) or not isinstance(tensors, (list, tuple)) \
            or not tensors:
        raise ValueError("union expects a non-empty list of sparse tensors, got "
                         f"{type(tensors).__name__}")
    xs = [as_sparse(x, name=f"inputs[{i}]") for i, x in enumerate(tensors)]
    dims = {x.dimension for x in xs} - {None}
    if len(dims) > 1:
        raise ValueError("union: inputs must have the same dimension, got "
                         f"{[x.dimension for x in xs]}")
    channels = [x.features.shape[1] for x in xs]
    for i, c in enumerate(channels[1:], 1):
        if c is not None and channels[0] is not None and c != channels[0]:
            raise ValueError(f"union: inputs[{i}] has {c} channels but inputs[0] has "
                             f"{channels[0]}; all inputs must have the same channels")
    checks = _check_same_stride(xs)
    dtype = xs[0].features.dtype
    features = [tf.cast(x.features, dtype) for x in xs]
    if all(x.coordinates is xs[0].coordinates for x in xs):
        with tf.control_dependencies(checks):
            return xs[0].with_features(tf.add_n(features))
    with tf.control_dependencies(checks):
        coordinates, rows = union_coordinates([x.coordinates for x in xs])
    n = tf.shape(coordinates)[0]
    out = tf.add_n([tf.math.unsorted_segment_sum(f, r, n)
                    for f, r in zip(features, rows)])
    out = tf.ensure_shape(out, [None, channels[0]])
    return SparseTensor(out, coordinates, xs[0].stride_tensor, xs[0].finer)


# -- interpolation -------------------------------------------------------------

def _corner_bits(d):
    """{0, 1}^D, row-major: [2^D, D] (corner k of the cell's 2^D corners)."""
    return np.array(list(itertools.product((0, 1), repeat=d)), np.int64).reshape(-1, d)


def _as_points(points, d):
    points = tf.convert_to_tensor(points)
    if not points.dtype.is_floating:
        if not points.dtype.is_integer:
            raise TypeError(f"points must be a float tensor, got {points.dtype.name}")
        points = tf.cast(points, tf.float64)
    if points.shape.rank is not None and (
            points.shape.rank != 2 or points.shape[1] not in (None, d + 1)):
        raise ValueError(f"points must be [N, 1 + D] = [N, {d + 1}] (batch index, "
                         f"then the coordinates), got shape {points.shape}")
    batch = points[:, 0]
    checks = [
        tf.debugging.assert_all_finite(points, "points must be finite"),
        tf.debugging.assert_equal(batch, tf.round(batch), message=(
            "points column 0 (the batch index) must hold whole numbers")),
        tf.debugging.assert_non_negative(batch, message=(
            "points column 0 (the batch index) must be >= 0"))]
    with tf.control_dependencies(checks):
        return tf.identity(points)


def interpolate(x, points, normalize=False):
    """Features of `x` at float points, multilinear over the 2^D corners.

    Each point p (in the integer units of x.coordinates) lies in the cell of
    x's stride lattice with lower corner l = floor(p / s) * s (s the tensor
    stride); corner c = l + b * s for b in {0, 1}^D gets the weight
    prod_j (1 - |p_j - c_j| / s_j), as MinkowskiEngine's
    MinkowskiInterpolation. A corner that is not a site of `x` contributes
    nothing. MinkowskiEngine leaves the remaining weights as they are, so a
    point near missing sites fades towards 0 (the default here, normalize=
    False); with normalize=True the weights of the present corners are
    rescaled to sum to 1 (a convex combination; 0 when no corner is a site).
    A point exactly on a site gets that site's features either way.

    Args:
      x: `SparseTensor` (or `tf.SparseTensor`, or fields).
      points: float [N, 1 + D]: batch index (a whole number), then the D
        coordinates.
      normalize: rescale the weights of the present corners to sum to 1.
    Returns:
      [N, C] in x's feature dtype; differentiable with respect to the
      features and the points (piecewise: the weights are linear in p
      within a cell).
    """
    x = as_sparse(x)
    d = x.dimension
    if d is None:
        raise ValueError("x's coordinates must have a static number of columns")
    points = _as_points(points, d)
    # Weights in float64 when points or features are (no precision lost),
    # else float32.
    wide = tf.float64 if tf.float64 in (points.dtype, x.features.dtype) else tf.float32
    points = tf.cast(points, wide)
    # Bounded before the int cast; a batch index beyond int32 has no sites.
    batch = tf.cast(tf.clip_by_value(points[:, 0], 0, 2.0**31), tf.int64)
    scaled = points[:, 1:] / tf.cast(x.stride_tensor, points.dtype)
    # Lattice cell of each point; bounded before the int cast (a huge
    # coordinate cannot be a site, and must not wrap into one).
    cell = tf.stop_gradient(tf.clip_by_value(tf.floor(scaled), -2.0**40, 2.0**40))
    frac = scaled - cell  # in [0, 1): the position inside the cell
    bits = _corner_bits(d)  # [K, D], K = 2^D
    corners = (tf.cast(cell, tf.int64)[:, None, :] + bits[None]) * tf.cast(
        x.stride_tensor, tf.int64)  # [N, K, D]
    in_range = tf.reduce_all(
        (corners >= _checks.INT32_MIN) & (corners <= _checks.INT32_MAX),
        -1) & (batch[:, None] <= _checks.INT32_MAX)
    # Corners beyond int32 get batch -1, which no site has.
    query_batch = tf.where(in_range, batch[:, None], -1)
    queries = tf.concat([query_batch[..., None],
                         tf.where(in_range[..., None], corners, 0)], -1)
    rows = tf.reshape(lookup_coordinates(x.coordinates, tf.cast(
        tf.reshape(queries, [-1, d + 1]), tf.int32)), [-1, len(bits)])
    found = rows >= 0
    weights = tf.reduce_prod(tf.where(bits[None] == 1, frac[:, None, :],
                                      1 - frac[:, None, :]), -1)  # [N, K]
    weights = tf.where(found, weights, tf.zeros_like(weights))
    if normalize:
        weights = tf.math.divide_no_nan(
            weights, tf.reduce_sum(weights, -1, keepdims=True))
    features = x.features
    # out = W @ features with W [N, n_sites] sparse (the found corners): no
    # [N, 2^D, C] intermediate, and TF differentiates both factors.
    pairs = tf.where(found)  # (point, corner), row-major
    site_rows = tf.cast(tf.gather_nd(rows, pairs), tf.int64)
    w = tf.SparseTensor(
        tf.stack([pairs[:, 0], site_rows], 1),
        tf.cast(tf.gather_nd(weights, pairs), features.dtype),
        tf.stack([tf.shape(points, out_type=tf.int64)[0],
                  tf.shape(features, out_type=tf.int64)[0]]))
    out = tf.sparse.sparse_dense_matmul(w, features)
    return tf.ensure_shape(out, [points.shape[0], features.shape[1]])


# -- slicing -------------------------------------------------------------------

def slice(x, inverse):  # pylint: disable=redefined-builtin
    """Per-point features from the voxels: x.features[inverse].

    The last step of the segmentation path points -> voxels -> network ->
    points. `inverse` is what `sparse_ops.utils.sparse_quantize(...,
    return_inverse=True)` returns: per point, the row of its voxel. `x` must
    have the quantized voxels as its sites, in that order (convolutions with
    stride 1 keep them).

    For a batch, either quantize the batched points in one call, with the
    batch index as the first column and voxel size 1 along it:
    `coords, inverse = sparse_quantize(np.c_[batch, xyz], voxel_size=[1, v, v,
    v], return_inverse=True)` (coords are then batched coordinates), or
    quantize each sample alone, batch them with `sparse_collate`, and offset
    each sample's inverse by the number of voxels of the samples before it:
    `np.concatenate([inv + off for inv, off in zip(inverses, np.cumsum([0] +
    sizes[:-1]))])`.

    Args:
      x: `SparseTensor` (or `tf.SparseTensor`, or fields) with N sites.
      inverse: int [P] voxel rows in [0, N).
    Returns:
      [P, C] features, differentiable with respect to x's features.
    """
    x = as_sparse(x)
    inverse = tf.convert_to_tensor(inverse)
    if not inverse.dtype.is_integer:
        raise TypeError(f"inverse must be an integer tensor, got {inverse.dtype.name}")
    if inverse.shape.rank is not None and inverse.shape.rank != 1:
        raise ValueError(f"inverse must be [P] (one voxel row per point), got shape "
                         f"{inverse.shape}")
    inverse = tf.cast(inverse, tf.int64)
    n = tf.shape(x.features, out_type=tf.int64)[0]
    checks = [tf.debugging.assert_non_negative(
                  inverse, message="inverse has negative voxel rows"),
              tf.debugging.assert_less(
                  inverse, n, message="inverse has voxel rows beyond the number "
                  "of sites of x")]
    with tf.control_dependencies(checks):
        return tf.gather(x.features, inverse)
