"""Keras 3 layers on sparse tensors."""

from sparse_ops.layers.base import Input
from sparse_ops.layers.conv import Conv, ConvTranspose, DepthwiseConv
from sparse_ops.layers.features import (Activation, BatchNorm, BroadcastAdd,
                                        BroadcastConcat, BroadcastMultiply, Concat,
                                        Dense, Dropout, GlobalAvgPool, GlobalMaxPool,
                                        GlobalSumPool, InstanceNorm, Prune, ReLU,
                                        ToDense)
from sparse_ops.layers.pool import AvgPool, MaxPool, SumPool, Unpool

__all__ = ["Input", "Conv", "ConvTranspose", "DepthwiseConv", "GlobalMaxPool", "GlobalAvgPool", "GlobalSumPool",
           "BroadcastAdd", "BroadcastMultiply", "BroadcastConcat", "Dense",
           "Activation", "ReLU", "Dropout", "BatchNorm", "InstanceNorm", "Concat",
           "ToDense", "Prune", "MaxPool", "AvgPool", "SumPool", "Unpool"]
from sparse_ops.layers.attention import Attention  # noqa: E402

__all__ += ["Attention"]
from sparse_ops.layers.points import Interpolate, Slice, Union  # noqa: E402
__all__ += ["Union", "Interpolate", "Slice"]
