"""Sparse pooling: max, average and sum over the active input sites of each
window, and unpooling (the transpose of sum pooling).

The output sites and the kernel map are those of a strided `conv` with
kernel_size = pool_size and the same strides, so the (cached) map is shared
with convolutions of the same geometry.
"""

import tensorflow as tf

from sparse_ops import geometry
from sparse_ops.ops import _common
from sparse_ops.ops import _dispatch
from sparse_ops.ops import coordinates as coords_ops
from sparse_ops.ops import reference
from sparse_ops.tensor import SparseTensor

_VALIDATE = _dispatch.VALIDATE_LIBRARY_MAPS
_CUSTOM = _dispatch.CUSTOM


# -- raw feature ops (custom or reference), gradients registered beside them --

@_dispatch.dual(reference.max_pool)
def _max_pool_features(library, features, kmap, num_out_rows):
    """[M, C]: the maximum over the pairs of each output row (0 without pairs)."""
    out, _ = library.sparse_ops_max_pool(features, *kmap, num_out_rows,
                                         validate_map=_VALIDATE)
    return out


@_dispatch.dual(reference.sum_pool)
def _sum_pool_features(library, features, kmap, num_out_rows, average):
    """[M, C]: the sum (average: mean) over the pairs of each output row."""
    return library.sparse_ops_sum_pool(features, *kmap, num_out_rows, average=average,
                                       validate_map=_VALIDATE)


@_dispatch.dual(reference.sum_pool_transpose)
def _sum_pool_transpose(library, features, kmap, num_in_rows, average):
    """[N, C]: the adjoint of `_sum_pool_features` (features has M rows)."""
    return library.sparse_ops_sum_pool_transpose(features, *kmap, num_in_rows,
                                                 average=average, validate_map=_VALIDATE)


def _max_pool_grad(grad, argmax, num_in_rows):
    return _CUSTOM.library.sparse_ops_max_pool_grad(grad, argmax, num_in_rows)


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
    return (_sum_pool_transpose(_CUSTOM, grad, (splits, in_rows, out_rows),
                                _common.num_rows(features), op.get_attr("average")),
            None, None, None, None)


@tf.RegisterGradient("SparseOps>SumPoolTranspose")
def _sum_pool_transpose_op_grad(op, grad):
    features, splits, in_rows, out_rows, _ = op.inputs
    return (_sum_pool_features(_CUSTOM, grad, (splits, in_rows, out_rows),
                               _common.num_rows(features), op.get_attr("average")),
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
    out_c, out_stride, link = _common.strided_output(x, strides)
    kmap = tuple(coords_ops.kernel_map(x.coordinates, out_c, offsets, x.stride_tensor))
    impl = _dispatch.current()
    features, out_dtype = impl.to_compute(x.features)
    n_out = _common.num_rows(out_c)
    if mode == "max":
        y = _max_pool_features(impl, features, kmap, n_out)
    else:
        y = _sum_pool_features(impl, features, kmap, n_out, mode == "avg")
    return SparseTensor(_finish(y, x, out_dtype), out_c, out_stride, link)


def _finish(y, x, out_dtype):
    """Pooled features with x's channels, in x's dtype."""
    y = tf.ensure_shape(y, [None, x.features.shape[1]])
    return _dispatch.from_compute(y, out_dtype)


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
    out_c, out_stride, link = _common.transposed_output(x, strides,
                                                        generative_offsets=offsets)
    # The map of the pooling from the fine sites to x's sites, transposed.
    kmap = tuple(coords_ops.kernel_map(out_c, x.coordinates, offsets, out_stride))
    impl = _dispatch.current()
    features, out_dtype = impl.to_compute(x.features)
    y = _sum_pool_transpose(impl, features, kmap, _common.num_rows(out_c), False)
    return SparseTensor(_finish(y, x, out_dtype), out_c, out_stride, link)
