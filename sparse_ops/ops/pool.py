"""Sparse pooling: max, average and sum over the active input sites of each
window, and unpooling (the transpose of sum pooling).

The output sites and the kernel map are those of a strided `conv` with
kernel_size = pool_size and the same strides, so the (cached) map is shared
with convolutions of the same geometry.
"""

import tensorflow as tf

from sparse_ops import _loader
from sparse_ops import config
from sparse_ops import geometry
from sparse_ops.ops import _common
from sparse_ops.ops import coordinates as coords_ops
from sparse_ops.ops import reference
from sparse_ops.tensor import SparseTensor


# -- raw feature ops (custom or reference), gradients registered beside them --

def _max_pool_features(features, kmap, num_out_rows, use_reference):
    """[M, C]: the maximum over the pairs of each output row (0 without pairs)."""
    if use_reference:
        return reference.max_pool(features, kmap, num_out_rows)
    out, _ = _loader.library().sparse_ops_max_pool(features, *kmap, num_out_rows,
                                                   validate_map=_common.VALIDATE_LIBRARY_MAPS)
    return out


def _sum_pool_features(features, kmap, num_out_rows, average, use_reference):
    """[M, C]: the sum (average: mean) over the pairs of each output row."""
    if use_reference:
        return reference.sum_pool(features, kmap, num_out_rows, average)
    return _loader.library().sparse_ops_sum_pool(features, *kmap, num_out_rows,
                                                 average=average,
                                                 validate_map=_common.VALIDATE_LIBRARY_MAPS)


def _sum_pool_transpose(features, kmap, num_in_rows, average, use_reference):
    """[N, C]: the adjoint of `_sum_pool_features` (features has M rows)."""
    if use_reference:
        return reference.sum_pool_transpose(features, kmap, num_in_rows, average)
    return _loader.library().sparse_ops_sum_pool_transpose(
        features, *kmap, num_in_rows, average=average, validate_map=_common.VALIDATE_LIBRARY_MAPS)


def _max_pool_grad(grad, argmax, num_in_rows):
    return _loader.library().sparse_ops_max_pool_grad(grad, argmax, num_in_rows)


@tf.RegisterGradient("SparseOps>MaxPool")
def _max_pool_op_grad(op, grad, unused_argmax_grad):
    features = op.inputs[0]
    argmax = op.outputs[1]
    return (_max_pool_grad(grad, argmax, _common.num_rows(features)),
            None, None, None, None)


@tf.RegisterGradient("SparseOps>MaxPoolGrad")
def _max_pool_grad_op_grad(op, grad):
    # z[i, c] = sum over o with argmax[o, c] == i of g[o, c]:
    # dg[o, c] = dz[argmax[o, c], c] (0 where argmax is -1).
    argmax = op.inputs[1]
    valid = argmax >= 0
    rows = tf.where(valid, argmax, tf.zeros_like(argmax))
    channels = tf.broadcast_to(tf.range(tf.shape(argmax)[1])[None, :],
                               tf.shape(argmax))
    picked = tf.gather_nd(grad, tf.stack([rows, channels], -1))
    return tf.where(valid, picked, tf.zeros_like(picked)), None, None


# Sum pooling and its transpose are linear and adjoint to each other: each
# one's gradient is the other on the same map.
@tf.RegisterGradient("SparseOps>SumPool")
def _sum_pool_op_grad(op, grad):
    features, splits, in_rows, out_rows, _ = op.inputs
    return (_sum_pool_transpose(grad, (splits, in_rows, out_rows), _common.num_rows(features),
                                op.get_attr("average"), False),
            None, None, None, None)


@tf.RegisterGradient("SparseOps>SumPoolTranspose")
def _sum_pool_transpose_op_grad(op, grad):
    features, splits, in_rows, out_rows, _ = op.inputs
    return (_sum_pool_features(grad, (splits, in_rows, out_rows), _common.num_rows(features),
                               op.get_attr("average"), False),
            None, None, None, None)


# -- geometry --------------------------------------------------------------

def _prepare(x, pool_size, strides, name):
    x = _common.sparse_input(x)
    d = x.dimension
    pool_size = geometry.normalize_tuple(pool_size, d, f"{name}: pool_size")
    strides = pool_size if strides is None else geometry.normalize_tuple(
        strides, d, f"{name}: strides")
    offsets = geometry.offsets_array(pool_size, 1, "hypercube", d, strides)
    return x, strides, offsets


def _pool(x, pool_size, strides, mode):
    x, strides, offsets = _prepare(x, pool_size, strides, f"{mode}_pool")
    out_stride = _common.times(x.stride_tensor, strides)
    strided = any(s != 1 for s in strides)
    if strided:
        out_c = coords_ops.strided_coordinates(x.coordinates, out_stride)
    else:
        out_c = x.coordinates
    kmap = tuple(coords_ops.kernel_map(x.coordinates, out_c, offsets, x.stride_tensor))
    features, out_dtype = _common.to_compute(x.features)
    n_out = _common.num_rows(out_c)
    use_reference = config.use_reference()
    if mode == "max":
        y = _max_pool_features(features, kmap, n_out, use_reference)
    else:
        y = _sum_pool_features(features, kmap, n_out, mode == "avg", use_reference)
    y = tf.ensure_shape(y, [None, x.features.shape[1]])
    return SparseTensor(_common.from_compute(y, out_dtype), out_c, out_stride,
                        _common.push_link(x) if strided else x.finer)


# -- public ops ------------------------------------------------------------

def max_pool(x, pool_size, strides=None):
    """Sparse max pooling over the ACTIVE input sites of each window.

    Args:
      x: `SparseTensor` (or `tf.SparseTensor` [B, *spatial, C], or its fields).
      pool_size: int or D ints.
      strides: int or D ints; default pool_size.
    Returns:
      `SparseTensor` on the output sites of a strided `conv` with
      kernel_size = pool_size (stride t * strides). Equals
      `tf.nn.max_pool(padding="SAME")` of the dense input at those sites
      when the features are >= 0.
    """
    return _pool(x, pool_size, strides, "max")


def avg_pool(x, pool_size, strides=None):
    """Sparse average pooling: the mean over the ACTIVE input sites of each
    window (sites as `max_pool`)."""
    return _pool(x, pool_size, strides, "avg")


def sum_pool(x, pool_size, strides=None):
    """Sparse sum pooling: the sum over the input sites of each window (sites
    as `max_pool`); a depthwise convolution with a ones kernel."""
    return _pool(x, pool_size, strides, "sum")


def unpool(x, pool_size, strides=None):
    """The transpose of `sum_pool` (MinkowskiEngine's PoolingTranspose).

    Output sites are every site the window reaches from each input site
    (generative), at stride t / strides; each receives the sum of the inputs
    whose window covers it. With pool_size == strides every child gets its
    parent's features.
    """
    x, strides, offsets = _prepare(x, pool_size, strides, "unpool")
    out_stride = _common.divided(x, strides)
    out_c = coords_ops.generative_coordinates(x.coordinates, offsets, out_stride)
    # The map of the pooling from the fine sites to x's sites, transposed.
    kmap = tuple(coords_ops.kernel_map(out_c, x.coordinates, offsets, out_stride))
    features, out_dtype = _common.to_compute(x.features)
    y = _sum_pool_transpose(features, kmap, _common.num_rows(out_c), False,
                            config.use_reference())
    y = tf.ensure_shape(y, [None, x.features.shape[1]])
    strided = any(s != 1 for s in strides)
    return SparseTensor(_common.from_compute(y, out_dtype), out_c, out_stride,
                        _common.pop_link(x) if strided else x.finer)
