"""Voxelization inside the graph: raw points -> a SparseTensor.

`voxelize` is the in-graph counterpart of `sparse_ops.utils.sparse_quantize`
for tf.data pipelines, tf.function and SavedModels that take raw points. The
sites, the point-to-site map and the merged features come from one C++ op
(SparseOps>Voxelize: a radix sort of packed keys, runs, a segment reduce);
its gradient with respect to the features is gathers over that map.
"""

import numpy as np
import tensorflow as tf

from sparse_ops.ops import _dispatch
from sparse_ops.ops import reference
from sparse_ops.tensor import SparseTensor

MODES = ("average", "sum", "max", "first")


@tf.RegisterGradient("SparseOps>Voxelize")
def _voxelize_grad(op, *grads):
    """d merged / d features: sum -> each point gets its site's gradient,
    average -> divided by the site's count, max and first -> only the point
    the value came from (source)."""
    grad = grads[1]
    if grad is None:
        return [None, None, None]
    inverse, counts, source = op.outputs[2], op.outputs[3], op.outputs[4]
    mode = op.get_attr("mode").decode()
    if mode == "average":
        grad = grad / tf.cast(counts, grad.dtype)[:, None]
    per_point = tf.gather(grad, inverse)
    if mode in ("max", "first"):
        points = tf.range(tf.shape(inverse)[0])[:, None]
        kept = tf.equal(tf.gather(source, inverse), points)
        per_point = tf.where(kept, per_point, tf.zeros_like(per_point))
    return [None, per_point, None]


@_dispatch.dual(reference.voxelize)
def _voxelize(library, points, features, voxel_size, mode):
    return library.sparse_ops_voxelize(points, features, voxel_size, mode=mode)


def _points_tensor(points):
    try:
        p = tf.convert_to_tensor(points)
    except (TypeError, ValueError) as error:
        raise TypeError(f"points must be a numeric [N, 1 + D] array, got {points!r}") from error
    if p.dtype in (tf.float32, tf.float64):
        pass
    elif p.dtype.is_floating:
        p = tf.cast(p, tf.float32)
    elif p.dtype.is_integer:
        p = tf.cast(p, tf.float64)
    else:
        raise TypeError(f"points must be float or int, got {p.dtype.name}")
    if p.shape.rank is not None and p.shape.rank != 2:
        raise ValueError(f"points must be [N, 1 + D] (column 0 the batch index), "
                         f"got shape {p.shape}")
    cols = p.shape[1] if p.shape.rank == 2 else None
    if cols is None:
        raise ValueError("points must have a static number of columns (1 + D)")
    if cols < 2:
        raise ValueError(f"points must have a batch column and at least one position "
                         f"column, got shape {p.shape}")
    return p, cols - 1


def _voxel_size_tensor(voxel_size, d):
    try:
        size = tf.cast(tf.convert_to_tensor(voxel_size), tf.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"voxel_size must be a number or {d} numbers, got "
                        f"{voxel_size!r}") from error
    if size.shape.rank == 0:
        size = tf.fill([d], size)
    elif size.shape.rank != 1 or (size.shape[0] is not None and size.shape[0] != d):
        raise ValueError(f"voxel_size must be a scalar or {d} sizes (one per position "
                         f"column), got shape {size.shape}")
    static = tf.get_static_value(size)
    if static is not None and not np.all(np.isfinite(static) & (static > 0)):
        raise ValueError(f"voxel_size must be finite and > 0, got {np.asarray(static).tolist()}")
    return size


def _features_tensor(features, points):
    """(features in float32 / float64, the dtype to return) for the op."""
    if features is None:
        return tf.zeros(tf.stack([tf.shape(points)[0], 0]), tf.float32), None
    f = tf.convert_to_tensor(features)
    if f.shape.rank is not None and f.shape.rank != 2:
        raise ValueError(f"features must be [N, C], got shape {f.shape}")
    if f.dtype in (tf.float32, tf.float64):
        return f, f.dtype
    if f.dtype.is_floating:
        return tf.cast(f, tf.float32), f.dtype
    if f.dtype.is_integer:
        return tf.cast(f, tf.float64), f.dtype
    raise TypeError(f"features must be float or int, got {f.dtype.name}")


def voxelize(points, features=None, voxel_size=1.0, mode="average"):
    """Voxelizes points in the graph.

    Args:
      points: float (or int) [N, 1 + D]: column 0 the batch index (whole
        numbers >= 0), columns 1..D positions. N may be unknown while tracing.
      features: optional [N, C], merged per site by `mode`.
      voxel_size: a scalar or D sizes, finite and > 0.
      mode: "average", "sum", "max" or "first" (the first point in input
        order). Averages and sums are taken in float64 in input order, as
        `sparse_quantize` takes them; integer features give float32 for
        "average" and "sum", their own dtype for "max" and "first".
    Returns:
      (x, inverse): x a SparseTensor (stride 1) whose coordinates are
      (batch, floor(position / voxel_size)), one row per distinct site in
      lexicographic order (as np.unique(axis=0)), and whose features are
      the merged features (with features=None, each site's point count,
      float32 [M, 1]); inverse int32 [N], each point's row in x, so that
      `tf.gather(y.features, inverse)` reads an output back per point.
      Differentiable with respect to `features` ("max" and "first": the
      gradient goes to the point whose value was kept).
    Raises:
      InvalidArgumentError (ValueError when known while tracing): positions
      that are NaN or infinite, a batch index that is negative or not whole,
      coordinates beyond int32 after the division, voxel_size <= 0.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    p, d = _points_tensor(points)
    size = _voxel_size_tensor(voxel_size, d)
    f, out_dtype = _features_tensor(features, p)
    if out_dtype is not None and out_dtype.is_integer:
        out_dtype = tf.float32  # a SparseTensor's features are float
    if features is not None and f.shape[0] is not None and p.shape[0] is not None \
            and f.shape[0] != p.shape[0]:
        raise ValueError(f"features has {f.shape[0]} rows but points has {p.shape[0]}")
    op_mode = "first" if features is None else mode  # no features: counts only
    coordinates, merged, inverse, counts, _ = _voxelize(_dispatch.current(), p, f, size,
                                                        op_mode)
    if features is None:
        merged = tf.cast(counts, tf.float32)[:, None]
    elif out_dtype != merged.dtype:
        merged = tf.cast(merged, out_dtype)
    coordinates = tf.ensure_shape(coordinates, [None, d + 1])
    return SparseTensor(merged, coordinates), inverse
