"""Layers between the sites and dense per-batch-item tensors: global
pooling (sites -> [B, C]) and broadcasting ([B, C] -> sites)."""

import keras

from sparse_ops import ops
from sparse_ops.layers.base import SparseLayer, fields_spec, register, sparse_spec


class _GlobalPool(SparseLayer):
    mode = None

    def call(self, x):
        return ops.global_pool(self.sparse_input(x), self.mode)

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        channels = self.compute_output_channels(fields_spec(x)[0][-1])
        return keras.KerasTensor((None, channels), dtype=self.compute_dtype)


@register
class GlobalMaxPool(_GlobalPool):
    """Dense [B, C]: the maximum over the sites of each batch item (0 for a
    batch item with no sites)."""
    mode = "max"


@register
class GlobalAvgPool(_GlobalPool):
    """Dense [B, C]: the mean over the sites of each batch item."""
    mode = "avg"


@register
class GlobalSumPool(_GlobalPool):
    """Dense [B, C]: the sum over the sites of each batch item."""
    mode = "sum"


# -- broadcasting ------------------------------------------------------------

class _Broadcast(SparseLayer):
    op = None

    def call(self, x, g):
        return ops.broadcast(self.sparse_input(x), g, self.op)

    def compute_output_channels(self, input_channels):
        """input_channels: (x's, g's)."""
        c_x, c_g = input_channels
        if self.op != "concat":
            return c_x
        return None if c_x is None or c_g is None else c_x + c_g

    def compute_output_spec(self, x, g, *args, **kwargs):
        del args, kwargs
        channels = self.compute_output_channels((fields_spec(x)[0][-1], g.shape[-1]))
        return sparse_spec(x, channels, self.compute_dtype, same_rows=True)


@register
class BroadcastAdd(_Broadcast):
    """`call(x, g)`: features + g[batch index] for dense g [B, C]."""
    op = "add"


@register
class BroadcastMultiply(_Broadcast):
    """`call(x, g)`: features * g[batch index] for dense g [B, C]."""
    op = "multiply"


@register
class BroadcastConcat(_Broadcast):
    """`call(x, g)`: [features, g[batch index]] for dense g [B, C']."""
    op = "concat"
