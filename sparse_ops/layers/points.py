"""Layers on coordinate sets and points: Union, Interpolate, Slice."""

import keras

from sparse_ops import ops
from sparse_ops.layers.base import SparseLayer, fields_spec, register, sparse_spec


@register
class Union(SparseLayer):
    """`call([a, b, ...])`: the sites of all inputs, features summed where
    sites overlap (MinkowskiEngine's MinkowskiUnion). Inputs need the same
    tensor stride and channels; sites are a's in order, then the new sites
    of b, ... in order of first appearance."""

    def call(self, inputs):
        return ops.union(inputs)

    def compute_output_channels(self, input_channels):
        """input_channels: one entry per input (all the same)."""
        return next((c for c in input_channels if c is not None), None)

    def compute_output_spec(self, inputs, *args, **kwargs):
        del args, kwargs
        return sparse_spec(inputs[0], None, self.compute_dtype)


@register
class Interpolate(SparseLayer):
    """`call(x, points)`: dense [N, C] features of x at float points [N, 1 + D]
    (batch index, then coordinates in x's integer units), multilinear over
    the 2^D corners of x's stride lattice around each point; corners that are
    not sites contribute nothing (`normalize=True` rescales the weights of
    the present corners to sum to 1). See `sparse_ops.ops.interpolate`."""

    def __init__(self, normalize=False, **kwargs):
        super().__init__(**kwargs)
        self.normalize = bool(normalize)

    def call(self, x, points):
        return ops.interpolate(self.sparse_input(x), points,
                                      normalize=self.normalize)

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, points, *args, **kwargs):
        del args, kwargs
        channels = self.compute_output_channels(fields_spec(x)[0][-1])
        return keras.KerasTensor((points.shape[0], channels), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"normalize": self.normalize})
        return config


@register
class Slice(SparseLayer):
    """`call(x, inverse)`: dense per-point features [P, C] = x.features[inverse],
    with `inverse` [P] from `sparse_ops.utils.sparse_quantize(...,
    return_inverse=True)`: voxel predictions back to the points. See
    `sparse_ops.ops.slice` for batches."""

    def call(self, x, inverse):
        return ops.slice(self.sparse_input(x), inverse)

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, inverse, *args, **kwargs):
        del args, kwargs
        channels = self.compute_output_channels(fields_spec(x)[0][-1])
        return keras.KerasTensor((inverse.shape[0], channels), dtype=self.compute_dtype)
