"""Feature-only ops: global pooling, broadcasting dense per-batch-item
tensors onto sites, and instance normalisation.

All of them are segment reductions over the batch index (column 0 of the
coordinates). Global pooling runs as custom ops (gradients registered here)
or, in the reference implementation, as TensorFlow segment ops.
"""

import tensorflow as tf

from sparse_ops import _loader
from sparse_ops import config
from sparse_ops.ops import reference
from sparse_ops.tensor import as_sparse

GLOBAL_POOL_MODES = ("max", "avg", "sum")
BROADCAST_OPS = ("add", "multiply", "concat")


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
    f = x.features
    if config.use_reference() or f.dtype not in (tf.float32, tf.float64):
        return reference.global_pool(f, batch, num, mode)
    lib = _loader.library()
    num = tf.cast(num, tf.int64)
    if mode == "max":
        out, _ = lib.sparse_ops_global_max_pool(f, batch, num)
        return out
    return lib.sparse_ops_global_sum_pool(f, batch, num, average=mode == "avg")


@tf.RegisterGradient("SparseOps>GlobalMaxPool")
def _global_max_pool_grad(op, grad, unused_argmax_grad):
    # The gradient of max pooling through its argmax, with the B items as
    # the output rows.
    rows = tf.shape(op.inputs[0], out_type=tf.int64)[0]
    return (_loader.library().sparse_ops_max_pool_grad(grad, op.outputs[1], rows),
            None, None)


# Global sum pooling and its gradient are linear and adjoint to each other.
@tf.RegisterGradient("SparseOps>GlobalSumPool")
def _global_sum_pool_grad(op, grad):
    return (_loader.library().sparse_ops_global_sum_pool_grad(
        grad, op.inputs[1], average=op.get_attr("average")), None, None)


@tf.RegisterGradient("SparseOps>GlobalSumPoolGrad")
def _global_sum_pool_grad_grad(op, grad):
    g, batch = op.inputs
    rows = tf.shape(g, out_type=tf.int64)[0]
    return (_loader.library().sparse_ops_global_sum_pool(
        grad, batch, rows, average=op.get_attr("average")), None)


def broadcast(x, g, op="add"):
    """Combines dense g [B, C'] with every site of batch item b.

    op "add" and "multiply" need C' == C (or 1); "concat" appends g's
    channels after x's. Returns a SparseTensor with x's coordinates.
    """
    if op not in BROADCAST_OPS:
        raise ValueError(f"op must be one of {BROADCAST_OPS}, got {op!r}")
    x = as_sparse(x)
    g = tf.convert_to_tensor(g)
    if g.dtype != x.features.dtype:
        g = tf.cast(g, x.features.dtype)
    if g.shape.rank is not None and g.shape.rank != 2:
        raise ValueError(f"g must be a dense [B, C] tensor, got shape {g.shape}")
    per_site = tf.gather(g, x.coordinates[:, 0])
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
    x = as_sparse(x)
    batch, num = _segments(x)
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
