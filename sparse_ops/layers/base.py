"""What every sparse layer shares: input conversion, shape reading, output
specs and channel counts, argument checks, Keras registration."""

import math

import keras
import numpy as np
import tensorflow as tf

from sparse_ops import _checks
from sparse_ops import geometry
from sparse_ops.regularizers import DensityRegularizer
from sparse_ops.tensor import SparseTensor, as_sparse


# Every layer registers under the package name: `.keras` files name
# "sparse_ops>Class", whatever module defines it.
register = keras.saving.register_keras_serializable(package="sparse_ops")


def plain_ints(value, name):
    """An int or a tuple of ints in [1, 2^31 - 1], as plain Python ints (so
    that get_config is JSON-serialisable); None for a kernel_size (custom
    regions need none)."""
    if value is None and name == "kernel_size":
        return None
    if np.ndim(value) == 0:
        return _checks.int_value(value, name, minimum=1)
    return _checks.int_tuple(value, len(value), name)


def _is_shape(x):
    return isinstance(x, (tuple, list)) and all(
        v is None or isinstance(v, int) for v in x)


def channels_and_dimension(input_shape):
    """(C, D) from what Keras passes to build(): the shapes of the
    SparseTensor's fields, or a tf.SparseTensor's dense shape [B, *spatial, C]."""
    shape = tuple(input_shape) if not hasattr(input_shape, "as_list") else tuple(
        input_shape.as_list())
    if shape and not _is_shape(shape):  # the fields' shapes
        features = tuple(shape[0])
        coordinates = tuple(shape[1]) if len(shape) > 1 else (None, None)
        d = coordinates[1] - 1 if len(coordinates) == 2 and coordinates[1] else None
        return features[-1], d
    return shape[-1], len(shape) - 2


def fields_spec(x):
    """(features shape, coordinate columns) of a symbolic input: the fields
    of a SparseTensor, or a sparse [B, *spatial, C] KerasTensor."""
    if isinstance(x, (list, tuple)):
        return tuple(x[0].shape), x[1].shape[1]
    shape = tuple(x.shape)
    return (None, shape[-1]), len(shape) - 1


def _fresh(structure):
    """New KerasTensors with the shapes and dtypes of those in `structure`
    (a layer's outputs must be its own tensors, not its inputs')."""
    if isinstance(structure, (list, tuple)):
        return tuple(_fresh(v) for v in structure)
    return keras.KerasTensor(tuple(structure.shape), dtype=structure.dtype)


def _link_of(x):
    """The `finer` link structure of a symbolic input (() for a sparse
    KerasTensor or fields without one)."""
    if isinstance(x, (list, tuple)) and len(x) == 4:
        return tuple(x[3]) if x[3] is not None else ()
    return ()


def link_spec(x, link):
    """The output's `finer` link, mirroring what the ops do at run time:
    "same" (sites at x's stride: x's link), "push" (a strided op: x's own
    sites on top of x's link), "pop" (back to a finer stride: x's link
    without its top), or a sparse tensor structure whose link to copy."""
    if isinstance(link, str):
        own = _link_of(x)
        if link == "same":
            return _fresh(own)
        if link == "pop":
            return _fresh(own[2]) if own else ()
        _, cols = fields_spec(x)
        return (keras.KerasTensor((None, cols), dtype="int32"),
                keras.KerasTensor((None if cols is None else cols - 1,), dtype="int32"),
                _fresh(own))
    return _fresh(_link_of(link))


def sparse_spec(x, channels, dtype, same_rows=False, link="same"):
    """A SparseTensor of KerasTensors with `channels` feature channels (the
    input's when None), the input's coordinate columns and the output link
    `link` (see `link_spec`)."""
    features_shape, cols = fields_spec(x)
    if channels is None:
        channels = features_shape[-1]
    rows = features_shape[0] if same_rows else None
    return SparseTensor(
        keras.KerasTensor((rows, channels), dtype=dtype),
        keras.KerasTensor((rows, cols), dtype="int32"),
        keras.KerasTensor((None if cols is None else cols - 1,), dtype="int32"),
        link_spec(x, link))


