"""Coordinate ops: kernel maps, strided and generative output coordinates."""

import collections
import weakref

import numpy as np
import tensorflow as tf

from sparse_ops import config
from sparse_ops import _loader
from sparse_ops.ops import cache
from sparse_ops.ops import reference

KernelMap = collections.namedtuple("KernelMap",
                                   ["offset_splits", "in_rows", "out_rows"])
KernelMap.__doc__ = """Pairs of a sparse convolution, CSR by kernel offset.

Pairs of offset k are [offset_splits[k], offset_splits[k + 1]), as
(in_rows[p], out_rows[p]) with in_coordinates[in] == out_coordinates[out] +
offsets[k] * stride; sorted by output row within an offset.
"""


def _static_key(t):
    value = tf.get_static_value(t)
    return ("value", np.asarray(value).tobytes()) if value is not None else (
        "tensor", id(t))


def _use_reference():
    return config.use_reference()


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
    from sparse_ops.tensor import as_coordinates  # pylint: disable=import-outside-toplevel
    in_c = as_coordinates(in_coordinates, "in_coordinates")
    out_c = in_c if out_coordinates is in_coordinates else as_coordinates(
        out_coordinates, "out_coordinates")
    offsets = tf.convert_to_tensor(offsets, tf.int32)
    stride = _stride_vector(stride, in_c)
    _check_columns(in_c, out_c, offsets, stride)
    use_reference = _use_reference()
    key = ("kernel_map", _static_key(offsets), _static_key(stride), use_reference)
    cached = cache.lookup((in_c, out_c), key)
    if cached is not None:
        return cached
    if use_reference:
        value = KernelMap(*reference.kernel_map(in_c, out_c, offsets, stride))
    else:
        value = KernelMap(*_loader.library().sparse_ops_kernel_map(
            in_c, out_c, offsets, stride))
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
    if isinstance(stride, tf.Tensor):
        return tf.cast(stride, tf.int32)
    stride = np.asarray(stride, np.int32)
    if stride.ndim == 0:
        d = coordinates.shape[1]
        if d is None:
            raise ValueError("an int stride needs coordinates with a static "
                             "number of columns")
        stride = np.full([d - 1], stride, np.int32)
    return tf.constant(stride)


def strided_coordinates(coordinates, stride, finer_stride=None):
    """unique(floor(c / stride) * stride) per spatial axis, batch kept, sorted.

    The result remembers its finer coordinates and their tensor stride
    `finer_stride` (see `finer_coordinates`).
    """
    stride = _stride_vector(stride, coordinates)
    use_reference = _use_reference()
    key = ("strided", _static_key(stride), use_reference)
    # Coarse -> fine is held strongly (a transposed convolution needs the fine
    # sites even when nothing else keeps them); fine -> coarse weakly, so the
    # two entries never keep each other alive.
    cached = cache.lookup((coordinates,), key)
    if cached is not None and cached() is not None:
        return cached()
    if use_reference:
        out = reference.strided_coordinates(coordinates, stride)
    else:
        out = _loader.library().sparse_ops_strided_coordinates(coordinates, stride)
    if finer_stride is not None:
        cache.store((out,), ("finer",), (coordinates, finer_stride))
    cache.store((coordinates,), key, weakref.ref(out))
    return out


def finer_coordinates(coordinates):
    """(coordinates, tensor stride) that `coordinates` were strided from, or
    None when unknown."""
    return cache.lookup((coordinates,), ("finer",))


def generative_coordinates(coordinates, offsets, stride):
    """Every site c + offsets[k] * stride, unique and sorted."""
    offsets = tf.convert_to_tensor(offsets, tf.int32)
    stride = _stride_vector(stride, coordinates)
    use_reference = _use_reference()
    key = ("generative", _static_key(offsets), _static_key(stride), use_reference)
    cached = cache.lookup((coordinates,), key)
    if cached is not None:
        return cached
    if use_reference:
        out = reference.generative_coordinates(coordinates, offsets, stride)
    else:
        out = _loader.library().sparse_ops_generative_coordinates(
            coordinates, offsets, stride)
    return cache.store((coordinates,), key, out)
