"""What the op modules share: input preparation, weights, tensor strides
of strided and transposed ops, their output sites, and the link from a
strided tensor back to the finer one it came from. (Which implementation
an op runs, and in which dtype: `_dispatch`.)"""

import numpy as np
import tensorflow as tf

from sparse_ops import _checks
from sparse_ops.ops import coordinates
from sparse_ops.tensor import SparseTensor, as_coordinates, as_sparse


def num_rows(t):
    return tf.shape(t, out_type=tf.int64)[0]


def rows_match(x):
    """x's features, checked at run time to have one row per site when the
    row counts are not known while tracing."""
    n_f, n_c = x.features.shape[0], x.coordinates.shape[0]
    if n_f is not None and n_c is not None:
        return x.features  # SparseTensor() checked them
    check = tf.debugging.assert_equal(
        tf.shape(x.features)[0], tf.shape(x.coordinates)[0],
        message="features and coordinates must have the same number of rows")
    return _checks.with_checks([check], x.features)


def sparse_input(x, name="x"):
    """x as a SparseTensor with a static dimension and rows checked."""
    x = as_sparse(x, name)
    if x.dimension is None:
        raise ValueError(f"{name}: coordinates must have a static number of columns")
    return x.with_features(rows_match(x))


def float_weight(value, dtype, name):
    """A weight (kernel, bias) as a float tensor of `dtype`: TypeError naming
    it for strings, ints or another float dtype."""
    try:
        t = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a float tensor: {e}") from None
    if not t.dtype.is_floating:
        raise TypeError(f"{name} must be a float tensor, got {t.dtype.name}")
    if t.dtype != dtype:
        raise TypeError(f"{name} dtype {t.dtype.name} does not match the features "
                        f"dtype {dtype.name}")
    return t


def times(stride_tensor, strides):
    """The output tensor stride t * s of a strided op, refusing to wrap
    around int32 (now when t is static, by a graph assertion otherwise)."""
    static = tf.get_static_value(stride_tensor)
    if static is not None:
        product = np.asarray(static, np.int64) * np.asarray(strides, np.int64)
        if np.any(product > _checks.INT32_MAX):
            raise ValueError(
                f"tensor stride {[int(v) for v in np.reshape(static, [-1])]} times "
                f"strides {list(strides)} overflows int32; the chain of strided "
                "layers is too long")
        return tf.constant(product.astype(np.int32))
    product = tf.cast(stride_tensor, tf.int64) * tf.constant(strides, tf.int64)
    check = tf.debugging.assert_less_equal(
        product, tf.constant(_checks.INT32_MAX, tf.int64),
        message="tensor stride times strides overflows int32")
    return _checks.with_checks([check], tf.cast(product, tf.int32))


def divided(x, strides):
    """The output tensor stride t / s of a transposed op (t must be a
    multiple of s: now when t is static, by a graph assertion otherwise)."""
    stride = x.stride
    if isinstance(stride, tuple):
        if any(t % s for t, s in zip(stride, strides)):
            raise ValueError(f"tensor stride {stride} is not divisible by strides "
                             f"{strides}")
        return tf.constant([t // s for t, s in zip(stride, strides)], tf.int32)
    s = tf.constant(strides, tf.int32)
    check = tf.debugging.assert_equal(
        tf.math.floormod(x.stride_tensor, s), tf.zeros_like(s),
        message=f"the tensor stride is not divisible by strides {strides}")
    return _checks.with_checks([check], tf.math.floordiv(x.stride_tensor, s))


def same_stride(a, b, message):
    """Checks two int32 [D] strides are equal: now when both are static,
    else returns a graph assertion (None when nothing is left to check)."""
    sa, sb = tf.get_static_value(a), tf.get_static_value(b)
    if sa is not None and sb is not None:
        if not np.array_equal(sa, sb):
            raise ValueError(f"{message}: stride {np.reshape(sa, [-1]).tolist()} "
                             f"!= {np.reshape(sb, [-1]).tolist()}")
        return None
    return tf.debugging.assert_equal(a, b, message=message)


# -- output sites and the link to finer sites ----------------------------------

def is_strided(strides):
    return any(s != 1 for s in strides)


def strided_output(x, strides, out_coordinates=None):
    """(sites, stride, finer link) of the output of a strided op (conv,
    pooling): the given sites, x's own (strides 1), or x's strided sites
    (linked back to x's); stride t * strides."""
    out_stride = times(x.stride_tensor, strides)
    strided = is_strided(strides)
    link = push_link(x) if strided else x.finer
    if out_coordinates is not None:
        out_c, _ = output_sites(out_coordinates, "out_coordinates", out_stride)
    elif not strided:
        out_c = x.coordinates
    else:
        out_c = coordinates.strided_coordinates(x.coordinates, out_stride)
    return out_c, out_stride, link


def transposed_output(x, strides, out_coordinates=None, generative_offsets=None,
                      op="conv_transpose"):
    """(sites, stride, finer link) of the output of a transposed op
    (conv_transpose, unpool), stride t / strides: the given sites (keeping
    their link when they are a SparseTensor); with `generative_offsets`
    [K, D], every site c + offset * t / strides; else x's own sites
    (strides 1) or the finer sites x was strided from (its link)."""
    out_stride = divided(x, strides)
    strided = is_strided(strides)
    link = pop_link(x) if strided else x.finer
    if out_coordinates is not None:
        out_c, given_link = output_sites(out_coordinates, "out_coordinates", out_stride)
        link = link if given_link is None else given_link
    elif generative_offsets is not None:
        out_c = coordinates.generative_coordinates(x.coordinates, generative_offsets,
                                                   out_stride)
    elif not strided:
        out_c = x.coordinates
    else:
        out_c = finer_sites(x, out_stride, op)
    return out_c, out_stride, link


def output_sites(value, name, stride):
    """(coordinates, link) of given output sites: int coordinates (link None:
    the caller decides), or a SparseTensor, whose stride must be `stride`
    and whose link the output keeps."""
    if isinstance(value, SparseTensor) or isinstance(value, tf.SparseTensor) or (
            isinstance(value, (list, tuple)) and len(value) in (2, 3, 4)
            and hasattr(value[0], "dtype") and getattr(value[0], "dtype") not in (
                tf.int32, tf.int64, "int32", "int64")):
        sites = as_sparse(value, name)
        check = same_stride(sites.stride_tensor, stride,
                            f"{name} has another tensor stride than the output")
        return _checks.with_checks([check], sites.coordinates), sites.finer
    return as_coordinates(value, name), None


def push_link(x):
    """The link of a tensor strided from x: x's sites on top of x's link."""
    return (x.coordinates, x.stride_tensor, x.finer)


def pop_link(x):
    """The link of a tensor at the finer stride x was strided from."""
    return x.finer[2] if x.finer else ()


def finer_sites(x, out_stride, op):
    """The sites x was strided from, for a transposed op without explicit
    output sites; their stride must be `out_stride`."""
    if not x.finer:
        raise ValueError(
            f"{op} does not know the output sites: x carries no link to a finer "
            "tensor (it was not made by a strided op, or was rebuilt from its "
            "fields). Pass the output sites (coordinates= / out_coordinates=, "
            "e.g. a skip connection's SparseTensor) or use generative=True.")
    coordinates, stride, _ = x.finer
    check = same_stride(stride, out_stride,
                        f"{op}: x was strided from a tensor of another stride than "
                        "the output's; pass the output sites (out_coordinates= / "
                        "coordinates=)")
    return _checks.with_checks([check], coordinates)
