"""Functional ops: the layers' computations as functions of explicit weights."""

from sparse_ops.ops.attention import attention
from sparse_ops.ops.conv import conv, conv_transpose, depthwise_conv
from sparse_ops.ops.coordinates import (KernelMap, generative_coordinates,
                                        kernel_map, strided_coordinates)
from sparse_ops.ops.features import broadcast, global_pool, instance_norm
from sparse_ops.ops.points import (interpolate, lookup_coordinates, slice,
                                   union, union_coordinates)
from sparse_ops.ops.pool import avg_pool, max_pool, sum_pool, unpool
from sparse_ops.ops.voxelize import voxelize

__all__ = ["conv", "conv_transpose", "depthwise_conv", "kernel_map", "KernelMap",
           "strided_coordinates", "generative_coordinates", "global_pool", "broadcast",
           "instance_norm", "max_pool", "avg_pool", "sum_pool", "unpool", "attention",
           "union", "union_coordinates", "lookup_coordinates", "interpolate", "slice",
           "voxelize"]
