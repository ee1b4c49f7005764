"""Coordinate ops: kernel maps, strided and generative output coordinates."""

import collections

import numpy as np
import tensorflow as tf

from sparse_ops import _checks
from sparse_ops.ops import _dispatch
from sparse_ops.ops import cache
from sparse_ops.ops import reference
from sparse_ops.tensor import as_coordinates

KernelMap = collections.namedtuple("KernelMap",
                                   ["offset_splits", "in_rows", "out_rows"])
KernelMap.__doc__ = """Pairs of a sparse convolution, CSR by kernel offset.

Pairs of offset k are [offset_splits[k], offset_splits[k + 1]), as
(in_rows[p], out_rows[p]) with in_coordinates[in] == out_coordinates[out] +
offsets[k] * stride; sorted by output row within an offset.
"""


# -- raw ops (custom or reference) ---------------------------------------------

@_dispatch.dual(reference.kernel_map)
def _kernel_map_op(library, in_c, out_c, offsets, stride):
    return library.sparse_ops_kernel_map(in_c, out_c, offsets, stride)


@_dispatch.dual(reference.strided_coordinates)
def _strided_op(library, coordinates, stride):
    return library.sparse_ops_strided_coordinates(coordinates, stride)


@_dispatch.dual(reference.generative_coordinates)
def _generative_op(library, coordinates, offsets, stride):
    return library.sparse_ops_generative_coordinates(coordinates, offsets, stride)


def _static_key(t):
    value = tf.get_static_value(t)
    return ("value", np.asarray(value).tobytes()) if value is not None else (
        "tensor", id(t))


def kernel_map(in_coordinates, out_coordinates, offsets, stride=1):
    """The kernel map between two coordinate sets.

    Args:
      in_coordinates: int32 [N, 1 + D], unique rows.
      out_coordinates: int32 [M, 1 + D]; pass the same tensor as
        in_coordinates for a submanifold map (it is then built with half the
        probes when the offsets are symmetric).
      offsets: int32 [K, D] (`sparse_ops.kernel_offsets`).
      stride: the input tensor stride, int or D ints or int32 [D].
    Returns:
      KernelMap(offset_splits int64 [K + 1], in_rows int32 [P], out_rows int32 [P]).
    """
    in_c = as_coordinates(in_coordinates, "in_coordinates")
    out_c = in_c if out_coordinates is in_coordinates else as_coordinates(
        out_coordinates, "out_coordinates")
    offsets = _offsets(offsets)
    stride = _stride_vector(stride, in_c)
    _check_columns(in_c, out_c, offsets, stride)
    impl = _dispatch.current()
    key = ("kernel_map", _static_key(offsets), _static_key(stride), impl.reference)
    cached = cache.lookup((in_c, out_c), key)
    if cached is not None:
        return cached
    value = KernelMap(*_kernel_map_op(impl, in_c, out_c, offsets, stride))
    return cache.store((in_c, out_c), key, value)


def _check_columns(in_c, out_c, offsets, stride):
    """Static shape checks that name the argument (the ops check again)."""
    cols = in_c.shape[1]
    if out_c.shape[1] is not None and cols is not None and out_c.shape[1] != cols:
        raise ValueError(f"in_coordinates and out_coordinates must have the same number "
                         f"of columns, got {cols} and {out_c.shape[1]}")
    if cols is None:
        return
    if offsets.shape.rank != 2 or offsets.shape[1] not in (None, cols - 1):
        raise ValueError(f"offsets must be [K, {cols - 1}] (one column per spatial "
                         f"axis), got shape {offsets.shape}")
    if stride.shape.rank != 1 or stride.shape[0] not in (None, cols - 1):
        raise ValueError(f"stride must have {cols - 1} entries, got shape {stride.shape}")


def _stride_vector(stride, coordinates):
    """The stride as an int32 [D] tensor, each entry in [1, 2^31 - 1]
    (checked here for Python values; the ops check tensors)."""
    if isinstance(stride, (tf.Tensor, tf.Variable)):
        return _checks.int32_tensor(stride, "stride")
    cols = coordinates.shape[1]
    if np.ndim(stride) == 0 and cols is None:
        raise ValueError("an int stride needs coordinates with a static "
                         "number of columns")
    d = cols - 1 if cols is not None else len(stride)
    return tf.constant(_checks.int_tuple(stride, d, "stride"), tf.int32)


def _offsets(offsets):
    """Kernel offsets as an int32 [K, D] tensor (never wrapped or truncated)."""
    return _checks.int32_tensor(offsets, "offsets")


def strided_coordinates(coordinates, stride):
    """unique(floor(c / stride) * stride) per spatial axis, batch kept, sorted."""
    coordinates = as_coordinates(coordinates)
    stride = _stride_vector(stride, coordinates)
    impl = _dispatch.current()
    key = ("strided", _static_key(stride), impl.reference)
    cached = cache.lookup((coordinates,), key)
    if cached is not None:
        return cached
    return cache.store((coordinates,), key, _strided_op(impl, coordinates, stride))


def generative_coordinates(coordinates, offsets, stride):
    """Every site c + offsets[k] * stride, unique and sorted."""
    coordinates = as_coordinates(coordinates)
    offsets = _offsets(offsets)
    stride = _stride_vector(stride, coordinates)
    impl = _dispatch.current()
    key = ("generative", _static_key(offsets), _static_key(stride), impl.reference)
    cached = cache.lookup((coordinates,), key)
    if cached is not None:
        return cached
    return cache.store((coordinates,), key,
                       _generative_op(impl, coordinates, offsets, stride))
