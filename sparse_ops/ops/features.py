"""Feature-only ops: global pooling, broadcasting dense per-batch-item
tensors onto sites, and instance normalisation.

All of them are segment reductions over the batch index (column 0 of the
coordinates). Global pooling runs as custom ops (gradients registered here)
or, in the reference implementation, as TensorFlow segment ops.
"""

import math
import numbers

import tensorflow as tf

from sparse_ops import _checks
from sparse_ops.ops import _dispatch
from sparse_ops.ops import reference
from sparse_ops.tensor import as_sparse

GLOBAL_POOL_MODES = ("max", "avg", "sum")
BROADCAST_OPS = ("add", "multiply", "concat")
_CUSTOM = _dispatch.CUSTOM


def check_epsilon(epsilon):
    """epsilon as a float >= 0 (finite)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"epsilon must be a float >= 0, got {epsilon!r}")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite float >= 0, got {epsilon!r}")
    return float(epsilon)


def _as_float(value, dtype, name):
    """A tensor of `dtype` from a float or int value; TypeError otherwise."""
    try:
        t = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a float tensor: {e}") from None
    if not (t.dtype.is_floating or t.dtype.is_integer):
        raise TypeError(f"{name} must be a float tensor, got {t.dtype.name}")
    return t if t.dtype == dtype else tf.cast(t, dtype)


def _segments(x):
    """(batch index per site, number of batch items)."""
    return x.coordinates[:, 0], x.batch_size()


def _counts(batch, num, dtype):
    ones = tf.ones_like(batch, dtype=dtype)
    return tf.math.unsorted_segment_sum(ones, batch, num)


def global_pool(x, mode="max"):
    """Dense [B, C] from the sites of each batch item, B = x.batch_size().

    mode "max", "avg" (mean over the active sites) or "sum". A batch item
    with no sites gives zeros in every mode.
    """
    if mode not in GLOBAL_POOL_MODES:
        raise ValueError(f"mode must be one of {GLOBAL_POOL_MODES}, got {mode!r}")
    x = as_sparse(x)
    batch, num = _segments(x)
    impl = _dispatch.current()
    # float16 / bfloat16 pool in float32 (exact for max and sum of few sites).
    features, out_dtype = impl.to_compute(x.features)
    return _dispatch.from_compute(_global_pool(impl, features, batch, num, mode),
                                  out_dtype)


@_dispatch.dual(reference.global_pool)
def _global_pool(library, features, batch, num, mode):
    num = tf.cast(num, tf.int64)
    if mode == "max":
        out, _ = library.sparse_ops_global_max_pool(features, batch, num)
        return out
    return library.sparse_ops_global_sum_pool(features, batch, num,
                                              average=mode == "avg")


@tf.RegisterGradient("SparseOps>GlobalMaxPool")
def _global_max_pool_grad(op, grad, unused_argmax_grad):
    # The gradient of max pooling through its argmax, with the B items as
    # the output rows.
    rows = tf.shape(op.inputs[0], out_type=tf.int64)[0]
    return (_CUSTOM.library.sparse_ops_max_pool_grad(grad, op.outputs[1], rows),
            None, None)


# Global sum pooling and its gradient are linear and adjoint to each other.
@tf.RegisterGradient("SparseOps>GlobalSumPool")
def _global_sum_pool_grad(op, grad):
    return (_CUSTOM.library.sparse_ops_global_sum_pool_grad(
        grad, op.inputs[1], average=op.get_attr("average")), None, None)


@tf.RegisterGradient("SparseOps>GlobalSumPoolGrad")
def _global_sum_pool_grad_grad(op, grad):
    g, batch = op.inputs
    rows = tf.shape(g, out_type=tf.int64)[0]
    return (_CUSTOM.library.sparse_ops_global_sum_pool(
        grad, batch, rows, average=op.get_attr("average")), None)


def broadcast(x, g, op="add"):
    """Combines dense g [B, C'] with every site of batch item b.

    op "add" and "multiply" need C' == C (or 1); "concat" appends g's
    channels after x's. Returns a SparseTensor with x's coordinates. Every
    batch index of x must be a row of g.
    """
    if op not in BROADCAST_OPS:
        raise ValueError(f"op must be one of {BROADCAST_OPS}, got {op!r}")
    x = as_sparse(x)
    g = _as_float(g, x.features.dtype, "g")
    if g.shape.rank is not None and g.shape.rank != 2:
        raise ValueError(f"g must be a dense [B, C] tensor, got shape {g.shape}")
    c, c_g = x.features.shape[-1], g.shape[-1]
    checks = []
    if op != "concat":
        if c is not None and c_g is not None and c_g not in (c, 1):
            raise ValueError(f"g has {c_g} channels but x has {c}: broadcast {op} "
                             "needs g with the same number of channels or 1")
        if c is None or c_g is None:
            channels = tf.shape(g)[1]
            checks.append(tf.debugging.Assert(
                (channels == tf.shape(x.features)[1]) | (channels == 1),
                [f"broadcast {op}: g must have x's number of channels or 1"]))
    per_site = _checks.with_checks(checks, tf.gather(g, x.coordinates[:, 0]))
    if op == "add":
        out = x.features + per_site
    elif op == "multiply":
        out = x.features * per_site
    else:
        out = tf.concat([x.features, per_site], axis=1)
    return x.with_features(out)


def instance_norm(x, epsilon=1e-5, gamma=None, beta=None):
    """Normalises each channel of each batch item over its sites:
    (f - mean) / sqrt(var + epsilon), then * gamma + beta when given."""
    epsilon = check_epsilon(epsilon)
    x = as_sparse(x)
    # Segments over the batch items present (not up to the largest batch
    # index): memory follows the number of sites whatever the indices.
    items, batch = tf.unique(x.coordinates[:, 0])
    num = tf.shape(items)[0]
    f = x.features
    counts = _counts(batch, num, f.dtype)
    counts = tf.maximum(counts, tf.ones_like(counts))[:, tf.newaxis]
    mean = tf.math.unsorted_segment_sum(f, batch, num) / counts
    centred = f - tf.gather(mean, batch)
    var = tf.math.unsorted_segment_sum(tf.square(centred), batch, num) / counts
    out = centred * tf.gather(tf.math.rsqrt(var + tf.cast(epsilon, f.dtype)), batch)
    if gamma is not None:
        out = out * tf.cast(gamma, f.dtype)
    if beta is not None:
        out = out + tf.cast(beta, f.dtype)
    return x.with_features(out)
