"""k-selection attention (Hackel et al., Sec. 3.2): keep the k strongest
responses per batch item and channel, so that the density of a feature map
is bounded whatever the input.

The op (custom or reference) only selects; the values are taken with
`tf.where` and `tf.gather` over its selection, so the gradient flows to the
kept entries and to nothing else.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from sparse_ops.ops import _common
from sparse_ops.ops import _dispatch
from sparse_ops.ops import reference
from sparse_ops.tensor import SparseTensor, as_sparse

MODES = ("value", "abs")
PER = ("channel", "site")

# The op only returns a selection (bool and int outputs).
tf.no_gradient("SparseOps>Attention")


def _check_spatial_shape(spatial_shape):
    try:
        shape = tuple(int(s) for s in np.atleast_1d(spatial_shape))
    except (TypeError, ValueError):
        raise ValueError("spatial_shape must be a sequence of ints (the grid of one "
                         f"batch item), got {spatial_shape!r}") from None
    if np.ndim(spatial_shape) != 1 or not shape or min(shape) < 1 or any(
            s != v for s, v in zip(shape, np.atleast_1d(spatial_shape))):
        raise ValueError("spatial_shape must be a non-empty sequence of positive "
                         f"ints (the grid of one batch item), got {spatial_shape!r}")
    return shape


def attention_options(k=None, density=None, spatial_shape=None, mode="value",
                      per="channel"):
    """The arguments of `attention`, checked and normalised to plain Python
    values (JSON-serialisable): a dict with keys k, density, spatial_shape,
    mode and per. Raises ValueError / TypeError naming the bad argument."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    if (k is None) == (density is None):
        raise ValueError("attention needs exactly one of k (entries kept per batch "
                         "item and channel) or density (with spatial_shape); got "
                         f"k={k!r}, density={density!r}")
    if k is not None:
        if spatial_shape is not None:
            raise ValueError("spatial_shape is only used with density (k = "
                             "ceil(density * volume)); it cannot be given with k")
        if isinstance(k, bool) or not isinstance(k, (numbers.Integral, tf.Tensor)):
            raise TypeError(f"k must be an int >= 0, got {k!r}")
        if isinstance(k, tf.Tensor) and (k.shape.rank not in (None, 0)
                                         or not k.dtype.is_integer):
            raise ValueError(f"k must be an int scalar >= 0, got a {k.dtype.name} "
                             f"tensor of shape {k.shape}")
        if not isinstance(k, tf.Tensor):
            if k < 0:
                raise ValueError(f"k must be >= 0, got {k}")
            k = int(k)
        return dict(k=k, density=None, spatial_shape=None, mode=mode, per=per)
    if spatial_shape is None:
        raise ValueError("density needs spatial_shape, the grid of one batch item "
                         "(k = ceil(density * prod(spatial_shape)))")
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"density must be a float in [0, 1], got {density!r}")
    if not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density!r}")
    return dict(k=None, density=float(density),
                spatial_shape=list(_check_spatial_shape(spatial_shape)),
                mode=mode, per=per)


def density_to_k(density, spatial_shape):
    """k = ceil(density * volume - 1e-6), volume = prod(spatial_shape): the
    1e-6 keeps products such as 0.07 * 100 = 7.000000000000001 at 7."""
    volume = math.prod(int(s) for s in spatial_shape)
    return max(0, math.ceil(float(density) * volume - 1e-6))


@_dispatch.dual(reference.attention)
def _select(library, features, coordinates, k, mode, per):
    """(keep [N, C] bool, kept rows [S] int32) of the k-selection."""
    return library.sparse_ops_attention(features, coordinates, k, mode=mode, per=per)


def _keep(impl, features, coordinates, k, mode, per):
    # Ranking in float32 is exact for float16 and bfloat16 values.
    features, _ = impl.to_compute(features)
    if not isinstance(k, tf.Tensor):
        k = min(k, 2**63 - 1)  # more than any tensor has rows: keep everything
    return _select(impl, features, coordinates, tf.cast(k, tf.int64), mode, per)


def attention(x, k=None, density=None, spatial_shape=None, mode="value",
              per="channel"):
    """k-selection attention: keeps the k strongest responses.

    Args:
      x: `SparseTensor` (or `tf.SparseTensor` [B, *spatial, C], or its fields).
        Batch items are the rows sharing coordinates[:, 0]; rows need not be
        sorted.
      k: entries kept per batch item and channel (sites per batch item for
        per="site"); an int >= 0 (or an int scalar tensor).
      density: instead of k, a fraction in [0, 1] of the grid of one batch
        item: k = ceil(density * prod(spatial_shape) - 1e-6).
      spatial_shape: the grid of one batch item (cells at x's stride); only
        with density.
      mode: "value" keeps the largest values (the paper's version (i), akin
        to a ReLU), "abs" the largest magnitudes (version (ii)).
      per: "channel" selects per batch item and channel; "site" keeps the k
        sites of largest L2 norm per batch item, with all their channels.
    Returns:
      `SparseTensor` with x's stride: entries not kept are zero, and sites
      with no kept entry are removed (rows keep their order). At most k * C
      sites per batch item (k for per="site"). Ties go to the lower row; NaN
      ranks as -inf. The gradient reaches the kept entries only.
    """
    options = attention_options(k, density, spatial_shape, mode, per)
    k = options["k"]
    if k is None:
        k = density_to_k(options["density"], options["spatial_shape"])
    x = as_sparse(x)
    features = _common.rows_match(x)
    keep, rows = _keep(_dispatch.current(), features, x.coordinates, k, mode, per)
    # Gather the surviving sites first: the masking then touches k * C rows
    # at most per batch item, not N.
    features = tf.gather(features, rows)
    features = tf.where(tf.gather(keep, rows), features, tf.zeros_like(features))
    return SparseTensor(features, tf.gather(x.coordinates, rows), x.stride_tensor,
                        x.finer)
