"""Keras 3 layers on sparse tensors."""

from sparse_ops.layers.attention import Attention
from sparse_ops.layers.base import Input
from sparse_ops.layers.conv import Conv, ConvTranspose, DepthwiseConv
from sparse_ops.layers.global_pool import (BroadcastAdd, BroadcastConcat,
                                           BroadcastMultiply, GlobalAvgPool,
                                           GlobalMaxPool, GlobalSumPool)
from sparse_ops.layers.norm import BatchNorm, InstanceNorm
from sparse_ops.layers.per_site import Activation, Dense, Dropout, ReLU
from sparse_ops.layers.points import Interpolate, Slice, Union
from sparse_ops.layers.pool import AvgPool, MaxPool, SumPool, Unpool
from sparse_ops.layers.structure import Concat, Prune, ToDense

__all__ = ["Input", "Conv", "ConvTranspose", "DepthwiseConv", "GlobalMaxPool",
           "GlobalAvgPool", "GlobalSumPool", "BroadcastAdd", "BroadcastMultiply",
           "BroadcastConcat", "Dense", "Activation", "ReLU", "Dropout", "BatchNorm",
           "InstanceNorm", "Concat", "ToDense", "Prune", "MaxPool", "AvgPool", "SumPool",
           "Unpool", "Attention", "Union", "Interpolate", "Slice"]
