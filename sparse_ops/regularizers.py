"""The paper's adaptive density regularisation (Sec. 3.5, Eq. 6)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="sparse_ops")
class DensityRegularizer(keras.regularizers.Regularizer):
    """Biased L2 penalty `scale * sum((w + b)^2)` steering a layer's output density.

    `b` follows Eq. 6 of the paper from the density rho the layer measured at
    its last call (the fraction of its output entries that are positive, i.e.
    survive a ReLU; over the grid volume when the layer knows `spatial_shape`):

        b = offset + b1 * (rho - target_density)   if rho > target_density
        b = -b2 * (target_density - rho)           otherwise

    b > 0 pushes the weights down (more outputs cut by the ReLU), b < 0 pulls
    them up when the layer uses fewer resources than it may. Pass it as a
    sparse_ops layer's `kernel_regularizer` (or `bias_regularizer`); the layer
    binds its own copy to the density it measures. b carries no gradient.
    """

    def __init__(self, target_density, scale, b1=0.1, b2=0.1, offset=0.1):
        values = dict(target_density=target_density, scale=scale, b1=b1, b2=b2,
                      offset=offset)
        for name, value in values.items():
            try:
                values[name] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a number, got {value!r}") from None
            if not values[name] >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if values["target_density"] > 1:
            raise ValueError(f"target_density must be in [0, 1], got {target_density!r}")
        self.target_density = values["target_density"]
        self.scale = values["scale"]
        self.b1, self.b2, self.offset = values["b1"], values["b2"], values["offset"]
        self._density = None  # the measuring layer's variable, set by bind()

    def bind(self, density):
        """A copy of this regulariser reading rho from `density` (a scalar
        variable the layer updates at each call). A copy, so that one
        instance given to several layers follows each layer's own density."""
        bound = type(self).from_config(self.get_config())
        bound._density = density  # pylint: disable=protected-access
        return bound

    def bias(self, density):
        """b of Eq. 6 for a measured density rho (float32 scalar tensor)."""
        rho = tf.cast(density, tf.float32)
        over = self.offset + self.b1 * (rho - self.target_density)
        under = -self.b2 * (self.target_density - rho)
        return tf.where(rho > self.target_density, over, under)

    def __call__(self, x):
        if self._density is None:
            raise ValueError(
                "DensityRegularizer needs the output density of the layer it "
                "regularises: pass it as kernel_regularizer (or bias_regularizer) "
                "of a sparse_ops layer such as so.layers.Conv, which measures it")
        x = tf.convert_to_tensor(x)
        b = tf.stop_gradient(tf.cast(self.bias(tf.convert_to_tensor(self._density)),
                                     x.dtype))
        return tf.cast(self.scale, x.dtype) * tf.reduce_sum(tf.square(x + b))

    def get_config(self):
        return {"target_density": self.target_density, "scale": self.scale,
                "b1": self.b1, "b2": self.b2, "offset": self.offset}
