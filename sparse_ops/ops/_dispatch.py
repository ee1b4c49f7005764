"""How every op picks its implementation and compute dtype.

An op call takes `current()` once, the implementation that
`sparse_ops.config` chooses when the op is built (`CUSTOM`, the compiled
`SparseOps>*` ops, or `REFERENCE`, the pure-TensorFlow twins in
`reference.py`), and passes it to its raw ops; the gradients of the custom
ops, which exist only on the custom path, pass `CUSTOM`. A raw op is one
function for both implementations, made with `@dual(reference_twin)` over
the body that calls the library:

    @_dispatch.dual(reference.conv)
    def _conv_features(library, features, kernel, kmap, num_out_rows):
        return library.sparse_ops_conv(features, kernel, *kmap, num_out_rows, ...)

    y = _conv_features(impl, features, kernel, kmap, n)   # either path

The same object says in which dtype an op computes (`to_compute`): float16
and bfloat16 features run in float32 and are cast back (`from_compute`),
except bfloat16 in the ops that run it natively on the custom CPU kernels.
"""

import functools

import tensorflow as tf

from sparse_ops import _loader
from sparse_ops import config

COMPUTE_TYPES = (tf.float32, tf.float64)

# validate_map of the map-reading custom ops. The op modules pass only maps
# that SparseOps>KernelMap (or its reference twin) built for the row counts
# they are used with, so the GPU kernels skip their check and its host round
# trip; the CPU kernels check every map whatever this says.
VALIDATE_LIBRARY_MAPS = False


class Implementation:
    """One implementation of the ops: the custom op library or the
    pure-TensorFlow reference path."""

    __slots__ = ("reference",)

    def __init__(self, reference):
        self.reference = bool(reference)

    @property
    def name(self):
        return "reference" if self.reference else "custom"

    @property
    def library(self):
        """The loaded op library (ImportError saying why when it cannot load)."""
        return _loader.library()

    def to_compute(self, features, native_bfloat16=False):
        """(features in the dtype the op computes in, the dtype to cast its
        results back to or None). float16 and bfloat16 compute in float32;
        bfloat16 stays as it is for an op that runs it natively
        (`native_bfloat16`: the convolutions) on the custom CPU kernels (the
        reference path and the GPU kernels, chosen wherever a GPU is
        visible, widen it)."""
        keep_bfloat16 = native_bfloat16 and not self.reference and not _gpu_visible()
        if features.dtype in COMPUTE_TYPES or (
                keep_bfloat16 and features.dtype == tf.bfloat16):
            return features, None
        if not features.dtype.is_floating:
            raise TypeError(f"features must be float, got {features.dtype.name}")
        return tf.cast(features, tf.float32), features.dtype

    def __repr__(self):
        return f"Implementation({self.name!r})"


CUSTOM = Implementation(reference=False)
REFERENCE = Implementation(reference=True)


def current():
    """The implementation that ops built now run (`sparse_ops.config`)."""
    return REFERENCE if config.use_reference() else CUSTOM


def from_compute(y, out_dtype):
    """y cast back to the dtype `Implementation.to_compute` gave (if any)."""
    return y if out_dtype is None else tf.cast(y, out_dtype)


_GPU_VISIBLE = []


def _gpu_visible():
    if not _GPU_VISIBLE:
        _GPU_VISIBLE.append(bool(tf.config.list_logical_devices("GPU")))
    return _GPU_VISIBLE[0]


class DualOp:
    """A raw op with both implementations: `op(impl, *args)` runs
    `reference(*args)` or `custom(impl.library, *args)`. The two are
    attributes, read at each call."""

    def __init__(self, reference, custom):
        self.reference = reference
        self.custom = custom
        functools.update_wrapper(self, custom)

    def __call__(self, impl, *args, **kwargs):
        if impl.reference:
            return self.reference(*args, **kwargs)
        return self.custom(impl.library, *args, **kwargs)


def dual(reference):
    """Decorator: the custom-op body it wraps (taking the library first)
    and its pure-TF twin `reference` (taking the same other arguments) as
    one `DualOp`."""
    def wrap(custom):
        return DualOp(reference, custom)
    return wrap
