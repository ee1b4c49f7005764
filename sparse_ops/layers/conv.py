"""Sparse convolution layers with Keras-compatible weights."""

import keras
import numpy as np

from sparse_ops import _checks
from sparse_ops import geometry
from sparse_ops import ops
from sparse_ops.layers.attention import Attention
from sparse_ops.layers.base import (SparseLayer, fields_spec, plain_ints, register,
                                    sparse_spec)


def _attention_options(attention):
    """Conv's `attention` argument as the keyword arguments of
    `ops.attention` (a JSON-serialisable dict), or None."""
    if attention is None:
        return None
    if isinstance(attention, Attention):
        return attention.options()
    if isinstance(attention, dict):
        return Attention(**attention).options()  # checks the arguments
    raise TypeError("attention must be None, a sparse_ops.layers.Attention or a "
                    f"dict of its arguments, got {attention!r}")


class _ConvBase(SparseLayer):
    transposed = False

    def __init__(self, filters, kernel_size, strides, dilation_rate=1,
                 region="hypercube", use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = _checks.int_value(filters, "filters", minimum=1)
        # Plain ints (or tuples of them) so get_config is JSON-serialisable.
        self.kernel_size = plain_ints(kernel_size, "kernel_size")
        self.strides = plain_ints(strides, "strides")
        self.dilation_rate = plain_ints(dilation_rate, "dilation_rate")
        if not isinstance(region, str):
            region = np.asarray(region, np.int32).tolist()
        elif region not in geometry.REGIONS:
            raise ValueError(f"region must be one of {geometry.REGIONS} or an int "
                             f"array of offsets [K, D], got {region!r}")
        self.region = region
        self.use_bias = bool(use_bias)
        self.set_weight_options(
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint)

    def _kernel_shape(self, channels, dimension):
        io = [self.filters, channels] if self.transposed else [channels, self.filters]
        if self.region in geometry.BOX_REGIONS:
            if dimension is None:
                raise ValueError(f"{self.name}: the input's dimension is unknown")
            size = geometry.normalize_tuple(self.kernel_size, dimension, "kernel_size")
            return list(size) + io
        k = geometry.offsets_array(self.kernel_size, self.dilation_rate,
                                   self.region, dimension).shape[0]
        return [k] + io

    def compute_output_channels(self, input_channels):
        return self.filters

    def build(self, input_shape):
        channels, dimension = self.input_channels(input_shape)
        self.kernel = self.add_weight(
            name="kernel", shape=self._kernel_shape(channels, dimension),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer, constraint=self.kernel_constraint)
        self.bias = self.add_weight(
            name="bias", shape=[self.compute_output_channels(channels)],
            initializer=self.bias_initializer, regularizer=self.bias_regularizer,
            constraint=self.bias_constraint) if self.use_bias else None
        self.bind_density_regularizers()

    def strided(self):
        return any(s != 1 for s in np.atleast_1d(self.strides))

    def output_link(self, x, sites=None):
        """How the output's link to finer sites follows from the input's (see
        `sparse_spec`), as the ops make it."""
        return "push" if self.strided() else "same"

    def compute_output_spec(self, x, *args, **kwargs):
        """Output fields for Keras' functional API: features [N, filters],
        coordinates [N, 1 + D], stride [D], and the link to finer sites.
        Keras passes call's arguments: the output sites come positionally or
        as coordinates= (ConvTranspose) / out_coordinates= (Conv)."""
        sites = args[0] if args else kwargs.get(
            "coordinates", kwargs.get("out_coordinates"))
        channels = self.compute_output_channels(fields_spec(x)[0][-1])
        return sparse_spec(x, channels, self.compute_dtype,
                           link=self.output_link(x, sites))

    def _weights_for(self, x):
        kernel = keras.ops.cast(self.kernel, x.features.dtype)
        bias = keras.ops.cast(self.bias, x.features.dtype) if self.use_bias else None
        return kernel, bias

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "region": self.region,
            "use_bias": self.use_bias,
        })
        config.update(self.weight_options_config())
        return config


