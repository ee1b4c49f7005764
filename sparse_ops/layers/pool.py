"""Sparse pooling layers: MaxPool, AvgPool, SumPool and Unpool."""

import numpy as np

from sparse_ops import ops
from sparse_ops.layers.base import SparseLayer, plain_ints, register, sparse_spec


class _Pool(SparseLayer):
    op = None

    def __init__(self, pool_size=2, strides=None, **kwargs):
        super().__init__(**kwargs)
        # Plain ints (or tuples of them) so get_config is JSON-serialisable.
        self.pool_size = plain_ints(pool_size, "pool_size")
        self.strides = None if strides is None else plain_ints(strides, "strides")

    def call(self, x):
        return type(self).op(self.sparse_input(x), self.pool_size, self.strides)

    link = "push"  # a strided op links its output back to its input

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, *args, **kwargs):
        """Output fields: features [N, C], coordinates [N, 1 + D], stride [D]
        and the link to finer sites."""
        del args, kwargs
        strides = self.pool_size if self.strides is None else self.strides
        strided = any(s != 1 for s in np.atleast_1d(strides))
        return sparse_spec(x, None, self.compute_dtype,
                           link=self.link if strided else "same")

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides})
        return config


@register
class MaxPool(_Pool):
    """Max over the ACTIVE input sites of each window; output sites as a
    strided `Conv` with kernel_size = pool_size (strides default pool_size).
    Equals `tf.nn.max_pool(padding="SAME")` when the features are >= 0."""
    op = staticmethod(ops.max_pool)


@register
class AvgPool(_Pool):
    """Mean over the ACTIVE input sites of each window (sites as MaxPool)."""
    op = staticmethod(ops.avg_pool)


@register
class SumPool(_Pool):
    """Sum over the input sites of each window (sites as MaxPool)."""
    op = staticmethod(ops.sum_pool)


@register
class Unpool(_Pool):
    """The transpose of SumPool: output sites are every site the window
    reaches from each input site (generative), each receiving the sum of the
    inputs whose window covers it; with pool_size == strides every child gets
    its parent's features."""
    link = "pop"  # back to the finer stride
    op = staticmethod(ops.unpool)
