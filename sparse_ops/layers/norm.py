"""Normalisation layers: BatchNorm (over all sites of the batch) and
InstanceNorm (over the sites of each batch item)."""

import keras

from sparse_ops import ops
from sparse_ops.layers.base import FeatureLayer, register

_BN_ARGS = ("momentum", "epsilon", "center", "scale", "beta_initializer",
            "gamma_initializer", "moving_mean_initializer",
            "moving_variance_initializer", "beta_regularizer", "gamma_regularizer",
            "beta_constraint", "gamma_constraint", "synchronized")


@register
class BatchNorm(FeatureLayer):
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


@register
class InstanceNorm(FeatureLayer):
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