@register
class Conv(_ConvBase):
    """Sparse convolution; weights interchangeable with `keras.layers.ConvND`.

    strides == 1: output sites = input sites (submanifold). strides s > 1:
    output sites = unique(floor(c / (s * t)) * (s * t)) for input stride t,
    output stride s * t. At every output site the value equals the dense
    `tf.nn.convolution(padding="SAME", strides=s, dilations=d)` (for inputs
    whose extent is a multiple of s). `call(x, out_coordinates=None)` takes
    other output sites (coordinates or a SparseTensor) when given.

    The kernel is [*kernel_size, Cin, filters] for a hypercube region (Keras'
    layout), else [K, Cin, filters].

    `attention`: an `Attention` layer or a dict of its arguments (e.g.
    `{"density": 0.05, "spatial_shape": [28, 28]}`), applied to the output
    right after the bias: the paper's k-selection, so that a batch item has at
    most k * filters output sites. `get_config` stores it as that dict.
    `masked_gradients=True`: the paper's sparse back-propagation (no gradient
    to zero input entries nor to exactly-zero weights). `spatial_shape`: the
    output grid's extent per batch item, which makes the density a
    `so.regularizers.DensityRegularizer` sees positive entries over the grid
    volume (the paper's rho) instead of over the output entries.
    """

    def __init__(self, filters, kernel_size=3, strides=1, dilation_rate=1,
                 region="hypercube", use_bias=True,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None,
                 attention=None, masked_gradients=False, spatial_shape=None,
                 **kwargs):
        super().__init__(filters, kernel_size, strides, dilation_rate, region,
                         use_bias, kernel_initializer,
                         kernel_regularizer=kernel_regularizer, **kwargs)
        self.attention = _attention_options(attention)
        self.masked_gradients = bool(masked_gradients)
        self.spatial_shape = None if spatial_shape is None else plain_ints(
            spatial_shape, "spatial_shape")

    def call(self, x, out_coordinates=None):
        x = self.sparse_input(x)
        kernel, bias = self._weights_for(x)
        y = ops.conv(x, kernel, bias, strides=self.strides,
                     dilation_rate=self.dilation_rate, region=self.region,
                     out_coordinates=out_coordinates,
                     masked_gradients=self.masked_gradients)
        if self.attention is not None:
            y = ops.attention(y, **self.attention)
        return self.record_density(y)

    def get_config(self):
        config = super().get_config()
        config.update({"attention": self.attention,
                       "masked_gradients": self.masked_gradients,
                       "spatial_shape": self.spatial_shape})
        return config


@register
class ConvTranspose(_ConvBase):
    """Sparse transposed convolution, the adjoint of `Conv` with the same
    geometry; weights interchangeable with `keras.layers.ConvNDTranspose`.

    `call(x, coordinates=None)`: output sites are `coordinates` when given (a
    `SparseTensor` such as a skip connection, or int32 coordinates);
    otherwise, if `generative`, every site the kernel reaches; otherwise the
    sites of the finer tensor x was strided from. The kernel is
    [*kernel_size, filters, Cin] (hypercube) or [K, filters, Cin].
    """

    transposed = True

    def __init__(self, filters, kernel_size=2, strides=2, dilation_rate=1,
                 region="hypercube", generative=False, use_bias=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(filters, kernel_size, strides, dilation_rate, region,
                         use_bias, kernel_initializer, **kwargs)
        self.generative = bool(generative)

    def output_link(self, x, sites=None):
        if isinstance(sites, (list, tuple)):  # a SparseTensor: its link
            return sites
        if getattr(sites, "sparse", False):  # a tf.SparseTensor has no link
            return ()
        return "pop" if self.strided() else "same"

    def call(self, x, coordinates=None):
        x = self.sparse_input(x)
        kernel, bias = self._weights_for(x)
        return self.record_density(ops.conv_transpose(
            x, kernel, bias, strides=self.strides,
            dilation_rate=self.dilation_rate, region=self.region,
            out_coordinates=coordinates, generative=self.generative))

    def get_config(self):
        config = super().get_config()
        config.update({"generative": self.generative})
        return config


@register
class DepthwiseConv(_ConvBase):
    """Channel-wise (depthwise) sparse convolution (MinkowskiEngine's
    `MinkowskiChannelwiseConvolution`); weights interchangeable with Keras'
    `DepthwiseConv2D`.

    Input channel c is convolved with its own `depth_multiplier` filters and
    gives output channels c * depth_multiplier + m. The kernel is
    [*kernel_size, C, depth_multiplier] for a hypercube region, else
    [K, C, depth_multiplier]; the bias [C * depth_multiplier]. Output sites
    as `Conv` with the same strides. A per-channel gather-multiply-scatter
    over the kernel map (`so.ops.depthwise_conv`), many times cheaper than
    a `Conv` of the same geometry.
    """

    def __init__(self, kernel_size=3, strides=1, dilation_rate=1, depth_multiplier=1,
                 region="hypercube", use_bias=True, kernel_initializer="glorot_uniform",
                 **kwargs):
        kwargs.pop("filters", None)  # get_config's base entry
        super().__init__(depth_multiplier, kernel_size, strides, dilation_rate, region,
                         use_bias, kernel_initializer, **kwargs)
        self.depth_multiplier = self.filters

    def compute_output_channels(self, input_channels):
        return None if input_channels is None else input_channels * self.depth_multiplier

    def call(self, x):
        x = self.sparse_input(x)
        kernel, bias = self._weights_for(x)
        return self.record_density(ops.depthwise_conv(
            x, kernel, bias, strides=self.strides, dilation_rate=self.dilation_rate,
            region=self.region))

    def get_config(self):
        config = super().get_config()
        config.pop("filters")
        config["depth_multiplier"] = self.depth_multiplier
        return config
