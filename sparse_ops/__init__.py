"""sparse_ops: spatially sparse tensor networks for TensorFlow.

    import sparse_ops as so
    x = so.SparseTensor(features, coordinates)
    y = so.layers.Conv(32, kernel_size=3)(x)
"""

from sparse_ops._version import __version__
from sparse_ops import _loader
from sparse_ops import config
from sparse_ops import layers
from sparse_ops import ops
from sparse_ops import utils
from sparse_ops import callbacks
from sparse_ops import regularizers
from sparse_ops.geometry import kernel_offsets
from sparse_ops.tensor import SparseTensor

_loader.check_build_version()

__all__ = ["SparseTensor", "kernel_offsets", "config", "layers", "ops", "utils",
           "callbacks", "regularizers",
           "__version__"]
