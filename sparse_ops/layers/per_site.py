"""Per-site layers: the same sites, each site's features mapped on its own
(Dense, Activation, ReLU, Dropout)."""

import numbers

import keras
import tensorflow as tf

from sparse_ops import _checks
from sparse_ops.layers.base import FeatureLayer, register


@register
class Dense(FeatureLayer):
    """Per-site linear map; weights `kernel` [C, units] and `bias` [units] as
    `keras.layers.Dense`."""

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.units = _checks.int_value(units, "units", minimum=1)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.set_weight_options(
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint)

    def build(self, input_shape):
        channels, _ = self.input_channels(input_shape)
        self.kernel = self.add_weight(
            name="kernel", shape=[channels, self.units],
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer, constraint=self.kernel_constraint)
        self.bias = self.add_weight(
            name="bias", shape=[self.units], initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint) if self.use_bias else None

    def call(self, x):
        x = self.sparse_input(x)
        f = x.features
        out = tf.matmul(f, tf.cast(self.kernel, f.dtype))
        if self.use_bias:
            out = out + tf.cast(self.bias, f.dtype)
        if self.activation is not None:
            out = self.activation(out)
        return x.with_features(out)

    def compute_output_channels(self, input_channels):
        return self.units

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
        })
        config.update(self.weight_options_config())
        return config


@register
class Activation(FeatureLayer):
    """Applies an activation (a name or a function) to the features."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)

    def call(self, x):
        x = self.sparse_input(x)
        return x.with_features(self.activation(x.features))

    def get_config(self):
        config = super().get_config()
        config.update({"activation": keras.activations.serialize(self.activation)})
        return config


@register
class ReLU(FeatureLayer):
    """max(features, 0)."""

    def call(self, x):
        x = self.sparse_input(x)
        return x.with_features(tf.nn.relu(x.features))


@register
class Dropout(FeatureLayer):
    """Dropout of feature entries while training (sites are kept)."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (
                0 <= float(rate) <= 1):
            raise ValueError(f"rate must be a float in [0, 1], got {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.dropout = keras.layers.Dropout(self.rate, seed=seed,
                                            dtype=self.dtype_policy)

    def call(self, x, training=False):
        x = self.sparse_input(x)
        return x.with_features(self.dropout(x.features, training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
