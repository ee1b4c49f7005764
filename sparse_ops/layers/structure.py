"""Structural layers: Concat (channels of tensors on the same sites),
ToDense (a dense grid for a dense head) and Prune (a subset of the sites)."""

import keras
import numpy as np
import tensorflow as tf

from sparse_ops import _checks
from sparse_ops.layers.base import SparseLayer, fields_spec, register, sparse_spec
from sparse_ops.tensor import SparseTensor, as_sparse


def _is_fields(x):
    return (isinstance(x, (list, tuple)) and not isinstance(x, SparseTensor)
            and len(x) in (2, 3) and hasattr(x[0], "dtype")
            and len(getattr(x[0], "shape", ())) == 2
            and len(getattr(x[1], "shape", ())) == 2
            and x[1].dtype in ("int32", "int64", tf.int32, tf.int64))


@register
class Concat(SparseLayer):
    """`call([a, b, ...])`: the features of tensors with identical coordinates
    (same rows in the same order), concatenated along the channels."""

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or _is_fields(inputs) or \
                isinstance(inputs, SparseTensor):
            raise TypeError("Concat expects a list of sparse tensors")
        xs = [as_sparse(x, name=f"inputs[{i}]") for i, x in enumerate(inputs)]
        first = xs[0]
        checks = []
        for i, x in enumerate(xs[1:], 1):
            if x.coordinates is not first.coordinates:
                checks.append(tf.debugging.assert_equal(
                    x.coordinates, first.coordinates,
                    message=f"Concat: inputs[{i}] has other coordinates than "
                    "inputs[0]"))
        with tf.control_dependencies(checks):
            features = tf.concat([tf.cast(x.features, first.features.dtype)
                                  for x in xs], axis=-1)
        return first.with_features(features)

    def compute_output_channels(self, input_channels):
        """input_channels: one entry per input tensor."""
        channels = list(input_channels)
        return None if any(c is None for c in channels) else sum(channels)

    def compute_output_spec(self, inputs, *args, **kwargs):
        del args, kwargs
        channels = self.compute_output_channels(fields_spec(x)[0][-1] for x in inputs)
        return sparse_spec(inputs[0], channels, self.compute_dtype, same_rows=True)


@register
class ToDense(SparseLayer):
    """Dense [B, *shape, C] (inactive sites zero) for a dense head; `shape`
    is the spatial shape in cells of the tensor's stride, cell 0 at
    `min_coordinate`."""

    def __init__(self, shape, min_coordinate=None, **kwargs):
        super().__init__(**kwargs)
        if np.ndim(shape) != 1:
            raise ValueError(f"shape must be a sequence of ints (the spatial shape), "
                             f"got {shape!r}")
        self.shape = _checks.int_tuple(shape, len(shape), "shape", minimum=1)
        self.min_coordinate = None if min_coordinate is None else _checks.int_tuple(
            min_coordinate, len(self.shape), "min_coordinate",
            minimum=_checks.INT32_MIN)

    def call(self, x):
        x = self.sparse_input(x)
        return x.dense(self.shape, min_coordinate=self.min_coordinate)

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        channels = self.compute_output_channels(fields_spec(x)[0][-1])
        return keras.KerasTensor((None,) + self.shape + (channels,),
                                 dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"shape": list(self.shape),
                       "min_coordinate": None if self.min_coordinate is None
                       else list(self.min_coordinate)})
        return config


@register
class Prune(SparseLayer):
    """`call(x, mask)`: keeps the sites where the bool `mask` [N] is true;
    the stride is kept."""

    def call(self, x, mask):
        x = self.sparse_input(x)
        mask = tf.convert_to_tensor(mask)
        if mask.dtype != tf.bool:
            mask = tf.cast(mask, tf.bool)
        if mask.shape.rank == 2 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.shape.rank is not None and mask.shape.rank != 1:
            raise ValueError(f"mask must be a bool [N] tensor, got shape {mask.shape}")
        n, m = x.coordinates.shape[0], mask.shape[0]
        if n is not None and m is not None and n != m:
            raise ValueError(f"mask has {m} entries but x has {n} sites")
        # tf.boolean_mask would silently drop the sites past a short mask.
        check = tf.debugging.assert_equal(
            tf.shape(mask)[0], tf.shape(x.coordinates)[0],
            message="mask must have one entry per site of x")
        with tf.control_dependencies([check]):
            mask = tf.identity(mask)
        return SparseTensor(tf.boolean_mask(x.features, mask),
                            tf.boolean_mask(x.coordinates, mask), x.stride_tensor,
                            x.finer)

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, mask=None, *args, **kwargs):
        del mask, args, kwargs
        return sparse_spec(x, None, self.compute_dtype, same_rows=False)
