"""Keras 3 layers on sparse tensors."""

from sparse_ops.layers.conv import Conv, ConvTranspose

__all__ = ["Conv", "ConvTranspose"]