def Input(channels, dimension, dtype="float32", name=None):  # pylint: disable=invalid-name
    """A symbolic `SparseTensor` input for Keras' functional API: features
    [N, channels], coordinates int32 [N, 1 + dimension] and the stride [D].

        x = so.layers.Input(channels=1, dimension=3)
        y = so.layers.Conv(16, 3)(x)
        model = keras.Model(x, so.layers.GlobalMaxPool()(y))
        model(so.SparseTensor(features, coordinates))      # a SparseTensor in

    The model takes a `so.SparseTensor` as it is (whereas a model on
    `keras.Input(sparse=True)` takes a `tf.SparseTensor`), in `fit` from a
    `tf.data.Dataset` of `(SparseTensor, labels)` and in
    `so.export.save_serving`. Knowing the dimension, it refuses
    coordinates without their batch column. The tensor passed must be one
    without a link to finer sites (made from data, not by a strided op):
    Keras counts the link's tensors as inputs.
    """
    channels = _checks.int_value(channels, "channels", minimum=1,
                                 maximum=_checks.MAX_CHANNELS)
    dimension = _checks.int_value(dimension, "dimension", minimum=1,
                                  maximum=_checks.MAX_DIMENSION)
    prefix = f"{name}_" if name else ""
    return SparseTensor(
        keras.Input((channels,), dtype=dtype, name=prefix + "features"),
        keras.Input((1 + dimension,), dtype="int32", name=prefix + "coordinates"),
        keras.Input((), dtype="int32", name=prefix + "stride"))


_OPTION_MODULES = {"initializer": keras.initializers,
                   "regularizer": keras.regularizers,
                   "constraint": keras.constraints}


def _option_module(key):
    return _OPTION_MODULES[key.rsplit("_", 1)[1]]


class SparseLayer(keras.layers.Layer):
    """Base of the layers: converts the input to a `SparseTensor`; each
    layer states its output channels (`compute_output_channels`)."""

    def compute_output_channels(self, input_channels):
        """The number of channels of the output (features, or the last axis
        of a dense output) for `input_channels` input channels (None when
        unknown; for layers of several inputs, one entry per input). The
        networks of `sparse_ops.models` build their sublayers with it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not state its output channels")

    def set_weight_options(self, **options):
        """Stores `<weight>_initializer` / `_regularizer` / `_constraint`
        arguments as Keras objects; `weight_options_config` serialises them."""
        for key, value in options.items():
            setattr(self, key, _option_module(key).get(value))
        self._weight_option_keys = tuple(
            getattr(self, "_weight_option_keys", ())) + tuple(options)

    def weight_options_config(self):
        return {key: _option_module(key).serialize(getattr(self, key))
                for key in getattr(self, "_weight_option_keys", ())}

    def input_channels(self, input_shape):
        """(C, D) of the input at build time; C must be known."""
        channels, dimension = channels_and_dimension(input_shape)
        if channels is None:
            raise ValueError(f"{self.name}: the number of input channels must be "
                             "known when the layer is built")
        return channels, dimension

    def bind_density_regularizers(self):
        """Call at the end of build(): gives each `DensityRegularizer` on this
        layer's weights the output density the layer measures at each call
        (a non-trainable scalar weight `measured_density`)."""
        weights = [w for w in self.trainable_weights
                   if isinstance(w.regularizer, DensityRegularizer)]
        if not weights:
            return
        self.measured_density = self.add_weight(
            name="measured_density", shape=(), trainable=False, autocast=False,
            dtype="float32",
            # rho = target gives b = 0 (plain L2) until the first call.
            initializer=keras.initializers.Constant(
                weights[0].regularizer.target_density))
        for w in weights:
            w.regularizer = w.regularizer.bind(self.measured_density)

    def record_density(self, y):
        """Stores the density of y's features in `measured_density` when a
        density regulariser reads it: positive entries over all entries, or
        over batch size x grid volume x channels when the layer has a
        `spatial_shape` (the grid of its output). Returns y."""
        if getattr(self, "measured_density", None) is None:
            return y
        f = y.features
        positive = tf.cast(tf.math.count_nonzero(f > 0), tf.float32)
        spatial_shape = getattr(self, "spatial_shape", None)
        if spatial_shape:
            shape = geometry.normalize_tuple(spatial_shape, y.dimension,
                                             "spatial_shape")
            cells = float(math.prod(shape) * f.shape[-1])
            total = tf.cast(y.batch_size(), tf.float32) * cells
        else:
            total = tf.cast(tf.size(f), tf.float32)
        self.measured_density.assign(tf.math.divide_no_nan(positive, total))
        return y

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = False

    @staticmethod
    def sparse_input(x):
        return as_sparse(x)


class FeatureLayer(SparseLayer):
    """Output = the input's sites (the same rows) with new features; of the
    input's channel count unless `compute_output_channels` says otherwise."""

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        channels = self.compute_output_channels(fields_spec(x)[0][-1])
        return sparse_spec(x, channels, self.compute_dtype, same_rows=True)
