"""The paper's k-selection attention as a layer (Hackel et al., Sec. 3.2)."""

from sparse_ops import ops
from sparse_ops.layers.base import SparseLayer, register, sparse_spec
from sparse_ops.ops.attention import attention_options


@register
class Attention(SparseLayer):
    """Keeps the k strongest responses per batch item and channel.

    `k` is given, or `k = ceil(density * prod(spatial_shape) - 1e-6)` with
    `spatial_shape` the grid of one batch item. mode "value" keeps the
    largest values, "abs" the largest magnitudes; per="site" keeps the k
    sites of largest L2 norm per batch item instead. Entries not kept become
    zero and sites with no kept entry are removed, so a batch item never has
    more than k * C sites after this layer. Ties go to the lower row. See
    `sparse_ops.ops.attention`.
    """

    def __init__(self, density=None, k=None, spatial_shape=None, mode="value",
                 per="channel", **kwargs):
        super().__init__(**kwargs)
        options = attention_options(k, density, spatial_shape, mode, per)
        if not isinstance(options["k"], (int, type(None))):
            raise TypeError("Attention needs k as a Python int (it is part of the "
                            f"layer's config), got {k!r}")
        self.density = options["density"]
        self.k = options["k"]
        self.spatial_shape = options["spatial_shape"]
        self.mode = mode
        self.per = per

    def options(self):
        """The keyword arguments of `sparse_ops.ops.attention`."""
        return dict(k=self.k, density=self.density,
                    spatial_shape=self.spatial_shape, mode=self.mode, per=self.per)

    def call(self, x):
        return ops.attention(self.sparse_input(x), **self.options())

    def compute_output_channels(self, input_channels):
        return input_channels

    def compute_output_spec(self, x, *args, **kwargs):
        """Output fields: features [S, C], coordinates [S, 1 + D], stride [D]."""
        del args, kwargs
        return sparse_spec(x, None, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(self.options())
        return config
