"""Layers that act on features only (same sites), global pooling, and a few
structural layers (Concat, ToDense, Prune)."""

import numbers

import keras
import numpy as np
import tensorflow as tf

from sparse_ops import _checks
from sparse_ops import ops
from sparse_ops.layers.base import SparseLayer, fields_spec, sparse_spec
from sparse_ops.tensor import SparseTensor, as_sparse

_register = keras.saving.register_keras_serializable(package="sparse_ops")


class _FeatureLayer(SparseLayer):
    """Output = input's sites with new features of the same channel count."""

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        return sparse_spec(x, None, self.compute_dtype, same_rows=True)


# -- global pooling -------------------------------------------------------------

class _GlobalPool(SparseLayer):
    mode = None

    def call(self, x):
        return ops.global_pool(self.sparse_input(x), self.mode)

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        features_shape, _ = fields_spec(x)
        return keras.KerasTensor((None, features_shape[-1]), dtype=self.compute_dtype)


@_register
class GlobalMaxPool(_GlobalPool):
    """Dense [B, C]: the maximum over the sites of each batch item (0 for a
    batch item with no sites)."""
    mode = "max"


@_register
class GlobalAvgPool(_GlobalPool):
    """Dense [B, C]: the mean over the sites of each batch item."""
    mode = "avg"


@_register
class GlobalSumPool(_GlobalPool):
    """Dense [B, C]: the sum over the sites of each batch item."""
    mode = "sum"


# -- broadcasting -----------------------------------------------------------------

class _Broadcast(SparseLayer):
    op = None

    def call(self, x, g):
        return ops.broadcast(self.sparse_input(x), g, self.op)

    def compute_output_spec(self, x, g, *args, **kwargs):
        del args, kwargs
        channels = None
        if self.op == "concat":
            c_x = fields_spec(x)[0][-1]
            c_g = g.shape[-1]
            channels = None if c_x is None or c_g is None else c_x + c_g
        return sparse_spec(x, channels, self.compute_dtype, same_rows=True)


@_register
class BroadcastAdd(_Broadcast):
    """`call(x, g)`: features + g[batch index] for dense g [B, C]."""
    op = "add"


@_register
class BroadcastMultiply(_Broadcast):
    """`call(x, g)`: features * g[batch index] for dense g [B, C]."""
    op = "multiply"


@_register
class BroadcastConcat(_Broadcast):
    """`call(x, g)`: [features, g[batch index]] for dense g [B, C']."""
    op = "concat"


# -- per-site layers -----------------------------------------------------------------

@_register
class Dense(_FeatureLayer):
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

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        return sparse_spec(x, self.units, self.compute_dtype, same_rows=True)

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
        })
        config.update(self.weight_options_config())
        return config


@_register
class Activation(_FeatureLayer):
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


@_register
class ReLU(_FeatureLayer):
    """max(features, 0)."""

    def call(self, x):
        x = self.sparse_input(x)
        return x.with_features(tf.nn.relu(x.features))


@_register
class Dropout(_FeatureLayer):
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


_BN_ARGS = ("momentum", "epsilon", "center", "scale", "beta_initializer",
            "gamma_initializer", "moving_mean_initializer",
            "moving_variance_initializer", "beta_regularizer", "gamma_regularizer",
            "beta_constraint", "gamma_constraint", "synchronized")


@_register
class BatchNorm(_FeatureLayer):
    """`keras.layers.BatchNormalization` over the features [N, C] (statistics
    over all sites of the batch); the same weights gamma, beta, moving_mean,
    moving_variance.

    `synchronized=True`: under a `tf.distribute` strategy the batch
    statistics are taken over the sites of all replicas (sums and site
    counts all-reduced, so replicas may hold any number of sites), as
    `keras.layers.BatchNormalization(synchronized=True)`; without a strategy
    it is the plain BatchNorm."""

    def __init__(self, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        self.bn = keras.layers.BatchNormalization(
            axis=-1, momentum=momentum, epsilon=epsilon, center=center, scale=scale,
            synchronized=bool(synchronized),
            beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
            dtype=self.dtype_policy)

    def build(self, input_shape):
        channels, _ = self.input_channels(input_shape)
        self.bn.build((None, channels))

    def call(self, x, training=False):
        x = self.sparse_input(x)
        return x.with_features(self.bn(x.features, training=training))

    def get_config(self):
        config = super().get_config()
        bn_config = self.bn.get_config()
        config.update({k: bn_config[k] for k in _BN_ARGS})
        return config


@_register
class InstanceNorm(_FeatureLayer):
    """Normalises each channel of each batch item over its sites, then
    scales by `gamma` and shifts by `beta` (per channel) when enabled."""

    def __init__(self, epsilon=1e-5, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = ops.features.check_epsilon(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.set_weight_options(
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint)

    def build(self, input_shape):
        channels, _ = self.input_channels(input_shape)
        self.gamma = self.add_weight(
            name="gamma", shape=[channels], initializer=self.gamma_initializer,
            regularizer=self.gamma_regularizer,
            constraint=self.gamma_constraint) if self.scale else None
        self.beta = self.add_weight(
            name="beta", shape=[channels], initializer=self.beta_initializer,
            regularizer=self.beta_regularizer,
            constraint=self.beta_constraint) if self.center else None

    def call(self, x):
        return ops.instance_norm(self.sparse_input(x), self.epsilon, self.gamma,
                                 self.beta)

    def get_config(self):
        config = super().get_config()
        config.update({
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        })
        config.update(self.weight_options_config())
        return config


# -- structural layers -----------------------------------------------------------------

def _is_fields(x):
    return (isinstance(x, (list, tuple)) and not isinstance(x, SparseTensor)
            and len(x) in (2, 3) and hasattr(x[0], "dtype")
            and len(getattr(x[0], "shape", ())) == 2
            and len(getattr(x[1], "shape", ())) == 2
            and x[1].dtype in ("int32", "int64", tf.int32, tf.int64))


@_register
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

    def compute_output_spec(self, inputs, *args, **kwargs):
        del args, kwargs
        channels = [fields_spec(x)[0][-1] for x in inputs]
        total = None if any(c is None for c in channels) else sum(channels)
        return sparse_spec(inputs[0], total, self.compute_dtype, same_rows=True)


@_register
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

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        features_shape, _ = fields_spec(x)
        return keras.KerasTensor((None,) + self.shape + (features_shape[-1],),
                                 dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"shape": list(self.shape),
                       "min_coordinate": None if self.min_coordinate is None
                       else list(self.min_coordinate)})
        return config


@_register
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

    def compute_output_spec(self, x, mask=None, *args, **kwargs):
        del mask, args, kwargs
        return sparse_spec(x, None, self.compute_dtype, same_rows=False)
